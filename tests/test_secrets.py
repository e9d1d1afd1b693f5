"""Secrets stay secret: with MAILER_SMTP_PASSWORD, MAILER_WEB_PASSWORD and MAILER_SECRET_KEY
set to distinctive values, no log record (every logger at DEBUG), error message, CLI
output, mail message or web page ever contains one of them, on success or failure."""

from __future__ import annotations

import base64
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from mailer import campaign
from mailer import digest as digests
from mailer.cli import cli
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Digest
from tests.conftest import ROOT, SUBSCRIBERS, write_config
from tests.smtp_server import SmtpServer
from tests.test_tls import Authenticator, Pki, TlsServer, make_pki
from tests.web_server import WebServer, unsubscribe_url

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
USER = "editor"
# Letters, digits and dashes only: a leak shows verbatim in HTML, JSON, URLs and logs alike.
SECRETS = {
    "MAILER_SMTP_PASSWORD": "smtpPw-7Qx2zK9-relay-4411",
    "MAILER_WEB_PASSWORD": "webPw-Lm3Vb8-editor-5522",
    "MAILER_SECRET_KEY": "hmacKey-9f8e7d6c5b4a-unsub-6633",
}
EVERY_LOGGER = ["", "mailer", "mail.log", "alembic", "apscheduler", "waitress", "sqlalchemy", "asyncio"]


def forms(secret: str) -> list[str]:
    """How a leaked secret could look: as it is, or base64-encoded (an echoed auth line)."""
    return [secret, base64.b64encode(secret.encode()).decode().rstrip("=")]


def assert_no_secret(where: str, *texts: str | bytes) -> None:
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        for name, secret in SECRETS.items():
            for form in forms(secret):
                assert form not in text, f"{name} ({'raw' if form == secret else 'base64'}) in {where}"


def assert_no_secret_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records, "nothing was logged: the capture is not working"
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert_no_secret(f"log record {record.name}:{record.levelname}", text)


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return SECRETS


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    for name in EVERY_LOGGER:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def relays(pki: Pki) -> Iterator[Callable[[str], TlsServer]]:
    """STARTTLS relays that require a login and accept USER with the given password."""
    started: list[TlsServer] = []

    def start(password: str) -> TlsServer:
        auth = Authenticator(user=USER, password=password)
        server = TlsServer("starttls", pki.good, authenticator=auth, auth_required=True)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def relay_config(folder: Path, relay: TlsServer, pki: Pki, **sections: dict[str, Any]) -> Path:
    smtp = {"security": "starttls", "ca_file": str(pki.ca_file), "username": USER, "timeout": 5}
    return write_config(folder, relay.port, smtp=smtp, **sections)


def mailer(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in its own process, with the secrets in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **SECRETS, **(env or {})},
    )


def deliveries_of_last_digest(db: Database) -> tuple[str, int]:
    with db.session() as s:
        d = s.scalars(select(Digest).order_by(Digest.id.desc())).first()
        assert d is not None
        return d.last_error, d.id


# ---------------------------------------------------------------- sending


def test_a_send_with_the_right_password_logs_and_mails_no_secret(
    secret_env: dict[str, str],
    debug_logs: pytest.LogCaptureFixture,
    seeded: Database,
    tmp_path: Path,
    pki: Pki,
    relays: Callable[[str], TlsServer],
) -> None:
    relay = relays(SECRETS["MAILER_SMTP_PASSWORD"])
    cfg = load_config(str(relay_config(tmp_path, relay, pki)))
    assert cfg.smtp.password == SECRETS["MAILER_SMTP_PASSWORD"]
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.sent == len(SUBSCRIBERS), summary
    assert relay.handler.received
    for received in relay.handler.received:
        assert_no_secret("a mailed message", received.data)
    assert_no_secret("the run summary", repr(summary), repr(cfg.settings), repr(cfg.smtp), repr(cfg.web))
    assert_no_secret_in_logs(debug_logs)


