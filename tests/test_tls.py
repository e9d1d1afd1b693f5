"""SMTP over TLS against real aiosmtpd servers on loopback with a throw-away CA (trustme):
STARTTLS and implicit TLS deliver when smtp.ca_file trusts the server, and an untrusted,
expired or wrongly named certificate, a server without STARTTLS or a bad password stop the
run with one clear line, leave every delivery queued and blame no subscriber."""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from mailer import campaign
from mailer.config import load_config
from mailer.db import Database
from mailer.models import Delivery, Digest, Subscriber
from tests.conftest import ROOT, SUBSCRIBERS, write_config
from tests.smtp_server import Handler, SmtpServer, free_port

T0 = datetime(2026, 11, 30, 7, 0, tzinfo=UTC)
EMAILS = sorted(email for email, _ in SUBSCRIBERS)
MODES = ["starttls", "ssl"]
USER = "editor"
PASSWORD = "s3cret-Pa55word-for-the-relay"


# ---------------------------------------------------------------- certificates and servers


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # the throw-away CA's certificate (PEM): what smtp.ca_file points at
    good: trustme.LeafCert  # for localhost and 127.0.0.1
    other_host: trustme.LeafCert  # same CA, only for mail.example.org
    expired: trustme.LeafCert  # same CA and names, expired yesterday


def make_pki(folder: Path) -> Pki:
    ca = trustme.CA()
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    now = datetime.now(UTC)
    return Pki(
        ca_file=ca_file,
        good=ca.issue_cert("localhost", "127.0.0.1"),
        other_host=ca.issue_cert("mail.example.org"),
        expired=ca.issue_cert(
            "localhost", "127.0.0.1", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
        ),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@dataclass
class TlsHandler(Handler):
    """Also records the TLS version each message arrived over (None: in the clear)."""

    tls: list[str | None] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        ssl_object = server.transport.get_extra_info("ssl_object")
        self.tls.append(ssl_object.version() if ssl_object is not None else None)
        return await super().handle_DATA(server, session, envelope)


class TlsServer:
    """aiosmtpd on 127.0.0.1 speaking STARTTLS (required before MAIL) or implicit TLS.

    A free port, not port 0: the controller's readiness check connects to `port`. For
    implicit TLS that check wraps its socket in an unverified client context of its own,
    so it passes whatever certificate the server has."""

    def __init__(self, mode: str, cert: trustme.LeafCert, **smtp_kw: Any) -> None:
        self.mode = mode
        self.handler = TlsHandler()
        ctx = server_context(cert)
        tls = {"tls_context": ctx, "require_starttls": True} if mode == "starttls" else {"ssl_context": ctx}
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=free_port(), ready_timeout=5, **tls, **smtp_kw
        )
        self.controller.start()

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def tls_servers() -> Iterator[list[TlsServer]]:
    started: list[TlsServer] = []
    yield started
    for server in started:
        server.stop()


def start(servers: list[TlsServer], mode: str, cert: trustme.LeafCert, **smtp_kw: Any) -> TlsServer:
    server = TlsServer(mode, cert, **smtp_kw)
    servers.append(server)
    return server


def tls_config(folder: Path, port: int, mode: str, ca_file: Path | str, **smtp: Any) -> Path:
    """The test config (same database and secret key as `seeded`) pointed at a TLS server."""
    return write_config(folder, port, smtp={"security": mode, "ca_file": str(ca_file), "timeout": 5, **smtp})


# ---------------------------------------------------------------- what the database says


def deliveries(db: Database) -> dict[str, tuple[str, int]]:
    with db.session() as s:
        rows = s.execute(
            select(Subscriber.email, Delivery.status, Delivery.attempts).join(
                Subscriber, Subscriber.id == Delivery.subscriber_id
            )
        )
        return {email: (status, attempts) for email, status, attempts in rows}


def assert_all_pending_and_nobody_blamed(db: Database) -> None:
    """The relay-wide failure left every delivery queued, its attempt not counted, and no
    subscriber failed, bounced or charged a bounce."""
    assert deliveries(db) == {email: ("queued", 0) for email in EMAILS}
    with db.session() as s:
        subs = list(s.scalars(select(Subscriber)))
        assert {(sub.status, sub.bounce_count) for sub in subs} == {("active", 0)}
        digest = s.scalars(select(Digest)).one()
        assert digest.status == "sending" and digest.finished_at is None


def one_line(text: str) -> str:
    assert text and "\n" not in text and "\r" not in text, repr(text)
    return text


