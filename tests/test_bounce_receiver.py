"""Mailer's own SMTP receiver, the MX of the bounce domain (mailer.bounces.receiver), spoken
to over SMTP by smtplib and by a real Postfix, on SQLite and PostgreSQL.

The digest is really sent first (to an aiosmtpd relay, tests/smtp_server.py), so the
bounces and complaints carry its real messages, Message-IDs and VERP envelope senders.
The bounces are written the way Postfix writes them (the layout of a DSN its bounce
daemon wrote, below), and one test has a real Postfix write and send one.
The builders here (postfix_dsn, arf_complaint, sent_digest) serve tests/test_bounce_mailbox.py too.
"""

from __future__ import annotations

import logging
import re
import smtplib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import format_datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from mailer import campaign
from mailer.bounces.receiver import BounceReceiver, start_receiver
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.errors import MailerError
from mailer.models import BounceEvent, Delivery, Subscriber, utcnow
from mailer.tokens import Tokens, load_secret
from tests.conftest import populate, write_config
from tests.postfix import Postfix, private_postfix
from tests.smtp_server import SmtpServer, free_port

BOUNCES = "bounces@example.org"
UNKNOWN_USER = "Recipient address rejected: User unknown in virtual mailbox table"


# ---------------------------------------------------------------- what comes back


@dataclass(frozen=True)
class Sent:
    """One digest message as the relay received it."""

    delivery_id: int
    envelope_sender: str  # the VERP address bounces go to
    data: bytes


def sent_digest(db: Database, cfg: Config, relay: SmtpServer) -> dict[str, Sent]:
    """Send the digest to every active reader through `relay`: reader -> what they were sent."""
    campaign.send_now(db, cfg, utcnow())
    with db.reader() as s:
        ids = {
            email: delivery_id
            for email, delivery_id in s.execute(select(Subscriber.email, Delivery.id).join(Delivery))
        }
    return {r.recipients[0]: Sent(ids[r.recipients[0]], r.sender, r.data) for r in relay.received}


def postfix_dsn(original: Sent, reader: str, status: str = "5.1.1", to: str | None = None) -> bytes:
    """A bounce laid out as Postfix 3.7's bounce daemon writes it (copied from one it wrote
    in tests/test_bounce_receiver.py's Postfix test): the notification, the delivery status,
    the returned message. `to`: where it goes, the message's VERP envelope sender unless said."""
    to = to or original.envelope_sender
    queue_id = uuid.uuid4().hex[:11].upper()
    boundary = f"{queue_id}.1795689267/mx.mailer.test"
    action = "failed" if status.startswith("5") else "delayed"
    reply = f"550 {status} <{reader}>: {UNKNOWN_USER}" if action == "failed" else f"451 {status} try later"
    date = format_datetime(utcnow())
    head = f"""\
Date: {date}
From: Mail Delivery System <MAILER-DAEMON@mx.mailer.test>
Subject: Undelivered Mail Returned to Sender
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <{uuid.uuid4().hex}@mx.mailer.test>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx.mailer.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<{reader}>: host 127.0.0.1[127.0.0.1] said: {reply} (in reply to RCPT TO command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.mailer.test
X-Postfix-Queue-ID: {queue_id}
X-Postfix-Sender: rfc822; {original.envelope_sender}
Arrival-Date: {date}

Final-Recipient: rfc822; {reader}
Original-Recipient: rfc822;{reader}
Action: {action}
Status: {status}
Remote-MTA: dns; 127.0.0.1
Diagnostic-Code: smtp; {reply}

--{boundary}
Content-Description: Undelivered Message
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

Return-Path: <{original.envelope_sender}>
"""
    return _crlf(head.encode()) + _crlf(original.data) + _crlf(f"\n--{boundary}--\n".encode())


def arf_complaint(original: Sent, reader: str, to: str = BOUNCES) -> bytes:
    """A "report spam" from a feedback loop (RFC 5965, laid out as its Appendix B example),
    with the message complained about attached whole."""
    boundary = f"part1_{uuid.uuid4().hex}"
    head = f"""\
From: Feedback Loop <fbl@mail.example.net>
To: {to}
Subject: Email Feedback Report for IP 192.0.2.1
Date: {format_datetime(utcnow())}
Message-ID: <{uuid.uuid4().hex}@mail.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
\tboundary="{boundary}"

--{boundary}
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.1. For more information about this format please see
https://www.rfc-editor.org/rfc/rfc5965.

--{boundary}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleFBL/1.0
Version: 1
Original-Mail-From: <{original.envelope_sender}>
Original-Rcpt-To: <{reader}>
Arrival-Date: {format_datetime(utcnow())}
Reported-Domain: example.org
Source-IP: 192.0.2.1

--{boundary}
Content-Type: message/rfc822
Content-Disposition: inline

"""
    return _crlf(head.encode()) + _crlf(original.data) + _crlf(f"\n--{boundary}--\n".encode())


