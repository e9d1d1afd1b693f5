"""Migrations keep every row, on SQLite and PostgreSQL, and the status checks refuse what
no state machine knows."""

from __future__ import annotations

from datetime import datetime

import pytest
from alembic import command
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from mailer import digest as digests
from mailer.db import HEAD_REVISION, Database, alembic_config
from mailer.models import Article, Delivery, Digest, Subscriber
from tests.conftest import SEEDS, write_config


def _counts(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {
            m.__name__: s.scalar(select(func.count()).select_from(m)) or 0
            for m in (Article, Delivery, Digest, Subscriber)
        }


def test_the_status_checks_migration_keeps_every_row(tmp_path, database_url):
    """0008 rebuilds subscribers and digests on SQLite: with foreign keys on, dropping the
    old tables would cascade to every delivery."""
    from mailer.articles import ArticleStore
    from mailer.config import load_config

    cfg = load_config(str(write_config(tmp_path, database_url=database_url)))
    alembic = alembic_config(database_url)
    db = Database(database_url)
    if db.revision() is None:
        command.upgrade(alembic, "0007")
    else:  # PostgreSQL's copy of the migrated template: back to before the checks
        command.downgrade(alembic, "0007")
    db.dispose()
    db = Database(database_url)
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    # As 0007 stored them: the models of today have columns a 0007 database lacks.
    with db.engine.begin() as conn:
        for i in range(5):
            conn.execute(
                text(
                    "INSERT INTO subscribers (email, name, status, created_at, status_changed_at,"
                    " token_nonce, bounce_count) VALUES (:e, '', 'active', :t, :t, :n, 0)"
                ),
                {"e": f"reader{i}@example.com", "t": datetime(2026, 1, 1), "n": f"{i:032d}"},
            )
        conn.execute(
            text(
                "INSERT INTO digests (slot_key, slot_at, status, issue_number, subject, html, text,"
                " created_at, note, last_error, run_failures) VALUES"
                " ('manual:x', :t, 'sending', 1, 's', 'h', 't', :t, '', '', 0)"
            ),
            {"t": datetime(2026, 1, 1)},
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (digest_id, subscriber_id, status, attempts, last_reply)"
                " SELECT 1, id, 'queued', 0, '' FROM subscribers"
            )
        )
    before = _counts(db)
    assert before["Delivery"] == 5
    db.migrate()
    assert db.revision() == HEAD_REVISION
    assert _counts(db) == before
    db.dispose()


@pytest.mark.parametrize("table", ["subscribers", "digests", "deliveries"])
def test_a_status_no_state_machine_knows_is_refused_by_the_database(seeded, cfg, table):
    digests.build(seeded, cfg, digests.manual_slot(digests.utcnow()))
    with pytest.raises(IntegrityError), seeded.session() as s:
        s.execute(text(f"UPDATE {table} SET status = 'limbo'"))


def test_addresses_stay_unique_whatever_their_case_after_every_migration(db):
    """SQLite rebuilds tables in batch migrations, and an index on lower(email) is not
    carried over by itself."""
    from mailer.subscribers import SubscriberStore

    SubscriberStore(db).add("ada@example.com")
    with pytest.raises(IntegrityError), db.session() as s:
        s.add(Subscriber(email="ADA@example.com", name="", status="active", token_nonce="n"))