# ---------------------------------------------------------------- delivery over TLS


@pytest.mark.parametrize("mode", MODES)
def test_digest_is_delivered_over_tls_when_ca_file_trusts_the_servers_certificate(
    mode: str, pki: Pki, seeded: Database, tmp_path: Path, tls_servers: list[TlsServer]
) -> None:
    server = start(tls_servers, mode, pki.good)
    cfg = load_config(str(tls_config(tmp_path, server.port, mode, pki.ca_file)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.sent == 3 and not summary.stopped, summary
    received = server.handler.received
    assert sorted(r.recipients[0] for r in received) == EMAILS
    assert all(len(r.recipients) == 1 for r in received)
    # Every message went over TLS (STARTTLS is required by the server before MAIL anyway).
    assert len(server.handler.tls) == 3 and set(server.handler.tls) <= {"TLSv1.2", "TLSv1.3"}
    for r in received:
        msg = r.message
        assert msg["To"].addresses[0].addr_spec == r.recipients[0]
        assert str(msg["Subject"]).startswith("Tech Policy Weekly #1")
        text = msg.get_body(("plain",))
        assert text is not None and "Unsubscribe: " in text.get_content()
    assert deliveries(seeded) == {email: ("sent", 1) for email in EMAILS}


# ---------------------------------------------------------------- refused certificates


@pytest.mark.parametrize("mode", MODES)
def test_without_ca_file_the_system_cas_refuse_the_test_ca_and_nothing_is_sent(
    mode: str, pki: Pki, seeded: Database, tmp_path: Path, tls_servers: list[TlsServer]
) -> None:
    server = start(tls_servers, mode, pki.good)
    cfg = load_config(str(tls_config(tmp_path, server.port, mode, "")))
    [summary] = campaign.send_now(seeded, cfg, T0)
    error = one_line(summary.stopped)
    assert "certificate" in error and "not trusted" in error and f"127.0.0.1:{server.port}" in error
    assert not summary.finished and summary.sent == summary.failed == summary.retry == 0
    assert server.handler.received == []
    assert_all_pending_and_nobody_blamed(seeded)
    with seeded.session() as s:
        digest = s.scalars(select(Digest)).one()
        # The run backs off with the reason on record for `digest status` and the service.
        assert digest.last_error == error and digest.next_run_at is not None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_certificate_for_another_host_name_is_refused(
    mode: str, host: str, pki: Pki, seeded: Database, tmp_path: Path, tls_servers: list[TlsServer]
) -> None:
    # Signed by the CA that ca_file trusts, but for mail.example.org only.
    server = start(tls_servers, mode, pki.other_host)
    cfg = load_config(str(tls_config(tmp_path, server.port, mode, pki.ca_file, host=host)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    error = one_line(summary.stopped)
    # OpenSSL says "IP address mismatch" for 127.0.0.1 and "Hostname mismatch" for localhost.
    assert "certificate" in error and "mismatch" in error and f"not valid for '{host}'" in error
    assert server.handler.received == []
    assert_all_pending_and_nobody_blamed(seeded)


@pytest.mark.parametrize("mode", MODES)
def test_expired_certificate_is_refused(
    mode: str, pki: Pki, seeded: Database, tmp_path: Path, tls_servers: list[TlsServer]
) -> None:
    server = start(tls_servers, mode, pki.expired)
    cfg = load_config(str(tls_config(tmp_path, server.port, mode, pki.ca_file)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    error = one_line(summary.stopped)
    assert "certificate" in error and "expired" in error
    assert server.handler.received == []
    assert_all_pending_and_nobody_blamed(seeded)


def test_starttls_required_but_not_offered_is_refused_before_any_command_in_the_clear(
    seeded: Database, tmp_path: Path, smtp_server: SmtpServer, pki: Pki
) -> None:
    # The conftest server speaks plain SMTP only (no STARTTLS in its EHLO reply).
    stages: list[str] = []
    smtp_server.handler.rule = lambda stage, address: stages.append(stage)  # record, accept
    cfg = load_config(str(tls_config(tmp_path, smtp_server.port, "starttls", pki.ca_file)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    error = one_line(summary.stopped)
    assert "does not offer STARTTLS" in error and f"127.0.0.1:{smtp_server.port}" in error
    # Not one MAIL, RCPT or DATA went out unencrypted, let alone a message.
    assert stages == [] and smtp_server.received == []
    assert_all_pending_and_nobody_blamed(seeded)


# ---------------------------------------------------------------- the CLI


def run_mailer(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command in its own process: its stderr is what an operator sees (logging
    set up by the CLI itself, not pytest's capture)."""
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def untrusted_send(
    pki: Pki, seeded: Database, tmp_path: Path, tls_servers: list[TlsServer]
) -> tuple[subprocess.CompletedProcess[str], TlsServer]:
    """`mailer digest send --now` against a STARTTLS server with no ca_file (system CAs)."""
    server = start(tls_servers, "starttls", pki.good)
    return run_mailer(tls_config(tmp_path, server.port, "starttls", ""), "digest", "send", "--now"), server


def test_cli_send_now_with_an_untrusted_certificate_exits_1_naming_the_certificate(
    untrusted_send: tuple[subprocess.CompletedProcess[str], TlsServer], seeded: Database
) -> None:
    result, server = untrusted_send
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "certificate" in errors[0] and "not trusted" in errors[0]
    # stdout has the summary: nothing sent, all three still queued.
    assert "this run sent 0" in result.stdout and "3 queued" in result.stdout, result.stdout
    assert server.handler.received == []
    assert_all_pending_and_nobody_blamed(seeded)


def test_cli_send_now_with_an_untrusted_certificate_prints_exactly_one_stderr_line(
    untrusted_send: tuple[subprocess.CompletedProcess[str], TlsServer],
) -> None:
    result, _ = untrusted_send
    assert len(result.stderr.splitlines()) == 1, result.stderr


# ---------------------------------------------------------------- login


@dataclass
class Authenticator:
    """Accepts `user` with `password` and nothing else; records every attempt."""

    user: str = USER
    password: str = PASSWORD
    attempts: list[tuple[str, bool]] = field(default_factory=list)

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == (self.user.encode(), self.password.encode())
        login = data.login.decode("utf-8", "replace") if isinstance(data, LoginPassword) else "?"
        self.attempts.append((login, ok))
        # handled=False: aiosmtpd itself answers 535 5.7.8 to a refusal.
        return AuthResult(success=ok, handled=False)


def auth_server(servers: list[TlsServer], mode: str, pki: Pki, auth: Authenticator) -> TlsServer:
    # AUTH only after STARTTLS (aiosmtpd cannot tell implicit TLS apart, so there it is
    # offered on the TLS connection itself); MAIL is refused until logged in.
    return start(
        servers, mode, pki.good, authenticator=auth, auth_required=True, auth_require_tls=mode == "starttls"
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_with_the_password_from_the_environment_delivers(
    mode: str,
    pki: Pki,
    seeded: Database,
    tmp_path: Path,
    tls_servers: list[TlsServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = Authenticator()
    server = auth_server(tls_servers, mode, pki, auth)
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)
    cfg = load_config(str(tls_config(tmp_path, server.port, mode, pki.ca_file, username=USER)))
    [summary] = campaign.send_now(seeded, cfg, T0)
    assert summary.finished and summary.sent == 3, summary
    assert sorted(r.recipients[0] for r in server.handler.received) == EMAILS
    # With STARTTLS the server offers AUTH only after it: the password never went out in the clear.
    assert auth.attempts and all(attempt == (USER, True) for attempt in auth.attempts)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_wrong_password_stops_the_run_with_one_line_that_does_not_contain_it(
    mode: str,
    pki: Pki,
    seeded: Database,
    tmp_path: Path,
    tls_servers: list[TlsServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = Authenticator()
    server = auth_server(tls_servers, mode, pki, auth)
    wrong = "Wr0ng-Pa55word-typed-by-hand"
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", wrong)
    cfg = load_config(str(tls_config(tmp_path, server.port, mode, pki.ca_file, username=USER)))
    assert cfg.smtp.password == wrong  # the variable really was read
    [summary] = campaign.send_now(seeded, cfg, T0)
    error = one_line(summary.stopped)
    assert "login" in error and USER in error and "535" in error
    assert wrong not in error and PASSWORD not in error
    assert auth.attempts and (USER, False) in auth.attempts
    assert server.handler.received == []
    assert_all_pending_and_nobody_blamed(seeded)
    # Nor is it stored anywhere the status commands show.
    with seeded.session() as s:
        stored = [s.scalars(select(Digest)).one().last_error, *s.scalars(select(Delivery.last_reply))]
    assert stored[0] == error and not any(wrong in text for text in stored)