def test_a_refused_login_reports_one_line_without_the_password(
    secret_env: dict[str, str],
    debug_logs: pytest.LogCaptureFixture,
    seeded: Database,
    tmp_path: Path,
    pki: Pki,
    relays: Callable[[str], TlsServer],
) -> None:
    relay = relays("the-password-the-relay-expects")
    cfg = load_config(str(relay_config(tmp_path, relay, pki)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert "login" in summary.stopped and "535" in summary.stopped, summary
    assert relay.handler.received == []
    last_error, _ = deliveries_of_last_digest(seeded)
    assert last_error == summary.stopped
    assert_no_secret("the stop reason", summary.stopped, repr(summary))
    assert_no_secret_in_logs(debug_logs)
    # The CLI in-process, verbose: its output and the status command's.
    runner = CliRunner()
    config = str(tmp_path / "config.toml")
    for args in (["-v", "digest", "send", "--now"], ["-v", "digest", "status"], ["-v", "digest", "list"]):
        result = runner.invoke(cli, ["--config", config, *args])
        assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
        assert_no_secret(f"`mailer {' '.join(args)}`", result.output)
    assert_no_secret_in_logs(debug_logs)


def test_the_cli_with_v_prints_no_secret_on_success_or_failure(
    seeded: Database, tmp_path: Path, pki: Pki, relays: Callable[[str], TlsServer]
) -> None:
    good = relays(SECRETS["MAILER_SMTP_PASSWORD"])
    bad = relays("another-password-entirely")
    # A refused login first (a digest left unfinished), then a good relay resumes it.
    bad_config = relay_config(tmp_path, bad, pki)
    refused = mailer(bad_config, "-v", "digest", "send", "--now")
    assert refused.returncode == 1 and "login" in refused.stderr and "535" in refused.stderr, refused
    status = mailer(bad_config, "-v", "digest", "status")
    good_config = relay_config(tmp_path, good, pki)
    sent = mailer(good_config, "-v", "digest", "send", "--now")
    assert sent.returncode == 0 and "finished" in sent.stdout, sent
    assert len(good.handler.received) == len(SUBSCRIBERS)
    listing = mailer(good_config, "-v", "subscribers", "list", "--json")
    assert listing.returncode == 0 and "zoe@example.com" in listing.stdout
    for name, run in {"refused send": refused, "status": status, "send": sent, "list": listing}.items():
        assert "Traceback" not in run.stderr, run.stderr
        assert_no_secret(f"`{name}` stdout", run.stdout)
        assert_no_secret(f"`{name}` stderr", run.stderr)


# ---------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    ("env", "names"),
    [
        # The password in a misspelt variable: the error names the variable, not the value.
        ({"MAILER_SMTP_PASSWROD": SECRETS["MAILER_SMTP_PASSWORD"]}, "MAILER_SMTP_PASSWROD"),
        # The secret where a number belongs.
        ({"MAILER_SMTP_PORT": SECRETS["MAILER_WEB_PASSWORD"]}, "MAILER_SMTP_PORT"),
        # A whole section as JSON, broken right after the password.
        ({"MAILER_SMTP": '{"password": "' + SECRETS["MAILER_SMTP_PASSWORD"] + '", '}, "MAILER_SMTP"),
        ({"MAILER_WEB": '{"password": "' + SECRETS["MAILER_WEB_PASSWORD"] + '", "port": "x"}'}, "web.port"),
    ],
    ids=["misspelt-variable", "secret-as-port", "broken-json-section", "json-section-bad-port"],
)
def test_a_config_error_names_the_key_but_never_shows_a_secret(
    env: dict[str, str],
    names: str,
    tmp_path: Path,
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    config = write_config(tmp_path, smtp_server.port)
    for name, value in {**SECRETS, **env}.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(cli, ["--config", str(config), "-v", "digest", "list"])
    assert result.exit_code == 1, result.output
    (line,) = result.output.splitlines()
    assert line.startswith("error: ") and names in line, line
    assert_no_secret("a config error", result.output)
    for record in debug_logs.records:
        assert_no_secret(f"log record {record.name}", record.getMessage())


# ---------------------------------------------------------------- the web app and the service


@pytest.fixture
def web(
    secret_env: dict[str, str], seeded: Database, tmp_path: Path, smtp_server: SmtpServer
) -> Iterator[tuple[WebServer, int]]:
    """The app as exposed beyond loopback (web.host 0.0.0.0: the editor's pages need the
    password), after a digest was really sent (unsubscribe links signed with the key)."""
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, web={"host": "0.0.0.0"})))
    assert cfg.web.password == SECRETS["MAILER_WEB_PASSWORD"]
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.sent == len(SUBSCRIBERS)
    server = WebServer(seeded, cfg).start()
    yield server, summary.digest_id
    server.close()


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"editor:{password}".encode()).decode()}


def test_no_web_page_shows_a_secret(
    web: tuple[WebServer, int], smtp_server: SmtpServer, debug_logs: pytest.LogCaptureFixture
) -> None:
    server, digest_id = web
    unsubscribe = server.local(unsubscribe_url(smtp_server.received[0].message))
    editor_pages = [
        "/",
        "/preview",
        "/preview.txt",
        "/digests",
        f"/digests/{digest_id}",
        f"/digests/{digest_id}.txt",
    ]
    public = {"/articles/1": 200, "/healthz": 200, unsubscribe: 200, "/unsubscribe/1.forged-token": 400}
    replies = []
    for path in editor_pages:
        # Served with the password; a wrong one or none gets the 401 page.
        for headers, status in (
            (basic(SECRETS["MAILER_WEB_PASSWORD"]), 200),
            (basic("wrong"), 401),
            ({}, 401),
        ):
            replies.append(server.get(path, headers=headers))
            assert replies[-1].status == status, replies[-1].request
    for path, status in public.items():
        replies.append(server.get(path))
        assert replies[-1].status == status, replies[-1].request
    replies.append(server.get("/no-such-page", headers=basic(SECRETS["MAILER_WEB_PASSWORD"])))
    assert replies[-1].status == 404
    replies.append(server.post(unsubscribe))  # RFC 8058 one-click, and its confirmation page
    assert replies[-1].status == 200
    for reply in replies:
        assert_no_secret(f"{reply.request} ({reply.status}) body", reply.body)
        assert_no_secret(f"{reply.request} ({reply.status}) headers", str(reply.headers))
    for received in smtp_server.received:
        assert_no_secret("a mailed message", received.data)
    assert_no_secret_in_logs(debug_logs)


def test_the_service_logs_no_secret_when_its_login_is_refused(
    tmp_path: Path, pki: Pki, relays: Callable[[str], TlsServer], seeded: Database, cfg: Config
) -> None:
    """`mailer -v serve`: the start-up tick resumes a built digest, the relay refuses the
    login, the service logs why and keeps running; nothing it prints holds a secret."""
    relay = relays("what-the-relay-wants")
    config = relay_config(tmp_path, relay, pki)
    digests.build(seeded, cfg, digests.manual_slot(T0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config), "-v", "serve"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **SECRETS},
    )
    try:
        deadline = time.monotonic() + 20
        while not deliveries_of_last_digest(seeded)[0]:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the service never tried the relay"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "SMTP login as 'editor'" in err and "535" in err, err
    assert "dashboard:" in out and "Traceback" not in err
    assert_no_secret("`serve` stdout", out)
    assert_no_secret("`serve` stderr", err)
    assert relay.handler.received == []
