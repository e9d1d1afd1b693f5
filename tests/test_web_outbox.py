"""An unsubscribe is never lost: with SQLite's write lock held by another process, the
one-click POST is recorded durably and acknowledged, read-only pages still answer at once,
and the unsubscribe reaches the database when the lock is free, even across a kill -9."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

import mailer.db
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Article, Subscriber
from mailer.subscribers import SubscriberStore
from mailer.unsubscribe_outbox import has_pending_unsubscribe, outbox_folder, record
from tests.conftest import ROOT
from tests.smtp_server import SmtpServer, free_port
from tests.web_server import FORM, ONE_CLICK, WebServer, mail_links, statuses, write_test_config

ADA = "ada@example.org"
BOB = "bob@example.org"
# Another process that takes the write lock, says so, and keeps it until told to let go.
LOCK_HOLDER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""
QUICK = 1.5  # seconds: a read-only page that waited for the lock would take the busy timeout


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_test_config(tmp_path, smtp_server.port, database_url)


@pytest.fixture
def links(db: Database, cfg: Config, smtp_server: SmtpServer) -> dict[str, str]:
    return mail_links(db, cfg, smtp_server, [ADA, BOB])


@contextmanager
def write_lock(cfg: Config) -> Iterator[None]:
    """Another process holds SQLite's write lock (BEGIN IMMEDIATE) for the block."""
    path = cfg.database_url.removeprefix("sqlite:///")
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0


def now_statuses(db: Database) -> dict[str, str]:
    """statuses(db) without waiting for the lock."""
    with db.read_only():
        return statuses(db)


def subscriber_id(db: Database, email: str) -> int:
    with db.reader() as s:
        return s.scalars(select(Subscriber.id).where(Subscriber.email == email)).one()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.sqlite_only(reason="another process holding SQLite's write lock")
def test_one_click_is_acknowledged_while_another_process_holds_the_lock_and_applied_after(
    cfg: Config, db: Database, links: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's connections give up on the lock after 0.3 s, so the lock below outlasts
    # the busy timeout many times over.
    monkeypatch.setattr(mailer.db, "BUSY_TIMEOUT_MS", 300)
    server_db = Database(cfg.database_url)
    web = WebServer(server_db, cfg).start()
    with db.reader() as s:
        sent_article = s.scalars(select(Article.id).where(Article.sent_at.is_not(None))).first()
    reads = ["/healthz", "/", "/preview", "/preview.txt", "/digests", "/digests/1", "/digests/1.txt"]
    reads += [f"/articles/{sent_article}", links[BOB]]
    ada = subscriber_id(db, ADA)
    try:
        with write_lock(cfg):
            started = time.monotonic()
            reply = web.post(links[ADA], ONE_CLICK)
            assert reply.status == 200 and "You are unsubscribed" in reply.body, reply.body[:500]
            assert time.monotonic() - started < 5
            assert has_pending_unsubscribe(cfg, ada)
            for path in reads:
                started = time.monotonic()
                page = web.get(path)
                assert page.status == 200, (path, page.body[:300])
                assert time.monotonic() - started < QUICK, path
            time.sleep(1)  # the applier has met the busy timeout a few times by now
            assert now_statuses(db) == {ADA: "active", BOB: "active"}
        wait_for(lambda: now_statuses(db)[ADA] == "unsubscribed")
        # The entry is removed once the change is committed, a moment after it.
        wait_for(lambda: not has_pending_unsubscribe(cfg, ada))
        assert now_statuses(db)[BOB] == "active"
    finally:
        web.close()
        server_db.dispose()


def serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(config), "serve"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False


def one_click(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=ONE_CLICK, headers=FORM)
    return conn.getresponse().status


@pytest.mark.sqlite_only(reason="another process holding SQLite's write lock")
def test_an_unsubscribe_recorded_before_a_kill_9_is_applied_when_the_server_starts_again(
    tmp_path: Path, smtp_server: SmtpServer, db: Database, links: dict[str, str]
) -> None:
    port = free_port()
    config = write_test_config(tmp_path, smtp_server.port, web={"port": port})
    cfg = load_config(str(config))
    ada = subscriber_id(db, ADA)
    server = serve(config, tmp_path / "serve.log")
    try:
        wait_for(lambda: healthy(port))
        with write_lock(cfg):
            assert one_click(port, links[ADA]) == 200
            os.kill(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        # Recorded, not applied, and the process that recorded it is gone.
        assert now_statuses(db) == {ADA: "active", BOB: "active"}
        assert has_pending_unsubscribe(cfg, ada)

        server = serve(config, tmp_path / "serve.log")
        wait_for(lambda: now_statuses(db)[ADA] == "unsubscribed")
        # The entry is removed once the change is committed, a moment after it.
        wait_for(lambda: not has_pending_unsubscribe(cfg, ada))
        assert now_statuses(db)[BOB] == "active"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)


# SQLite reuses a freed id; a PostgreSQL sequence never hands one out twice.
@pytest.mark.sqlite_only(reason="SQLite reuses the id of a deleted row")
def test_a_replayed_unsubscribe_leaves_alone_a_newcomer_who_got_the_same_id(
    cfg: Config, db: Database, links: dict[str, str]
) -> None:
    store = SubscriberStore(db)
    bob = subscriber_id(db, BOB)
    record(outbox_folder(cfg), bob, BOB)  # recorded, then the server died before applying
    store.forget(BOB)
    newcomer, _ = store.add("cy@example.org")
    assert newcomer.id == bob  # SQLite handed the freed id to the next row

    web = WebServer(db, cfg).start()  # starting replays the outbox
    try:
        wait_for(lambda: not has_pending_unsubscribe(cfg, bob))
    finally:
        web.close()
    assert now_statuses(db) == {ADA: "active", "cy@example.org": "active"}


def test_delivery_honours_an_unsubscribe_still_waiting_in_the_outbox(seeded, cfg, smtp_server):
    """Recorded but not yet in the database (the lock was held until a moment ago): the
    next digest must not reach them anyway."""
    from datetime import UTC, datetime

    from mailer import campaign

    with seeded.session() as s:
        ada = s.scalars(select(Subscriber).where(Subscriber.email == "ada@example.com")).one()
    record(outbox_folder(cfg), ada.id, ada.email)
    [summary] = campaign.send_now(seeded, cfg, datetime(2026, 11, 30, 7, 0, tzinfo=UTC))
    assert summary.finished and summary.sent == 2 and summary.skipped == 1
    assert "ada@example.com" not in [r.recipients[0] for r in smtp_server.received]
