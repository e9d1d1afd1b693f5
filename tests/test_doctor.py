"""`mailer doctor` against real peers on loopback: aiosmtpd with STARTTLS or implicit TLS
and AUTH (a throw-away CA from trustme, as in tests/test_tls.py), a DNS server serving test
zones (dnslib, tests/dns_server.py), and an HTTPS server for the List-Unsubscribe URL.

A good setup is all ok with exit status 0, line for line; each broken part is an error line
with its fix and exit status 1; the embedded default (the mail catcher) exits 0 with
warnings; --json has the report's shape."""

from __future__ import annotations

import base64
import http.server
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from mailer.cli import cli
from mailer.config import load_config
from mailer.db import HEAD_REVISION, Database
from mailer.doctor import relay
from tests.conftest import SEEDS, write_config
from tests.dns_server import DnsServer
from tests.smtp_server import free_port
from tests.test_tls import PASSWORD, USER, Authenticator, Pki, TlsServer, make_pki

SECRET = "k" * 64
DOMAIN = "example.org"  # config.toml's from_address is digest@example.org
SPF = "v=spf1 ip4:127.0.0.1 -all"
DMARC = "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.org"
# The relay's SIZE: aiosmtpd's default data_size_limit (32 MiB).
AIOSMTPD_SIZE = 33554432


# ---------------------------------------------------------------- keys, servers, config


@dataclass(frozen=True)
class Keys:
    rsa_file: Path
    rsa_p: str  # the p= of its DKIM record
    ed_file: Path
    ed_p: str
    other_rsa_p: str  # a different key's p=


