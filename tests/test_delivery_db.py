"""The database misbehaving during a send: another process holding the write lock is waited
out; a lock held past the engine's patience ends the run with one line and loses nobody."""

from __future__ import annotations

import collections
import logging
import subprocess
import sys
import threading
from datetime import UTC, datetime

import pytest

from mailer import campaign
from mailer import db as db_module
from mailer.db import Database
from mailer.delivery import queue
from mailer.errors import MailerError
from tests.conftest import populate, write_config

# Another process holding SQLite's write lock on the .db file: PostgreSQL has no such lock.
pytestmark = pytest.mark.sqlite_only(reason="SQLite's database-wide write lock")

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
READERS = 30
HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


@pytest.fixture
def short_busy_timeout(monkeypatch):
    # Each statement gives up on a lock after 0.2 s instead of 30, so the engine's own
    # patience (not SQLite's) is what the tests see.
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)


@pytest.fixture
def database(tmp_path, smtp_server, short_busy_timeout, database_url):
    cfg = populate(write_config(tmp_path, smtp_server.port, database_url), READERS)
    database = Database(cfg.database_url)
    yield cfg, database, tmp_path / "mailer.db"
    database.dispose()


def _lock_during_send(path, seconds: float, after: int):
    """An on_progress hook: once `after` messages are recorded, another process takes the
    write lock for `seconds` (the hook returns when it holds it)."""
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()

    def on_progress(summary, _n):
        with lock:
            if summary.sent >= after and not procs:
                proc = subprocess.Popen(
                    [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
                )
                assert proc.stdout.readline().strip() == "locked"
                procs.append(proc)

    return on_progress, procs


def _once_each(smtp_server) -> collections.Counter:
    return collections.Counter(r.recipients[0] for r in smtp_server.received)


def test_a_write_lock_held_by_another_process_during_a_send_is_waited_out(database, smtp_server, caplog):
    cfg, db, path = database
    smtp_server.handler.delay = 0.01
    on_progress, procs = _lock_during_send(path, 2.0, after=5)
    [summary] = campaign.send_now(db, cfg, T0, on_progress=on_progress)
    procs[0].wait(timeout=10)
    assert summary.finished and not summary.stopped
    counts = _once_each(smtp_server)
    assert len(counts) == READERS and set(counts.values()) == {1}
    assert not [r for r in caplog.records if r.exc_info]


def test_a_lock_held_past_the_engines_patience_ends_the_run_with_one_line_and_loses_nobody(
    database, smtp_server, caplog, monkeypatch
):
    cfg, db, path = database
    monkeypatch.setattr(queue, "LOCK_PATIENCE", 0.5)
    smtp_server.handler.delay = 0.01
    on_progress, procs = _lock_during_send(path, 3.0, after=5)
    with caplog.at_level(logging.INFO), pytest.raises(MailerError) as err:
        campaign.send_now(db, cfg, T0, on_progress=on_progress)
    assert str(err.value) == f"database {path}: database is locked"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    procs[0].wait(timeout=10)
    sent_before = len(smtp_server.received)
    assert sent_before < READERS
    # The next run finishes the digest (waiting out the stopped run's heartbeat if it
    # could not even leave).
    monkeypatch.setattr(queue, "LOCK_PATIENCE", 300.0)
    [summary] = campaign.send_now(db, cfg, T0)
    assert summary.finished
    counts = _once_each(smtp_server)
    assert len(counts) == READERS
    assert sum(n - 1 for n in counts.values()) <= cfg.smtp.connections
