"""The schema: Alembic migrations and the shortcut that skips them when current."""

from __future__ import annotations

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from mailer.db import HEAD_REVISION, SQLITE_CACHE_KIB, Database, alembic_config
from mailer.models import Base


def test_head_revision_constant_matches_the_migrations_folder(tmp_path):
    script = ScriptDirectory.from_config(alembic_config(f"sqlite:///{tmp_path / 'x.db'}"))
    assert script.get_current_head() == HEAD_REVISION


def test_migrating_a_new_database_creates_every_model_table_and_is_idempotent(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    db.migrate()
    db.migrate()
    assert db.revision() == HEAD_REVISION
    tables = set(inspect(db.engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    for name, table in Base.metadata.tables.items():
        columns = {c["name"] for c in inspect(db.engine).get_columns(name)}
        assert {c.name for c in table.columns} == columns, name
    db.dispose()


def test_an_old_database_is_upgraded_to_the_newest_revision(tmp_path):
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = alembic_config(url)
    command.upgrade(cfg, "0001")
    db = Database(url)
    assert db.revision() == "0001"
    db.migrate()
    assert db.revision() == HEAD_REVISION
    assert "next_run_at" in {c["name"] for c in inspect(db.engine).get_columns("digests")}
    db.dispose()


def test_every_sqlite_connection_keeps_a_small_page_cache(tmp_path):
    # A sending process holds one connection per SMTP connection plus the pool's: at the
    # default 2 MB each, the caches grew its peak memory with the readers (bench/throughput.py).
    db = Database(f"sqlite:///{tmp_path / 'mailer.db'}")
    raws = [db.engine.raw_connection() for _ in range(3)]  # three pooled connections at once
    try:
        for raw in raws:
            cur = raw.cursor()
            assert cur.execute("PRAGMA cache_size").fetchone() == (-SQLITE_CACHE_KIB,)
            cur.close()
    finally:
        for raw in raws:
            raw.close()
        db.dispose()