def _pem(key: Any, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def _rsa_p(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("dkim")
    main, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    ed = ed25519.Ed25519PrivateKey.generate()
    raw = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Keys(
        _pem(main, folder / "dkim.pem"),
        _rsa_p(main),
        _pem(ed, folder / "ed.pem"),
        base64.b64encode(raw).decode(),
        _rsa_p(other),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def good_zone(keys: Keys) -> dict[str, list[str]]:
    return {
        DOMAIN: [SPF, "google-site-verification=abc"],
        f"_dmarc.{DOMAIN}": [DMARC],
        f"mail._domainkey.{DOMAIN}": [f"v=DKIM1; k=rsa; p={keys.rsa_p}"],
        f"ed._domainkey.{DOMAIN}": [f"v=DKIM1; k=ed25519; p={keys.ed_p}"],
    }


@pytest.fixture
def dns_server(keys: Keys) -> Iterator[DnsServer]:
    server = DnsServer(good_zone(keys)).start()
    yield server
    server.stop()


class _Unsubscribe(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 200 if self.path == "/unsubscribe/preview" else 404
        body = b"<p>Unsubscribe</p>"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def https_server(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An HTTPS server for localhost (the test CA, trusted through SSL_CERT_FILE, which
    OpenSSL's default verify paths read); its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unsubscribe)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.good.configure_cert(ctx)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    yield f"https://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def relays() -> Iterator[list[TlsServer]]:
    started: list[TlsServer] = []
    yield started
    for server in started:
        server.stop()


def start_relay(relays: list[TlsServer], pki: Pki, mode: str = "starttls", **kw: Any) -> TlsServer:
    server = TlsServer(
        mode,
        pki.good,
        authenticator=Authenticator(),
        auth_required=True,
        auth_require_tls=mode == "starttls",
        **kw,
    )
    relays.append(server)
    return server


def setup(
    folder: Path, port: int, pki: Pki, keys: Keys, base_url: str, database_url: str = "", **sections: Any
) -> Path:
    """A production-like config: the relay over STARTTLS with a login, DKIM with both keys,
    https base_url; a migrated database and a secret key file."""
    smtp = {"host": "127.0.0.1", "security": "starttls", "ca_file": str(pki.ca_file), "username": USER}
    dkim = {
        "enabled": True,
        "domain": DOMAIN,
        "selector": "mail",
        "key_file": str(keys.rsa_file),
        "ed25519_selector": "ed",
        "ed25519_key_file": str(keys.ed_file),
    }
    config = write_config(
        folder,
        port,
        database_url,
        smtp={**smtp, **sections.pop("smtp", {})},
        dkim={**dkim, **sections.pop("dkim", {})},
        digest={"base_url": base_url, **sections.pop("digest", {})},
        **sections,
    )
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    db.migrate()
    db.dispose()
    (folder / "var").mkdir(exist_ok=True)
    secret = folder / "var" / "secret.key"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return config


def doctor(config: Path, *args: str, dns: DnsServer | None = None, timeout: float = 3) -> Result:
    dns_args = ["--dns-server", dns.address] if dns is not None else []
    return CliRunner().invoke(
        cli, ["--config", str(config), "doctor", *dns_args, "--timeout", str(timeout), *args]
    )


def lines(result: Result) -> dict[str, str]:
    """Each check's line after its "name:" label."""
    out = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition(":")
        out[name] = rest.strip()
    return out


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", PASSWORD)


# ---------------------------------------------------------------- the good setup


def test_a_good_setup_is_all_ok_and_exits_0(
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    password: None,
) -> None:
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, https_server)
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    from mailer.articles import ArticleStore

    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    db.dispose()
    size, what = relay.message_size(cfg, True)
    tls = "TLSv1.3" if ssl.HAS_TLSv1_3 else "TLSv1.2"

    result = doctor(config, dns=dns_server)

    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert result.stdout.splitlines() == [
        f"config:       ok      {config} loaded",
        f"database:     ok      {tmp_path / 'mailer.db'}: reachable, schema at revision {HEAD_REVISION} "
        "(head)",
        f"secret key:   ok      {tmp_path / 'var' / 'secret.key'}: 64 characters",
        f"relay:        ok      127.0.0.1:{server.port}, STARTTLS ({tls}, certificate verified), "
        f"login as '{USER}' accepted; QUIT, nothing sent",
        f"message size: ok      {what} is {size / 1000:.0f} kB; the relay takes up to 34 MB "
        f"(SIZE {AIOSMTPD_SIZE})",
        f'SPF:          ok      {DOMAIN}: "{SPF}"',
        f"DMARC:        ok      _dmarc.{DOMAIN}: p=quarantine",
        f"DKIM:         ok      mail._domainkey.{DOMAIN}: the rsa key matches the private key",
        f"DKIM ed25519: ok      ed._domainkey.{DOMAIN}: the ed25519 key matches the private key",
        f"unsubscribe:  ok      {https_server}/unsubscribe/preview: 200 over https (certificate verified); "
        "one-click (RFC 8058) on",
        "bulk senders: ok      Gmail's and Yahoo's rules (Feb 2024) all met: SPF, DKIM, "
        "DMARC p=none at least, From aligned with SPF or DKIM, one-click List-Unsubscribe over https, "
        "TLS to the relay",
        "summary:      all 11 checks ok",
    ]
    assert what.startswith("the next digest (#1, ")
    # Logged in and left: no message, not even an envelope.
    assert server.handler.received == []


def test_the_measured_size_is_that_of_the_message_delivery_sends(
    tmp_path: Path, pki: Pki, keys: Keys, relays: list[TlsServer], password: None
) -> None:
    # `digest send --to` mails the same preview as a test copy; its subject carries
    # "[TEST] " and its Message-ID a key, which the doctor's message has too.
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, "https://news.example.org")
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    from mailer.articles import ArticleStore

    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    db.dispose()
    size, _ = relay.message_size(cfg, True)

    sent = CliRunner().invoke(cli, ["--config", str(config), "digest", "send", "--to", "a@example.com"])

    assert sent.exit_code == 0, sent.output
    [received] = server.handler.received
    # The doctor's recipient is "A Reader <reader@example.com>", the copy's "a@example.com".
    difference = len("[TEST] ") + len("a@example.com") - len("A Reader <reader@example.com>")
    assert abs(len(received.data) - (size + difference)) <= 2  # CRLF at the end of data


# ---------------------------------------------------------------- broken setups


def test_a_broken_dns_setup_is_error_lines_with_fixes_and_exits_1(
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    password: None,
) -> None:
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, https_server)
    del dns_server.zone[f"_dmarc.{DOMAIN}"], dns_server.zone[f"ed._domainkey.{DOMAIN}"]
    dns_server.zone[DOMAIN] = ["google-site-verification=abc"]  # no SPF
    dns_server.zone[f"mail._domainkey.{DOMAIN}"] = [f"v=DKIM1; k=rsa; p={keys.other_rsa_p}"]
    mail = f"mail._domainkey.{DOMAIN}"

    result = doctor(config, dns=dns_server)

    assert result.exit_code == 1, result.output
    assert result.stderr == ""
    got = lines(result)
    assert got["SPF"] == (
        f"error   no SPF record at {DOMAIN}; fix: publish a TXT record at {DOMAIN}: "
        "\"v=spf1 include:<your relay's SPF domain> ~all\" (the relay's documentation names it)"
    )
    assert got["DMARC"] == (
        f"error   no DMARC record at _dmarc.{DOMAIN}; fix: publish a TXT record at _dmarc.{DOMAIN}: "
        f'"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}" (p=none at least: Gmail and Yahoo require one '
        "of bulk senders)"
    )
    assert got["DKIM"] == (
        f"error   {mail}: the published key is not the public key of the configured private key; "
        f'fix: publish this TXT record at {mail} instead: "v=DKIM1; k=rsa; p={keys.rsa_p}" '
        "(or configure the matching key file)"
    )
    assert got["DKIM ed25519"] == (
        f"error   no DKIM key at ed._domainkey.{DOMAIN}; fix: publish a TXT record at "
        f'ed._domainkey.{DOMAIN}: "v=DKIM1; k=ed25519; p={keys.ed_p}"'
    )
    assert got["bulk senders"] == (
        "error   Gmail's and Yahoo's rules (Feb 2024): missing: SPF, DKIM, DMARC p=none at least, "
        "From aligned with SPF or DKIM; met: one-click List-Unsubscribe over https, TLS to the relay; "
        "fix: the lines above say how; without these Gmail and Yahoo refuse or junk bulk mail"
    )
    assert got["summary"] == "5 error(s), 0 warning(s) in 11 checks"
    for name in ("config", "database", "secret key", "relay", "message size", "unsubscribe"):
        assert got[name].startswith("ok "), (name, got[name])


def test_a_dmarc_record_of_the_parent_domain_counts_and_a_policy_is_needed(
    tmp_path: Path, pki: Pki, keys: Keys, dns_server: DnsServer, https_server: str, relays: list[TlsServer]
) -> None:
    server = start_relay(relays, pki)
    config = setup(
        tmp_path, server.port, pki, keys, https_server, smtp={"from_address": "news@mail.example.org"}
    )
    dns_server.zone[f"_dmarc.{DOMAIN}"] = ["v=DMARC1; p=reject; sp=none"]
    assert lines(doctor(config, dns=dns_server))[
        "DMARC"
    ] == f"ok      _dmarc.{DOMAIN}: sp=none (reports only; " + (
        "quarantine or reject also protect the domain)"
    )
    dns_server.zone[f"_dmarc.{DOMAIN}"] = ["v=DMARC1; rua=mailto:x@example.org"]
    assert lines(doctor(config, dns=dns_server))["DMARC"].startswith(
        f'error   _dmarc.{DOMAIN}: "v=DMARC1; rua=mailto:x@example.org" has no valid p='
    )


def test_a_wrong_password_is_an_error_naming_the_login_and_not_the_password(
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, https_server)
    wrong = "Wr0ng-Pa55word-typed-by-hand"
    monkeypatch.setenv("MAILER_SMTP_PASSWORD", wrong)

    result = doctor(config, dns=dns_server)

    assert result.exit_code == 1
    assert lines(result)["relay"] == (
        f"error   SMTP login as '{USER}' at 127.0.0.1:{server.port} refused: 535 5.7.8 Authentication "
        "credentials invalid; fix: check smtp.username and MAILER_SMTP_PASSWORD (the relay refused them)"
    )
    assert wrong not in result.output and PASSWORD not in result.output
    assert lines(result)["bulk senders"].startswith("warning ")  # TLS not verified: the session failed
    assert server.handler.received == []


@pytest.mark.parametrize("mode", ["starttls", "ssl"])
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_a_certificate_the_ca_file_does_not_trust_is_an_error(
    mode: str,
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    password: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_relay(relays, pki, mode)
    # Without ca_file the system's CAs are asked, and they do not know the test CA (the
    # HTTPS server's SSL_CERT_FILE would add it).
    monkeypatch.delenv("SSL_CERT_FILE")
    config = setup(tmp_path, server.port, pki, keys, https_server, smtp={"security": mode, "ca_file": ""})

    result = doctor(config, dns=dns_server)

    assert result.exit_code == 1
    verdict, _, rest = lines(result)["relay"].partition(" ")
    assert verdict == "error"
    assert f"TLS certificate of 127.0.0.1:{server.port} not trusted" in rest
    assert rest.endswith(
        "; fix: set smtp.ca_file to the CA that signed the relay's certificate (a private CA), or renew it"
    )


def test_a_relay_that_is_down_is_an_error_within_the_timeout(
    tmp_path: Path, pki: Pki, keys: Keys, dns_server: DnsServer, https_server: str
) -> None:
    port = free_port()
    config = setup(tmp_path, port, pki, keys, https_server)

    started = time.monotonic()
    result = doctor(config, dns=dns_server, timeout=2)

    assert time.monotonic() - started < 10
    assert result.exit_code == 1
    got = lines(result)
    assert got["relay"] == (
        f"error   SMTP server 127.0.0.1:{port} unreachable: Connection refused; fix: check smtp.host and "
        f"smtp.port (127.0.0.1:{port}), that the relay runs and no firewall blocks it"
    )
    assert got["message size"].startswith("warning a sample digest of 40 articles (none unsent) is ")
    assert got["message size"].endswith("; not compared: no session with the relay; fix: see the relay line")


def test_a_digest_over_the_relays_size_is_an_error(
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    password: None,
) -> None:
    server = start_relay(relays, pki, data_size_limit=20_000)
    config = setup(tmp_path, server.port, pki, keys, https_server)  # no articles: the sample
    size, what = relay.message_size(load_config(str(config)), True)
    assert what == "a sample digest of 40 articles (none unsent)" and size > 20_000

    result = doctor(config, dns=dns_server)

    assert result.exit_code == 1
    assert lines(result)["message size"] == (
        f"error   {what} is {size / 1000:.0f} kB, over the relay's limit of 20 kB (SIZE 20000); "
        "fix: lower digest.max_articles or digest.lead_chars, or have the relay's limit raised"
    )


def test_an_unsubscribe_url_that_answers_404_or_is_not_trusted_is_an_error(
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    password: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, https_server + "/news")
    assert lines(doctor(config, dns=dns_server))["unsubscribe"] == (
        f"error   {https_server}/news/unsubscribe/preview: 404 Not Found; fix: base_url must reach mailer's "
        "web server (a proxy passing /unsubscribe/ through to it)"
    )
    monkeypatch.delenv("SSL_CERT_FILE")
    config = setup(tmp_path, server.port, pki, keys, https_server)
    got = lines(doctor(config, dns=dns_server))["unsubscribe"]
    assert got.startswith(f"error   {https_server}/unsubscribe/preview: TLS certificate not trusted: ")
    assert got.endswith(
        "; fix: serve it with a certificate from a public CA (e.g. Let's Encrypt): providers check it"
    )


def test_a_dns_server_that_does_not_answer_costs_one_timeout(
    tmp_path: Path, pki: Pki, keys: Keys, https_server: str, relays: list[TlsServer], password: None
) -> None:
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, https_server)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never read
        silent.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        result = CliRunner().invoke(
            cli, ["--config", str(config), "doctor", "--dns-server", address, "--timeout", "1"]
        )
        took = time.monotonic() - started

    assert result.exit_code == 1
    got = lines(result)
    assert got["SPF"] == (
        f"error   {DOMAIN}: not checked: DNS did not answer (no answer from {address} within 1 s); fix: "
        "check the DNS server (`--dns-server HOST[:PORT]` asks another one) and try again"
    )
    for name, where in (("DMARC", f"_dmarc.{DOMAIN}"), ("DKIM", f"mail._domainkey.{DOMAIN}")):
        assert got[name].startswith(f"error   {where}: not checked: DNS did not answer"), got[name]
    assert took < 4  # one timeout, not one per query


def test_a_config_that_does_not_load_is_one_error_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, smtp={"prot": 25})

    result = doctor(config)

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"config:  error   {config}: smtp.prot: unknown key; "
        "fix: correct it; every other check needs the config",
        "summary: 1 error(s), 0 warning(s) in 1 checks",
    ]
    assert result.stderr == ""


@pytest.mark.filterwarnings("ignore:Skipped unsupported reflection")
def test_a_missing_or_old_database_and_an_empty_secret_key_are_errors(
    tmp_path: Path, dns_server: DnsServer
) -> None:
    config = write_config(tmp_path, catcher={"enabled": True})
    db_file = tmp_path / "mailer.db"
    secret = tmp_path / "var" / "secret.key"
    got = lines(doctor(config, dns=dns_server, timeout=0.5))
    assert got["database"] == f"error   {db_file}: no such database file; fix: create it with `mailer init`"
    assert got["secret key"].startswith(
        f"warning {secret} does not exist yet; fix: `mailer serve` creates it"
    )

    db = Database(f"sqlite:///{db_file}")
    from alembic import command

    from mailer.db import alembic_config

    with db.engine.begin() as conn:
        cfg = alembic_config(db.url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0010")
    db.dispose()
    secret.parent.mkdir()
    secret.write_text("\n")
    result = doctor(config, dns=dns_server, timeout=0.5)
    got = lines(result)
    assert got["database"] == (
        f"error   {db_file}: schema at revision 0010, head is {HEAD_REVISION}; fix: upgrade it with "
        "`mailer init` (back it up first: `mailer backup FILE`)"
    )
    assert got["secret key"] == (
        f"error   {secret}: the secret key is empty (at least 24 characters; delete the file to generate a "
        f"new one, or set MAILER_SECRET_KEY); fix: delete {secret} to have a new one generated, or set "
        "MAILER_SECRET_KEY"
    )
    assert result.exit_code == 1
    db = Database(f"sqlite:///{db_file}")
    assert db.revision() == "0010"  # the doctor changed nothing
    db.dispose()


def test_the_database_check_on_each_database(
    tmp_path: Path, database_url: str, dns_server: DnsServer
) -> None:
    config = write_config(tmp_path, database_url=database_url, catcher={"enabled": True})
    cfg = load_config(str(config))
    db = Database(cfg.database_url)
    db.migrate()
    db.dispose()
    from mailer.errors import database_where

    got = lines(doctor(config, dns=dns_server, timeout=0.5))
    where = database_where(cfg.database_url)
    assert got["database"] == f"ok      {where}: reachable, schema at revision {HEAD_REVISION} (head)"


def test_the_mail_catcher_is_a_demo_warnings_only_and_exit_0(tmp_path: Path, dns_server: DnsServer) -> None:
    # The embedded default: the catcher as relay (not running: `mailer serve` starts it),
    # an http loopback base_url, DKIM off, and nothing in DNS.
    dns_server.zone.clear()
    config = write_config(tmp_path, catcher={"enabled": True, "port": 2525})
    cfg = load_config(str(config))
    Database(cfg.database_url).migrate()
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "secret.key").write_text(SECRET)
    os.chmod(tmp_path / "var" / "secret.key", 0o600)

    result = doctor(config, dns=dns_server, timeout=1)

    assert result.exit_code == 0, result.output
    got = lines(result)
    assert got["relay"].startswith("warning the built-in mail catcher at 127.0.0.1:2525 ")
    assert got["SPF"] == (
        f"warning no SPF record at {DOMAIN} (the catcher is not a real relay); fix: publish a TXT record at "
        f"{DOMAIN}: \"v=spf1 include:<your relay's SPF domain> ~all\" (the relay's documentation names it)"
    )
    assert got["unsubscribe"].startswith(
        "warning http://127.0.0.1:8080 is not https: readers' mail providers will not offer one-click "
        "unsubscribe (the catcher is not a real relay); fix: "
    )
    verdicts = {name: line.split()[0] for name, line in got.items() if name != "summary"}
    assert set(verdicts.values()) == {"ok", "warning"}
    assert {name for name, v in verdicts.items() if v == "ok"} == {"config", "database", "secret key"}


def test_json_has_every_check_and_the_verdicts(
    tmp_path: Path,
    pki: Pki,
    keys: Keys,
    dns_server: DnsServer,
    https_server: str,
    relays: list[TlsServer],
    password: None,
) -> None:
    server = start_relay(relays, pki)
    config = setup(tmp_path, server.port, pki, keys, https_server)
    dns_server.zone[DOMAIN] = []

    result = doctor(config, "--json", dns=dns_server)

    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert set(report) == {"ok", "errors", "warnings", "catcher", "checks"}
    assert (report["ok"], report["errors"], report["warnings"], report["catcher"]) == (False, 2, 0, False)
    assert [c["name"] for c in report["checks"]] == [
        "config",
        "database",
        "secret key",
        "relay",
        "message size",
        "SPF",
        "DMARC",
        "DKIM",
        "DKIM ed25519",
        "unsubscribe",
        "bulk senders",
    ]
    for check in report["checks"]:
        assert set(check) == {"name", "verdict", "detail", "fix"}
        assert check["verdict"] in ("ok", "warning", "error")
        assert bool(check["fix"]) == (check["verdict"] != "ok")
    spf = report["checks"][5]
    assert (spf["verdict"], spf["detail"]) == ("error", f"no SPF record at {DOMAIN}")


def test_a_bad_dns_server_option_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = doctor(config, "--dns-server", "dns.example.org")
    assert result.exit_code == 2
    assert "the DNS server must be an IP address" in result.stderr
