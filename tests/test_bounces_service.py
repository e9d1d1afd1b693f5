"""`mailer serve` with `[bounces] listen`: the service is the bounce domain's MX while it
runs, and refuses what is not a VERP address of its own (real SMTP over loopback)."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from mailer.config import load_config
from mailer.db import Database
from mailer.errors import MailerError
from mailer.service import Service
from mailer.tokens import Tokens, load_secret
from tests.conftest import write_config
from tests.smtp_server import SmtpServer, free_port


def test_the_service_answers_for_its_verp_addresses_only_while_it_runs(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str
) -> None:
    port = free_port()
    bounces = {"address": "bounces@example.org", "listen": f"127.0.0.1:{port}"}
    cfg = load_config(str(write_config(tmp_path, smtp_server.port, database_url, bounces=bounces)))
    db = Database(cfg.database_url)
    db.migrate()
    token = Tokens(load_secret(cfg.var_dir)).verp(42)
    service = Service(db, cfg)
    service.start()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as mx:
            mx.ehlo("mta.example.net")
            assert mx.mail("<>")[0] == 250
            assert mx.rcpt(f"bounces+{token}@example.org")[0] == 250
            assert mx.rcpt("someone@example.org")[0] == 550
    finally:
        service.shutdown()
    with pytest.raises(OSError), smtplib.SMTP("127.0.0.1", port, timeout=2):
        pass


def test_listen_without_a_bounce_address_is_refused_when_the_config_loads(tmp_path: Path) -> None:
    path = write_config(tmp_path, bounces={"listen": "127.0.0.1:2526"})
    with pytest.raises(MailerError, match=r"bounces\.listen needs bounces\.address"):
        load_config(str(path))
