"""The bounce mailbox polled over IMAP (mailer.bounces.mailbox), against a real Dovecot on
loopback with TLS (tests/dovecot.py), on SQLite and PostgreSQL.

The digest is really sent first, so the bounces and complaints in the mailbox carry its
real messages and VERP addresses (the builders are tests/test_bounce_receiver.py's); one
test fills the mailbox with the bounces a real Postfix wrote. What is checked is what the
mailbox's owner and the editor see: which messages moved, which stayed with the flags they
had, and what happened to the readers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mailer import campaign
from mailer.bounces.mailbox import STATE_FILE, MailboxError, MailboxReport, poll_mailbox
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import utcnow
from tests.conftest import populate, write_config
from tests.dovecot import Dovecot, private_dovecot
from tests.postfix import private_postfix
from tests.smtp_server import SmtpServer, free_port
from tests.test_bounce_receiver import (
    BOUNCES,
    UNKNOWN_USER,
    Sent,
    arf_complaint,
    events,
    out_of_office,
    postfix_dsn,
    sent_digest,
    statuses,
)

PROCESSED = "mailer-processed"
SEEN, FLAGGED, DELETED = b"\\Seen", b"\\Flagged", b"\\Deleted"


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with private_dovecot() as server:
        yield server


def bounces_section(server: Dovecot, **more: object) -> dict[str, object]:
    return {"address": BOUNCES, "imap_url": server.url(), "imap_ca_file": str(server.ca_path), **more}


@pytest.fixture
def config_path(
    tmp_path: Path,
    smtp_server: SmtpServer,
    database_url: str,
    dovecot: Dovecot,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    monkeypatch.setenv("MAILER_BOUNCES_IMAP_PASSWORD", dovecot.password)
    return write_config(tmp_path, smtp_server.port, database_url, bounces=bounces_section(dovecot))


@pytest.fixture
def sent(seeded: Database, cfg: Config, smtp_server: SmtpServer) -> dict[str, Sent]:
    return sent_digest(seeded, cfg, smtp_server)


def message_id(data: bytes) -> str:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.partition(b":")[2].strip().decode()
    raise AssertionError("no Message-ID")


def test_bounces_and_complaints_are_recorded_and_moved_to_the_processed_folder(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    zoe, grace = sent["zoe@example.com"], sent["grace@example.com"]
    bounce, complaint = postfix_dsn(zoe, "zoe@example.com"), arf_complaint(grace, "grace@example.com")
    dovecot.append(bounce)
    dovecot.append(complaint, flags=[SEEN])  # read by a person first: still processed

    report = poll_mailbox(seeded, cfg)

    assert (report.processed, report.not_bounces, report.problems) == (2, 0, [])
    assert sorted(events(seeded), key=repr) == sorted(
        [("imap", "hard", "5.1.1", zoe.delivery_id), ("imap", "complaint", "", grace.delivery_id)], key=repr
    )
    assert statuses(seeded) == {
        "ada@example.com": "active",
        "grace@example.com": "complained",
        "zoe@example.com": "bounced",
    }
    assert dovecot.messages("INBOX") == {}
    assert dovecot.messages(PROCESSED) == {message_id(bounce): frozenset(), message_id(complaint): {SEEN}}


def test_unrelated_mail_and_an_out_of_office_are_left_exactly_as_they_were(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    ada = sent["ada@example.com"]
    dovecot.append(out_of_office(ada.envelope_sender))  # unread: must stay unread
    dovecot.append(sent["grace@example.com"].data, flags=[SEEN, FLAGGED])  # someone's own mail
    dovecot.append(out_of_office(BOUNCES, subject="Re: your newsletter"), flags=[DELETED])  # marked, kept
    bounce = postfix_dsn(sent["zoe@example.com"], "zoe@example.com")
    dovecot.append(bounce)
    before = dovecot.messages("INBOX")

    report = poll_mailbox(seeded, cfg)

    assert (report.processed, report.not_bounces) == (1, 3)
    left = dict(before)
    del left[message_id(bounce)]
    assert dovecot.messages("INBOX") == left  # the same messages with the same flags
    assert statuses(seeded)["ada@example.com"] == "active"
    assert statuses(seeded)["grace@example.com"] == "active"


def test_a_second_poll_reads_nothing_again_and_a_lost_mark_changes_nothing_either(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    dovecot.append(postfix_dsn(sent["zoe@example.com"], "zoe@example.com"))
    dovecot.append(out_of_office(BOUNCES))
    first = poll_mailbox(seeded, cfg)
    after_first = (events(seeded), statuses(seeded), dovecot.messages("INBOX"), dovecot.messages(PROCESSED))

    second = poll_mailbox(seeded, cfg)
    (cfg.var_dir / STATE_FILE).unlink()  # the mark lost: everything left is read again
    third = poll_mailbox(seeded, cfg)

    assert (first.processed, first.not_bounces) == (1, 1)
    assert second == MailboxReport()
    assert (third.processed, third.not_bounces, third.problems) == (0, 1, [])
    assert (
        events(seeded),
        statuses(seeded),
        dovecot.messages("INBOX"),
        dovecot.messages(PROCESSED),
    ) == after_first


def test_a_message_that_arrives_after_a_poll_is_read_by_the_next(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    dovecot.append(out_of_office(BOUNCES))
    poll_mailbox(seeded, cfg)
    dovecot.append(postfix_dsn(sent["zoe@example.com"], "zoe@example.com"))

    report = poll_mailbox(seeded, cfg)

    assert (report.processed, report.not_bounces) == (1, 0)
    assert statuses(seeded)["zoe@example.com"] == "bounced"


def test_a_bounce_for_no_delivery_of_ours_is_moved_aside_with_a_problem_line_and_changes_nobody(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    stranger = Sent(
        999, "bounces+999-aaaaaaaaaaaaaaaa@example.org", b"Message-ID: <x@elsewhere>\r\n\r\nhi\r\n"
    )
    bounce = postfix_dsn(stranger, "stranger@example.net")
    dovecot.append(bounce)

    report = poll_mailbox(seeded, cfg)

    assert report.processed == 1
    assert len(report.problems) == 1 and "no known delivery" in report.problems[0]
    assert events(seeded) == [("imap", "hard", "5.1.1", None)]
    assert set(statuses(seeded).values()) == {"active"}
    assert list(dovecot.messages(PROCESSED)) == [message_id(bounce)]


def test_a_message_over_10_mb_is_left_where_it_is_with_a_problem_line(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    zoe = sent["zoe@example.com"]
    huge = postfix_dsn(zoe, "zoe@example.com").replace(
        b"\r\n\r\n", b"\r\n\r\n" + (b"x" * 76 + b"\r\n") * 140_000, 1
    )
    dovecot.append(huge)
    before = dovecot.messages("INBOX")

    report = poll_mailbox(seeded, cfg)

    assert (report.processed, report.not_bounces) == (0, 0)
    assert len(report.problems) == 1 and "over the 10 MB limit" in report.problems[0]
    assert "Undelivered Mail Returned to Sender" in report.problems[0]
    assert dovecot.messages("INBOX") == before
    assert events(seeded) == []


def test_a_dsn_with_neither_action_nor_status_is_moved_aside_with_a_problem_line_and_changes_nobody(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    bounce = re.sub(
        rb"\r\n(Action|Status): [^\r]*", b"", postfix_dsn(sent["zoe@example.com"], "zoe@example.com")
    )
    dovecot.append(bounce)
    before = dovecot.messages("INBOX")

    report = poll_mailbox(seeded, cfg)

    assert (report.processed, report.not_bounces) == (0, 0)
    assert len(report.problems) == 1 and "neither Action nor Status" in report.problems[0]
    assert dovecot.messages("INBOX") == {} and len(before) == 1
    assert len(dovecot.messages(cfg.bounces.imap_processed_folder)) == 1
    assert events(seeded) == []
    assert statuses(seeded)["zoe@example.com"] == "active"


def test_a_database_error_stops_the_poll_and_the_next_poll_records_the_message(
    seeded: Database, cfg: Config, sent: dict[str, Sent], dovecot: Dovecot
) -> None:
    zoe = sent["zoe@example.com"]
    bounce = postfix_dsn(zoe, "zoe@example.com")
    dovecot.append(bounce)
    with seeded.session() as s:
        s.execute(text("ALTER TABLE bounce_events RENAME TO bounce_events_away"))

    with pytest.raises(Exception) as raised:
        poll_mailbox(seeded, cfg)

    assert not isinstance(raised.value, MailboxError)  # the service logs it as a database problem
    assert list(dovecot.messages("INBOX")) == [message_id(bounce)]
    with seeded.session() as s:
        s.execute(text("ALTER TABLE bounce_events_away RENAME TO bounce_events"))

    report = poll_mailbox(seeded, cfg)

    assert report.processed == 1
    assert events(seeded) == [("imap", "hard", "5.1.1", zoe.delivery_id)]
    assert dovecot.messages("INBOX") == {}


# ---------------------------------------------------------------- servers that say no


def sqlite_cfg(
    tmp_path: Path, server: Dovecot, monkeypatch: pytest.MonkeyPatch, password: str, **more: object
) -> Config:
    """A config for tests that never reach the database."""
    monkeypatch.setenv("MAILER_BOUNCES_IMAP_PASSWORD", password)
    return load_config(str(write_config(tmp_path, bounces=bounces_section(server, **more))))


def test_a_wrong_password_is_one_line_naming_the_server(
    tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = sqlite_cfg(tmp_path, dovecot, monkeypatch, "not-the-password")

    with pytest.raises(MailboxError) as raised:
        poll_mailbox(Database(cfg.database_url), cfg)

    line = str(raised.value)
    assert line.startswith(
        f"bounce mailbox {dovecot.user}@127.0.0.1:{dovecot.port}: login as {dovecot.user} refused"
    )
    assert "\n" not in line and "b'" not in line


def test_an_untrusted_certificate_is_one_line_naming_the_server(
    tmp_path: Path, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = sqlite_cfg(tmp_path, dovecot, monkeypatch, dovecot.password, imap_ca_file="")  # the system's CAs

    with pytest.raises(MailboxError) as raised:
        poll_mailbox(Database(cfg.database_url), cfg)

    line = str(raised.value)
    assert line.startswith(f"bounce mailbox {dovecot.user}@127.0.0.1:{dovecot.port}: certificate not trusted")
    assert "\n" not in line
    assert "Login:" not in dovecot.log  # the password was never sent


def test_a_server_that_is_not_there_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()  # nobody listens there
    monkeypatch.setenv("MAILER_BOUNCES_IMAP_PASSWORD", "pw")
    bounces = {"address": BOUNCES, "imap_url": f"imaps://bouncer@127.0.0.1:{port}/INBOX"}
    cfg = load_config(str(write_config(tmp_path, bounces=bounces)))

    with pytest.raises(MailboxError) as raised:
        poll_mailbox(Database(cfg.database_url), cfg)

    assert str(raised.value) == f"bounce mailbox bouncer@127.0.0.1:{port}: cannot connect: Connection refused"


# ---------------------------------------------------------------- a server without MOVE


def test_without_move_the_bounce_is_copied_and_only_its_own_uid_expunged(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dovecot with MOVE left out of its capabilities: COPY, \\Deleted, UID EXPUNGE. A
    message the owner marked \\Deleted but did not expunge is still there afterwards."""
    capabilities = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ UIDPLUS NAMESPACE CHILDREN"
    relay = SmtpServer().start()
    try:
        with private_dovecot(extra_config=f"imap_capability = {capabilities}\n") as server:
            monkeypatch.setenv("MAILER_BOUNCES_IMAP_PASSWORD", server.password)
            path = write_config(tmp_path, relay.port, database_url, bounces=bounces_section(server))
            cfg = populate(path, readers=2)
            db = Database(cfg.database_url)
            try:
                sent = sent_digest(db, cfg, relay)
                client = server.client()
                assert b"MOVE" not in client.capabilities()
                client.logout()
                server.append(out_of_office(BOUNCES), flags=[DELETED])
                bounce = postfix_dsn(sent["reader0001@example.com"], "reader0001@example.com")
                server.append(bounce)
                kept = {k: v for k, v in server.messages("INBOX").items() if k != message_id(bounce)}

                report = poll_mailbox(db, cfg)

                assert (report.processed, report.not_bounces) == (1, 1)
                assert server.messages("INBOX") == kept
                assert list(server.messages(PROCESSED)) == [message_id(bounce)]
                assert statuses(db)["reader0001@example.com"] == "bounced"
            finally:
                db.dispose()
    finally:
        relay.stop()