def out_of_office(to: str, subject: str = "Out of office: Tech Policy Weekly") -> bytes:
    """An auto-reply (RFC 3834): comes back to the bounce address, and is no bounce."""
    return _crlf(
        f"""\
From: Ada Lovelace <ada@example.com>
To: {to}
Subject: {subject}
Date: {format_datetime(utcnow())}
Message-ID: <{uuid.uuid4().hex}@example.com>
Auto-Submitted: auto-replied
Precedence: auto_reply
Content-Type: text/plain; charset=utf-8

I am away until Monday and will read your message when I am back.
""".encode()
    )


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def events(db: Database) -> list[tuple[str, str, str | None, int | None]]:
    """(source, kind, status, delivery id) of every bounce and complaint recorded."""
    with db.reader() as s:
        rows = s.execute(
            select(BounceEvent.source, BounceEvent.kind, BounceEvent.status, BounceEvent.delivery_id)
        )
        return sorted((tuple(row) for row in rows), key=repr)


def statuses(db: Database) -> dict[str, str]:
    with db.reader() as s:
        return {email: status for email, status in s.execute(select(Subscriber.email, Subscriber.status))}


# ---------------------------------------------------------------- the receiver over SMTP


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    bounces = {"address": BOUNCES, "listen": f"127.0.0.1:{free_port()}"}
    return write_config(tmp_path, smtp_server.port, database_url, bounces=bounces)


@pytest.fixture
def sent(seeded: Database, cfg: Config, smtp_server: SmtpServer) -> dict[str, Sent]:
    return sent_digest(seeded, cfg, smtp_server)


@pytest.fixture
def receiver(seeded: Database, cfg: Config) -> Iterator[BounceReceiver]:
    started = start_receiver(seeded, cfg)
    assert started is not None
    yield started
    started.stop()


@dataclass
class Replies:
    mail: int
    rcpt: list[tuple[int, str]]
    data: tuple[int, str] | None  # None: no recipient was accepted, so no DATA


def smtp(receiver: BounceReceiver, sender: str, recipients: list[str], data: bytes) -> Replies:
    with smtplib.SMTP("127.0.0.1", receiver.port, timeout=30) as client:
        client.ehlo("mx.example.net")
        mail, _ = client.mail(sender)
        rcpt = [(code, reply.decode()) for code, reply in (client.rcpt(r) for r in recipients)]
        if not any(code == 250 for code, _ in rcpt):
            return Replies(mail, rcpt, None)
        code, reply = client.data(data)
        return Replies(mail, rcpt, (code, reply.decode()))


def assert_one_line_each_and_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "\n" not in record.getMessage()


