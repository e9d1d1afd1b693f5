"""The PostgreSQL server going away in the middle of a send (issue 9), with real `mailer`
processes against a private server (tests/private_postgres.py) that the test stops and
starts; the shared server on 127.0.0.1:5432 is never touched.

What must hold: the command that was sending either finishes or ends with one line on
stderr naming the database and the problem (no traceback); nothing is lost (a second
`digest send --now` finishes the digest, every reader gets it, duplicates at most one per
SMTP connection, counted at the SMTP server); and `mailer serve` outlives the outage,
logging one line per failure, answering /livez throughout (and /healthz with a 503), and
its pages that need the database answer "unavailable" meanwhile instead of crashing.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import ROOT, populate, write_config
from tests.private_postgres import Mode, PrivatePostgres, unusable
from tests.smtp_server import SmtpServer, free_port

pytestmark = pytest.mark.skipif(bool(unusable()), reason=unusable() or "-")

READERS = 300
CONNECTIONS = 4  # smtp.connections in config.toml: the most one interruption may repeat
LEASE = 3  # seconds: the rows of a run that died go back to the queue this soon


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    with PrivatePostgres.started() as server:
        yield server


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    server.handler.delay = 0.02  # a slow relay: 4 connections, at most ~200 messages/s
    yield server
    server.stop()


def _mailer(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _wait_for(what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _received(smtp: SmtpServer) -> int:
    with smtp.handler.lock:
        return len(smtp.handler.received)


def _assert_everyone_got_it_at_most_once_per_connection_more(smtp: SmtpServer) -> None:
    with smtp.handler.lock:
        mailed = collections.Counter(r.recipients[0] for r in smtp.handler.received)
    assert len(mailed) == READERS, f"{READERS - len(mailed)} readers never got the digest"
    duplicates = sum(n - 1 for n in mailed.values())
    assert duplicates <= CONNECTIONS, f"{duplicates} duplicates (at most one per connection)"


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _alive(port: int) -> bool:
    """/livez: the process serves (its database may be down)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as resp:
        return resp.status == 200 and resp.read() == b"ok\n"


def _listening(port: int) -> bool:
    try:
        return _alive(port)
    except OSError:
        return False


def _stop_service(serve: subprocess.Popen[str]) -> str:
    """SIGTERM, which must end it cleanly; its stderr (the log)."""
    if serve.poll() is None:
        serve.send_signal(signal.SIGTERM)
    out, err = serve.communicate(timeout=30)
    assert serve.returncode == 0, (out, err)
    return err


@pytest.mark.parametrize("mode", ["fast", "immediate"])  # an orderly restart; a crash and recovery
def test_digest_send_across_a_server_restart_ends_with_one_line_and_a_second_send_reaches_everyone(
    tmp_path: Path, pg: PrivatePostgres, smtp: SmtpServer, mode: Mode
) -> None:
    config = write_config(tmp_path, smtp.port, pg.url(), delivery={"lease_seconds": LEASE})
    populate(config, READERS)
    send = _mailer(config, "digest", "send", "--now")
    _wait_for("the first 50 messages", lambda: _received(smtp) >= 50)
    pg.restart(mode)  # every backend ends: the send's connections die under it
    at_restart = _received(smtp)
    out, err = send.communicate(timeout=60)
    assert at_restart < READERS, "the send finished before the restart: nothing was tested"

    lines = err.strip().splitlines()
    if send.returncode != 0:
        assert send.returncode == 1, (out, err)
        assert lines and lines[-1].startswith(f"error: database {pg.url()}: "), err
        again = _mailer(config, "digest", "send", "--now")
        out, again_err = again.communicate(timeout=60)
        assert again.returncode == 0, (out, again_err)
        assert "Traceback" not in again_err, again_err
    assert "finished" in out, out
    _assert_everyone_got_it_at_most_once_per_connection_more(smtp)
    # Last, so that the defect above is all this test reports while it stands.
    assert "Traceback" not in err and len(lines) <= 1, err


def test_serve_outlives_a_server_outage_mid_send_with_one_log_line_and_the_digest_finishes(
    tmp_path: Path, pg: PrivatePostgres, smtp: SmtpServer
) -> None:
    web_port = free_port()
    # A daily slot a minute ago, inside the grace window: the start-up tick builds and sends it.
    slot = datetime.now(UTC) - timedelta(minutes=1)
    config = write_config(
        tmp_path,
        smtp.port,
        pg.url(),
        delivery={"lease_seconds": LEASE},
        web={"port": web_port},
        schedule={"cron": f"{slot.minute} {slot.hour} * * *", "timezone": "UTC", "grace_hours": 1},
    )
    populate(config, READERS)
    serve = _mailer(config, "serve")
    try:
        _wait_for("the service to send 50 messages", lambda: _received(smtp) >= 50)
        pg.stop("fast")
        assert _received(smtp) < READERS, "the service finished before the server stopped"
        down_until = time.monotonic() + 5
        while time.monotonic() < down_until:
            assert serve.poll() is None, "the service died with its database"
            assert _alive(web_port)
            time.sleep(0.25)
        pg.start()
        # The service's own retry is its minute tick, longer than this test may take; a send
        # from the side joins the digest (taking over the rows of the run that failed once
        # their lease is out) and finishes it, with the service still up beside it.
        side = _mailer(config, "digest", "send", "--now")
        out, side_err = side.communicate(timeout=60)
        assert side.returncode == 0, (out, side_err)
        assert "finished" in out, out
        _assert_everyone_got_it_at_most_once_per_connection_more(smtp)
        assert serve.poll() is None, "the service died"
        assert _alive(web_port)
    finally:
        err = _stop_service(serve)
    failures = [line for line in err.splitlines() if f"database {pg.url()}: " in line]
    assert len(failures) == 1, err  # the run that failed: one line
    assert "ERROR mailer.service" in failures[0], failures
    # Last, so that the defect above is all this test reports while it stands.
    assert "Traceback" not in err, err


def test_a_page_that_needs_the_database_answers_503_with_one_log_line_while_the_server_is_down(
    tmp_path: Path, pg: PrivatePostgres, smtp: SmtpServer
) -> None:
    web_port = free_port()
    later = datetime.now(UTC) + timedelta(minutes=30)  # no slot due while the test runs
    config = write_config(
        tmp_path,
        smtp.port,
        pg.url(),
        web={"port": web_port},
        schedule={"cron": f"{later.minute} {later.hour} * * *", "timezone": "UTC", "grace_hours": 0},
    )
    populate(config, 1)
    serve = _mailer(config, "serve")
    try:
        _wait_for("the web server", lambda: _listening(web_port))
        assert _status(web_port, "/articles/1") == 200
        pg.stop("fast")
        during = _status(web_port, "/articles/1")
        assert _alive(web_port)
        assert _status(web_port, "/healthz") == 503  # the checks name the database
        pg.start()
        assert _status(web_port, "/articles/1") == 200  # back without a restart of the service
        assert serve.poll() is None, "the service died"
    finally:
        err = _stop_service(serve)
    failures = [line for line in err.splitlines() if f"database {pg.url()}: " in line]
    # The page's one line; a scheduled job (the minute's tick, the feed poll) that met the
    # stop logs its own single line, and is retried at the next tick.
    pages = [line for line in failures if "mailer.web.app" in line]
    assert len(pages) == 1, err
    assert all(line.endswith("retried at the next tick") for line in failures if line not in pages), err
    assert "Traceback" not in err, err
    assert during == 503