# ---------------------------------------------------------------- what a real Postfix wrote


def test_the_bounces_postfix_writes_are_recorded_from_the_mailbox(
    tmp_path: Path, database_url: str, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest goes through a real Postfix; the readers' MX refuses reader0001 for good
    and reader0002 for now (452, a full mailbox: Postfix defers, then gives up at once as
    its queue lifetime is 0) after Postfix accepted the message; the bounces Postfix writes
    go to the bounce domain, here a relay whose mail is put into the mailbox, as an MDA would."""
    refusals = {
        "reader0001@example.com": f"550 5.1.1 <reader0001@example.com>: {UNKNOWN_USER}",
        "reader0002@example.com": "452 4.2.2 <reader0002@example.com>: Mailbox full",
    }
    readers_mx = SmtpServer().start()
    readers_mx.handler.rule = lambda stage, address: refusals.get(address) if stage == "RCPT" else None
    bounce_domain = SmtpServer().start()
    route = {
        "transport_maps": f"inline:{{example.org=smtp:[127.0.0.1]:{bounce_domain.port}}}",
        "maximal_queue_lifetime": "0",  # a deferred message bounces at once (as 4.x.x)
        "bounce_queue_lifetime": "0",
    }
    try:
        with private_postfix(sink_port=readers_mx.port, main_cf_extra=route) as relay:
            monkeypatch.setenv("MAILER_BOUNCES_IMAP_PASSWORD", dovecot.password)
            path = write_config(tmp_path, relay.port, database_url, bounces=bounces_section(dovecot))
            cfg = populate(path, readers=3)
            db = Database(cfg.database_url)
            try:
                campaign.send_now(db, cfg, utcnow())
                relay.wait_until_empty()
                assert len(bounce_domain.received) == 2, relay.log[-3000:]
                for mail in bounce_domain.received:
                    assert mail.sender == "<>"  # the null sender
                    dovecot.append(mail.data)

                report = poll_mailbox(db, cfg)

                assert (report.processed, report.not_bounces, report.problems) == (2, 0, [])
                kinds = sorted((kind, status) for _, kind, status, _ in events(db))
                assert kinds == [("hard", "5.1.1"), ("soft", "4.2.2")]
                assert statuses(db) == {
                    "reader0000@example.com": "active",
                    "reader0001@example.com": "bounced",
                    "reader0002@example.com": "active",
                }
                assert dovecot.messages("INBOX") == {}
            finally:
                db.dispose()
    finally:
        readers_mx.stop()
        bounce_domain.stop()
