"""`mailer backup` and `mailer restore` in real processes, on SQLite and PostgreSQL.

A backup taken while `mailer digest send --now` is half-way restores into a fresh
database holding exactly one consistent moment of the send: the whole audience, each
delivery in one state, the ones recorded as sent among those the relay had received. A
restore over a database with content needs --force; bad input (a missing file, a file that
is no database, a backup from a newer mailer, no PostgreSQL client tools) is one line and
exit status 1, and the target is left as it was."""

from __future__ import annotations

import collections
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from mailer.config import load_config
from mailer.db import HEAD_REVISION, Database
from mailer.subscribers import SubscriberStore
from tests import databases
from tests.conftest import ROOT, populate, write_config
from tests.smtp_server import SmtpServer

RECIPIENTS = 60
CONNECTIONS = 4  # config.toml's smtp.connections: messages in flight at once


@pytest.fixture(autouse=True)
def _pg_tools(database_url: str) -> None:
    if database_url.startswith("postgresql"):
        missing = [tool for tool in ("pg_dump", "pg_restore") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"{' and '.join(missing)} not on the PATH (install postgresql-client)")


@pytest.fixture
def other_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, fresh database of the same kind: where backups are restored."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored' / 'mailer.db'}"
        return
    name = databases.create()
    try:
        yield databases.url_of(name)
    finally:
        databases.drop(name)


@pytest.fixture
def other_config(tmp_path: Path, smtp_server: SmtpServer, other_url: str) -> Path:
    folder = tmp_path / "restored"
    folder.mkdir(exist_ok=True)
    return write_config(folder, smtp_port=smtp_server.port, database_url=other_url)