def test_a_dsn_to_a_valid_verp_address_is_accepted_and_bounces_the_reader(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    zoe = sent["zoe@example.com"]

    replies = smtp(receiver, "", [zoe.envelope_sender], postfix_dsn(zoe, "zoe@example.com"))

    assert (replies.mail, replies.rcpt[0][0], replies.data and replies.data[0]) == (250, 250, 250)
    assert events(seeded) == [("mx", "hard", "5.1.1", zoe.delivery_id)]
    assert statuses(seeded)["zoe@example.com"] == "bounced"
    assert {statuses(seeded)[r] for r in ("ada@example.com", "grace@example.com")} == {"active"}
    assert_one_line_each_and_no_traceback(caplog)


def test_the_verp_address_is_matched_whatever_case_the_mta_folded_it_to(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver
) -> None:
    zoe = sent["zoe@example.com"]

    replies = smtp(receiver, "", [zoe.envelope_sender.upper()], postfix_dsn(zoe, "zoe@example.com"))

    assert replies.data is not None and replies.data[0] == 250
    assert events(seeded) == [("mx", "hard", "5.1.1", zoe.delivery_id)]


def test_a_soft_bounce_is_recorded_and_leaves_the_reader_active(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver
) -> None:
    ada = sent["ada@example.com"]

    smtp(receiver, "", [ada.envelope_sender], postfix_dsn(ada, "ada@example.com", status="4.2.2"))

    assert events(seeded) == [("mx", "soft", "4.2.2", ada.delivery_id)]
    assert statuses(seeded)["ada@example.com"] == "active"


@pytest.mark.parametrize(
    "address",
    [
        pytest.param("bounces+{id}-aaaaaaaaaaaaaaaa@example.org", id="forged-mac"),
        pytest.param("bounces+{id}@example.org", id="no-mac"),
        pytest.param("bounces+{token}@example.net", id="our-token-at-another-domain"),
        pytest.param("postmaster@example.org", id="a-stranger-at-our-domain"),
        pytest.param("someone@example.com", id="open-relay-attempt"),
    ],
)
def test_a_forged_token_or_a_strangers_address_is_refused_at_rcpt_and_nothing_is_recorded(
    seeded: Database, cfg: Config, sent: dict[str, Sent], receiver: BounceReceiver, address: str
) -> None:
    zoe = sent["zoe@example.com"]
    token = Tokens(load_secret(cfg.var_dir)).verp(zoe.delivery_id)
    forged = address.format(id=zoe.delivery_id, token=token)

    replies = smtp(receiver, "", [forged], postfix_dsn(zoe, "zoe@example.com", to=forged))

    assert replies.rcpt[0][0] == 550 and replies.rcpt[0][1].startswith("5.1.1 ")
    assert replies.data is None
    assert events(seeded) == []
    assert set(statuses(seeded).values()) == {"active"}


def test_a_complaint_from_a_feedback_loop_to_the_bare_bounce_address_marks_the_reader_complained(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver
) -> None:
    grace = sent["grace@example.com"]

    replies = smtp(receiver, "fbl@mail.example.net", [BOUNCES], arf_complaint(grace, "grace@example.com"))

    assert replies.data is not None and replies.data[0] == 250
    assert events(seeded) == [("mx", "complaint", "", grace.delivery_id)]
    assert statuses(seeded)["grace@example.com"] == "complained"


@pytest.mark.parametrize("recipient", ["verp", "bare"])
def test_mail_that_is_not_a_bounce_is_accepted_with_one_log_line_and_recorded_nowhere(
    seeded: Database,
    sent: dict[str, Sent],
    receiver: BounceReceiver,
    caplog: pytest.LogCaptureFixture,
    recipient: str,
) -> None:
    to = sent["ada@example.com"].envelope_sender if recipient == "verp" else BOUNCES
    caplog.set_level(logging.INFO, logger="mailer.bounces")

    replies = smtp(receiver, "ada@example.com", [to], out_of_office(to))

    assert replies.data is not None and replies.data[0] == 250  # a bounce MX never bounces
    assert events(seeded) == []
    assert set(statuses(seeded).values()) == {"active"}
    dropped = [r.getMessage() for r in caplog.records if r.name == "mailer.bounces.receiver"]
    assert len(dropped) == 1 and "dropped" in dropped[0], dropped
    assert_one_line_each_and_no_traceback(caplog)


def test_a_dsn_that_names_no_one_usable_is_accepted_with_a_warning_and_recorded_nowhere(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    zoe = sent["zoe@example.com"]
    bounce = re.sub(rb"\r\n(Action|Status): [^\r]*", b"", postfix_dsn(zoe, "zoe@example.com"))

    replies = smtp(receiver, "", [zoe.envelope_sender], bounce)

    assert replies.data is not None and replies.data[0] == 250
    assert events(seeded) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "neither Action nor Status" in warnings[0], warnings
    assert_one_line_each_and_no_traceback(caplog)


def test_a_second_verp_address_in_one_transaction_is_deferred_so_each_bounce_names_one_delivery(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver
) -> None:
    ada, zoe = sent["ada@example.com"], sent["zoe@example.com"]

    replies = smtp(
        receiver, "", [zoe.envelope_sender, ada.envelope_sender], postfix_dsn(zoe, "zoe@example.com")
    )

    assert [code for code, _ in replies.rcpt] == [250, 452]
    assert events(seeded) == [("mx", "hard", "5.1.1", zoe.delivery_id)]
    assert statuses(seeded)["ada@example.com"] == "active"


def test_a_database_error_answers_451_so_the_mta_retries_and_the_retry_is_recorded_once(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    zoe = sent["zoe@example.com"]
    bounce = postfix_dsn(zoe, "zoe@example.com")
    with seeded.session() as s:  # the table gone for a moment: every write fails
        s.execute(text("ALTER TABLE bounce_events RENAME TO bounce_events_away"))

    refused = smtp(receiver, "", [zoe.envelope_sender], bounce)

    assert refused.data is not None and refused.data[0] == 451 and refused.data[1].startswith("4.3.0")
    with seeded.session() as s:
        s.execute(text("ALTER TABLE bounce_events_away RENAME TO bounce_events"))
    assert statuses(seeded)["zoe@example.com"] == "active"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "database" in errors[0] and "451" in errors[0], errors
    assert_one_line_each_and_no_traceback(caplog)

    retried = smtp(receiver, "", [zoe.envelope_sender], bounce)
    again = smtp(receiver, "", [zoe.envelope_sender], bounce)  # an MTA that retried once too often

    assert retried.data is not None and retried.data[0] == 250
    assert again.data is not None and again.data[0] == 250
    assert events(seeded) == [("mx", "hard", "5.1.1", zoe.delivery_id)]
    assert statuses(seeded)["zoe@example.com"] == "bounced"


def test_a_message_over_10_mb_is_refused_before_anything_is_parsed(
    seeded: Database, sent: dict[str, Sent], receiver: BounceReceiver
) -> None:
    zoe = sent["zoe@example.com"]
    huge = postfix_dsn(zoe, "zoe@example.com").replace(
        b"\r\n\r\n", b"\r\n\r\n" + (b"x" * 76 + b"\r\n") * 140_000, 1
    )

    replies = smtp(receiver, "", [zoe.envelope_sender], huge)

    assert replies.data is not None and replies.data[0] == 552
    assert events(seeded) == []


def test_without_listen_no_receiver_starts(tmp_path: Path) -> None:
    cfg = load_config(str(write_config(tmp_path, bounces={"address": BOUNCES, "listen": ""})))

    assert start_receiver(Database(cfg.database_url), cfg) is None


def test_a_port_already_taken_is_one_line_naming_it(tmp_path: Path, smtp_server: SmtpServer) -> None:
    listen = f"127.0.0.1:{smtp_server.port}"
    cfg = load_config(str(write_config(tmp_path, bounces={"address": BOUNCES, "listen": listen})))

    with pytest.raises(MailerError) as raised:
        start_receiver(Database(cfg.database_url), cfg)

    assert str(raised.value) == f"bounce receiver cannot listen on {listen}: Address already in use"


# ---------------------------------------------------------------- a real Postfix bounces


def test_a_reader_unknown_at_their_mx_is_bounced_by_postfix_through_the_receiver(
    tmp_path: Path, database_url: str
) -> None:
    """The digest goes to a real Postfix (the relay), which hands it to the readers' MX; it
    refuses reader0001 (550 5.1.1 user unknown) after Postfix accepted the message, so
    Postfix writes the bounce itself and sends it to the VERP envelope sender, whose domain
    it routes to the receiver (transport_maps), as MX records would."""
    readers_mx = SmtpServer().start()
    readers_mx.handler.rule = lambda stage, address: (
        f"550 5.1.1 <{address}>: {UNKNOWN_USER}"
        if (stage, address) == ("RCPT", "reader0001@example.com")
        else None
    )
    listen_port = free_port()
    route = {"transport_maps": f"inline:{{example.org=smtp:[127.0.0.1]:{listen_port}}}"}
    try:
        with private_postfix(sink_port=readers_mx.port, main_cf_extra=route) as relay:
            bounces = {"address": BOUNCES, "listen": f"127.0.0.1:{listen_port}"}
            cfg = populate(write_config(tmp_path, relay.port, database_url, bounces=bounces), readers=3)
            db = Database(cfg.database_url)
            receiver = start_receiver(db, cfg)
            assert receiver is not None
            try:
                campaign.send_now(db, cfg, utcnow())
                relay.wait_until_empty()
                _wait_for(lambda: bool(events(db)), relay)

                with db.reader() as s:
                    delivery = s.scalar(
                        select(Delivery.id)
                        .join(Subscriber)
                        .where(Subscriber.email == "reader0001@example.com")
                    )
                    count = s.scalar(select(func.count()).select_from(BounceEvent))
                assert events(db) == [("mx", "hard", "5.1.1", delivery)]
                assert count == 1
                assert statuses(db) == {
                    "reader0000@example.com": "active",
                    "reader0001@example.com": "bounced",
                    "reader0002@example.com": "active",
                }
                assert "from=<>" in relay.log and f"relay=127.0.0.1[127.0.0.1]:{listen_port}" in relay.log
            finally:
                receiver.stop()
                db.dispose()
    finally:
        readers_mx.stop()


def _wait_for(condition: Callable[[], bool], relay: Postfix, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"nothing recorded; Postfix's log:\n{relay.log[-3000:]}")
        time.sleep(0.05)
