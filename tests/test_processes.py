"""Real processes: a send killed half-way and restarted, and the service's clean shutdown."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, populate, write_config
from tests.smtp_server import free_port
from tests.test_editor_demo import new_database

RECIPIENTS = 60


def _mailer(config: Path, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


@pytest.fixture
def big_list(config_path, smtp_server):
    populate(config_path, RECIPIENTS)
    smtp_server.handler.delay = 0.02  # ~50 messages/s: slow enough to interrupt mid-send
    return config_path


@pytest.mark.parametrize(("sig", "max_duplicates"), [(signal.SIGKILL, 4), (signal.SIGTERM, 0)])
def test_send_interrupted_then_restarted_reaches_everyone(big_list, smtp_server, sig, max_duplicates):
    proc = _mailer(big_list, "digest", "send", "--now")
    _wait_for(lambda: len(smtp_server.received) >= 15)
    proc.send_signal(sig)
    proc.wait(timeout=20)
    sent_before = len(smtp_server.received)
    assert sent_before < RECIPIENTS, "the send finished before it could be interrupted"

    again = _mailer(big_list, "digest", "send", "--now")
    out, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert "finished" in out

    counts = collections.Counter(r.recipients[0] for r in smtp_server.received)
    assert len(counts) == RECIPIENTS, "somebody was skipped"
    duplicates = sum(n - 1 for n in counts.values())
    # Killed: at most the messages in flight, one per connection (smtp.connections = 4).
    # SIGTERM: the messages in flight finish and are recorded, so none.
    assert duplicates <= max_duplicates


def test_service_starts_serves_and_stops_cleanly_on_sigterm(tmp_path, smtp_server, database_url):
    web_port, catcher_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        catcher_port,
        new_database(database_url),  # `serve --demo` loads demo data only into a new one
        web={"port": web_port},
        catcher={"enabled": True, "port": catcher_port},
    )
    proc = _mailer(config, "serve", "--demo", env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        _wait_for(lambda: "preview:" in (lines.append(proc.stdout.readline()) or "".join(lines)), 30)
        assert f"http://127.0.0.1:{web_port}/preview" in "".join(lines)
        # `make run` on a new database: the sample articles and the demo readers.
        assert "sample articles: 40 new" in "".join(lines)
        assert "demo subscribers: 3 added" in "".join(lines)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/preview", timeout=10) as resp:
            assert resp.status == 200 and b"Tech Policy Weekly" in resp.read()
        # The catcher is a real SMTP server that stores what it gets.
        import smtplib

        with smtplib.SMTP("127.0.0.1", catcher_port, timeout=10) as smtp:
            smtp.sendmail("a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nhello\r\n")
        assert len(list((tmp_path / "mail").glob("*.eml"))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