def _mailer(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in proc.stderr


def _url(config: Path) -> str:
    return load_config(str(config)).database_url


def _snapshot(url: str) -> dict[str, Any]:
    """What a restore must not change: subscribers, articles, digests and the revision."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                "subscribers": sorted(conn.execute(text("SELECT email FROM subscribers")).scalars()),
                "articles": conn.execute(text("SELECT count(*) FROM articles")).scalar_one(),
                "digests": conn.execute(text("SELECT count(*) FROM digests")).scalar_one(),
                "revision": conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one(),
            }
    finally:
        engine.dispose()


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def test_backup_during_a_send_restores_every_delivery(
    config_path: Path, other_config: Path, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    populate(config_path, RECIPIENTS)
    smtp_server.handler.delay = 0.25  # 4 connections: ~16 messages/s, a send of ~4 s
    backup = tmp_path / "backup.db"
    send = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config_path), "digest", "send", "--now"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: len(smtp_server.received) >= 8)
        before = {r.recipients[0] for r in smtp_server.received}
        made = _mailer(config_path, "backup", str(backup))
        after = {r.recipients[0] for r in smtp_server.received}
    finally:
        _out, err = send.communicate(timeout=120)
    assert made.returncode == 0, made.stderr
    assert f"written to {backup}" in made.stdout
    assert send.returncode == 0, err
    assert len(after) < RECIPIENTS, "the send finished before the backup did: nothing was mid-way"
    assert len({r.recipients[0] for r in smtp_server.received}) == RECIPIENTS
    assert list(tmp_path.glob(".backup.db.*")) == []  # no temporary file left behind

    restored = _mailer(other_config, "restore", str(backup))
    assert restored.returncode == 0, restored.stderr
    assert "restored from" in restored.stdout

    engine = create_engine(_url(other_config))
    try:
        with engine.connect() as conn:
            digests = conn.execute(text("SELECT id, status FROM digests")).all()
            by_status = collections.Counter(
                dict(conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY status")).all())
            )
            sent = set(
                conn.execute(
                    text(
                        "SELECT s.email FROM deliveries d JOIN subscribers s ON s.id = d.subscriber_id "
                        "WHERE d.status = 'sent'"
                    )
                ).scalars()
            )
            audience = conn.execute(text("SELECT count(*) FROM subscribers WHERE status = 'active'")).scalar()
            revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()
    # The digest and its whole audience (built in one transaction), each delivery in one state.
    assert [status for _id, status in digests] == ["sending"]
    assert audience == RECIPIENTS
    assert sum(by_status.values()) == RECIPIENTS, by_status
    assert set(by_status) <= {"queued", "sending", "sent", "retry"}, by_status
    # What the backup saw: every delivery recorded as sent had reached the relay by the time
    # the backup ended, and every message the relay had before it began is recorded, bar
    # the ones whose reply was still on its way (one per connection).
    assert sent <= after
    assert len(sent) >= len(before) - CONNECTIONS, (len(sent), len(before))
    assert 0 < len(sent) < RECIPIENTS
    assert revision == HEAD_REVISION


def test_restore_needs_force_over_a_database_with_content(
    config_path: Path, other_config: Path, tmp_path: Path
) -> None:
    populate(config_path, 3)
    backup = tmp_path / "backup.db"
    assert _mailer(config_path, "backup", str(backup)).returncode == 0
    populate(other_config, 5)
    SubscriberStore(db := Database(_url(other_config))).add("kept@example.com")
    db.dispose()
    target = _snapshot(_url(other_config))

    refused = _mailer(other_config, "restore", str(backup))
    _one_line_error(refused, "not empty", "6 subscribers", "--force")
    assert _snapshot(_url(other_config)) == target

    forced = _mailer(other_config, "restore", str(backup), "--force")
    assert forced.returncode == 0, forced.stderr
    assert _snapshot(_url(other_config)) == _snapshot(_url(config_path))
    assert "kept@example.com" not in _snapshot(_url(other_config))["subscribers"]


def test_backup_refuses_to_replace_a_file_without_force(config_path: Path, tmp_path: Path) -> None:
    populate(config_path, 2)
    backup = tmp_path / "backup.db"
    backup.write_bytes(b"an older backup")
    _one_line_error(_mailer(config_path, "backup", str(backup)), "exists", "--force")
    assert backup.read_bytes() == b"an older backup"
    made = _mailer(config_path, "backup", str(backup), "--force")
    assert made.returncode == 0, made.stderr
    assert backup.read_bytes() != b"an older backup"
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600  # subscribers' addresses: the owner's only
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".backup")) == []


@pytest.mark.parametrize("bad", ["missing", "not a database", "newer schema"])
def test_restore_of_bad_input_is_one_line_and_changes_nothing(
    bad: str, config_path: Path, other_config: Path, tmp_path: Path
) -> None:
    populate(config_path, 2)
    populate(other_config, 4)
    target = _snapshot(_url(other_config))
    source = tmp_path / "backup.db"
    if bad == "not a database":
        source.write_text("subscribers,articles\nthis is not a database\n", encoding="utf-8")
        words = ["not a"]
    elif bad == "newer schema":
        engine = create_engine(_url(config_path))
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
        engine.dispose()
        assert _mailer(config_path, "backup", str(source)).returncode == 0
        words = ["revision 9999", "newer mailer"]
    else:
        words = ["no such file"]

    # Even with --force: the input is checked before anything of the target is touched.
    _one_line_error(_mailer(other_config, "restore", str(source), "--force"), *words)
    assert _snapshot(_url(other_config)) == target


@pytest.mark.sqlite_only("about SQLite files")
def test_an_sqlite_file_that_is_not_mailers(other_config: Path, tmp_path: Path) -> None:
    populate(other_config, 1)
    target = _snapshot(_url(other_config))
    source = tmp_path / "other.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE t (x)")
    _one_line_error(_mailer(other_config, "restore", str(source)), "not mailer's")
    assert _snapshot(_url(other_config)) == target


def test_without_postgresql_client_tools(config_path: Path, tmp_path: Path) -> None:
    if not _url(config_path).startswith("postgresql"):
        pytest.skip("about PostgreSQL's client tools")
    populate(config_path, 1)
    backup = tmp_path / "backup.dump"
    assert _mailer(config_path, "backup", str(backup)).returncode == 0
    target = _snapshot(_url(config_path))
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    _one_line_error(
        _mailer(config_path, "backup", str(tmp_path / "b2.dump"), env=env), "pg_dump", "postgresql-client"
    )
    assert not (tmp_path / "b2.dump").exists()
    _one_line_error(
        _mailer(config_path, "restore", str(backup), "--force", env=env), "pg_restore", "postgresql-client"
    )
    assert _snapshot(_url(config_path)) == target


@pytest.mark.sqlite_only("about SQLite's file: a restore must reach the processes holding it open")
def test_restore_reaches_a_process_that_holds_the_database_open(
    config_path: Path, other_config: Path, tmp_path: Path
) -> None:
    """The service keeps its connections open: a restore that renamed a new file into
    place would leave them reading (and writing) the old one. Through the backup API they
    see the restored database at their next transaction."""
    populate(config_path, 3)
    backup = tmp_path / "backup.db"
    assert _mailer(config_path, "backup", str(backup)).returncode == 0
    populate(other_config, 5)
    held = Database(_url(other_config))
    try:
        with held.reader() as s:
            assert s.execute(text("SELECT count(*) FROM subscribers")).scalar_one() == 5
        forced = _mailer(other_config, "restore", str(backup), "--force")
        assert forced.returncode == 0, forced.stderr
        with held.reader() as s:  # the same pooled connection, open all along
            assert s.execute(text("SELECT count(*) FROM subscribers")).scalar_one() == 3
    finally:
        held.dispose()
    with sqlite3.connect(tmp_path / "restored" / "mailer.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
