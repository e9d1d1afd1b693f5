"""The service's own web server (Service.start and `mailer serve`, real sockets): idle
connections cannot lock readers out, and the start-up banner lists only pages that answer."""

from __future__ import annotations

import base64
import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mailer.config import Config
from mailer.db import Database
from mailer.service import Service
from tests.conftest import ROOT, write_config
from tests.smtp_server import SmtpServer, free_port

OLD_CONNECTION_LIMIT = 100  # waitress's default, which 110 idle sockets used up
IDLE_CLOSED_WITHIN = 15.0  # seconds (waitress's default channel_timeout is 120)
PASSWORD = "banner-test-password"


@pytest.fixture
def service(db: Database, cfg: Config) -> Iterator[Service]:
    running = Service(db, cfg)
    running.start()
    yield running
    running.shutdown()


def get(port: int, path: str, headers: dict[str, str] | None = None, timeout: float = 5) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_idle_connections_beyond_the_old_limit_leave_the_public_pages_reachable(service: Service) -> None:
    idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(OLD_CONNECTION_LIMIT + 50)]
    try:
        time.sleep(0.5)  # the server has accepted (and is holding) them all

        assert get(service.port, "/healthz", timeout=5) == 200
        assert get(service.port, "/unsubscribe/preview", timeout=5) == 200
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_connection_is_closed_by_the_server(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.settimeout(IDLE_CLOSED_WITHIN)
        started = time.monotonic()

        assert sock.recv(1) == b""  # the server hung up (a timeout here raises)

    assert time.monotonic() - started < IDLE_CLOSED_WITHIN


@contextmanager
def serving(config: Path, env: dict[str, str]) -> Iterator[str]:
    """Run `mailer serve` for the block; what it printed up to the end of its banner."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, **env},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not lines or "send one now" not in lines[-1]:
            line = proc.stdout.readline()
            assert line, f"`serve` ended: {''.join(lines)}"
            lines.append(line)
        yield "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.mark.parametrize(
    ("host", "password"),
    [("0.0.0.0", ""), ("127.0.0.1", ""), ("0.0.0.0", PASSWORD)],
    ids=["public address, no password", "loopback", "public address, password"],
)
def test_every_url_in_the_start_up_banner_answers(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str, host: str, password: str
) -> None:
    port = free_port()
    config = write_config(tmp_path, smtp_server.port, database_url, web={"host": host, "port": port})
    env = {"MAILER_WEB_PASSWORD": password} if password else {}
    auth = {"Authorization": "Basic " + base64.b64encode(f"editor:{password}".encode()).decode()}

    with serving(config, env) as out:
        urls = [u.rstrip(",.") for u in re.findall(r"http://\S+", out)]
        assert urls, out
        for url in urls:
            path = "/" + url.split("/", 3)[3]
            assert get(port, path, auth if password else None) == 200, (url, out)
        if host == "0.0.0.0" and not password:
            assert "editor pages: off until MAILER_WEB_PASSWORD is set" in out
            assert "dashboard:" not in out and get(port, "/") == 404
        else:
            assert "dashboard:" in out
