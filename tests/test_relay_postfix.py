"""`mailer digest send --now`, a real process, through a private Postfix (tests/postfix.py)
that relays to an aiosmtpd sink on loopback: 1,500 readers, the way a real relay treats
them (PIPELINING, an access map refusing a few, a per-client connection limit).

What is checked is what a reader and the editor see: every reader Postfix accepts gets
exactly one message (counted where Postfix delivers it, and by Message-ID), the ones its
access map refuses are failed and bounced with Postfix's reply, and the run is not stopped.
"""

from __future__ import annotations

import collections
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer.db import Database
from mailer.models import Delivery, Digest, Subscriber
from tests.conftest import ROOT, populate, write_config
from tests.postfix import Postfix, private_postfix
from tests.smtp_server import SmtpServer

READERS = 1500
# The first refusal early, two in a row, and the very last reader.
REJECTED = {f"reader{i:04d}@example.com" for i in (7, 700, 701, 1499)}
MAILER = Path(sys.executable).with_name("mailer")  # the virtualenv's console script


@pytest.fixture
def sink() -> Iterator[SmtpServer]:
    """Where Postfix delivers: counts what really went through."""
    server = SmtpServer().start()
    yield server
    server.stop()


def send_now(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAILER), "--config", str(config), "digest", "send", "--now"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def deliveries(config: Path) -> dict[str, tuple[str, str, str]]:
    """Reader -> (delivery status, last reply, subscriber status) for the last digest."""
    from mailer.config import load_config

    db = Database(load_config(str(config)).database_url)
    try:
        with db.session() as s:
            digest_id = s.scalar(select(Digest.id).order_by(Digest.id.desc()))
            rows = s.execute(
                select(Subscriber.email, Delivery.status, Delivery.last_reply, Subscriber.status)
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.digest_id == digest_id)
            )
            return {email: (status, reply, sub) for email, status, reply, sub in rows}
    finally:
        db.dispose()


def assert_everyone_accepted_got_exactly_one(relay: Postfix, sink: SmtpServer, refused: set[str]) -> None:
    relay.wait_until_empty()
    everyone = {f"reader{i:04d}@example.com" for i in range(READERS)}
    got = collections.Counter(r.recipients[0] for r in sink.received)
    assert set(got) == everyone - refused, f"missing: {sorted(everyone - refused - set(got))[:10]}"
    assert set(got.values()) == {1}, f"mailed twice: {[a for a, n in got.items() if n > 1][:10]}"
    message_ids = {r.message["Message-ID"] for r in sink.received}
    assert len(message_ids) == len(sink.received)


def test_an_access_map_refusing_a_few_readers_fails_them_alone_and_everyone_else_gets_one_message(
    tmp_path: Path, sink: SmtpServer, database_url: str
) -> None:
    with private_postfix(reject=REJECTED, sink_port=sink.port) as relay:
        config = write_config(tmp_path, relay.port, database_url)
        populate(config, READERS)
        run = send_now(config)
        assert run.returncode == 0, run.stderr
        assert_everyone_accepted_got_exactly_one(relay, sink, REJECTED)
    rows = deliveries(config)
    for address in REJECTED:
        reply = f"554 5.7.1 <{address}>: Recipient address rejected: Access denied"
        assert rows[address] == ("failed", reply, "bounced")
    assert {rows[a][0] for a in rows.keys() - REJECTED} == {"sent"}


def test_connection_limit_of_two_with_four_connections_still_delivers_everyone_once(
    tmp_path: Path, sink: SmtpServer, database_url: str
) -> None:
    # Postfix answers the 3rd and 4th connection "421 4.7.0 ... too many connections".
    limit = {"smtpd_client_connection_count_limit": "2"}
    with private_postfix(sink_port=sink.port, main_cf_extra=limit) as relay:
        config = write_config(tmp_path, relay.port, database_url, smtp={"connections": 4})
        populate(config, READERS)
        run = send_now(config)
        assert run.returncode == 0, run.stderr
        assert_everyone_accepted_got_exactly_one(relay, sink, set())
        assert "Connection concurrency limit exceeded" in relay.log  # the limit really was hit
    assert {status for status, _, _ in deliveries(config).values()} == {"sent"}
