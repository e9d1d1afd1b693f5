"""Where a digest's delivery stands, putting failures back in the queue, and test copies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select

from mailer import digest as digests
from mailer import render
from mailer.bounces.ledger import Rates, rates
from mailer.config import Config
from mailer.db import Database
from mailer.delivery import queue
from mailer.dkim import DkimSigner
from mailer.errors import InputError, NotFound
from mailer.message import MessageTemplate, Recipient, new_message_key
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Digest,
    Subscriber,
    utcnow,
)
from mailer.smtp import Outcome, SmtpConnection, SmtpFatal
from mailer.subscribers import normalise_email


def retry_failed(db: Database, digest_id: int) -> int:
    """`digest retry`: failed deliveries of still-active subscribers go back in the queue,
    and the digest is delivering again (its give-up clock restarted)."""
    with db.session() as s:
        d = s.get(Digest, digest_id)
        if d is None or d.issue_number is None:
            raise NotFound(f"digest #{digest_id} does not exist or was skipped")
        n = queue.requeue_failed(s, digest_id)
        if n:
            digests.reopen(d)
        return n


@dataclass(frozen=True)
class TestCopy:
    subject: str
    address: str
    reply: str  # the relay's answer to the message


def send_test_copy(db: Database, cfg: Config, to: str) -> TestCopy:
    """`digest send --to` and the preview page's form: a test copy of the next digest to
    one address, no state changed. InputError for an address that is not one, or nothing
    to send; the relay's refusal as send_test raises it (a MailerError). Reads only in
    read-only transactions, so it never waits for a send in progress."""
    address = normalise_email(to)
    with db.read_only():
        p = digests.preview(db, cfg)
    if p is None:
        raise InputError("nothing to send: there are no unsent articles")
    return TestCopy(p.subject, address, send_test(cfg, p.html, p.text, p.subject, address))


def send_test(cfg: Config, html: str, text: str, subject: str, to: str) -> str:
    """A test copy of a digest to one address; no state changes. Returns the server reply."""
    template = MessageTemplate(cfg, 0, f"[TEST] {subject}", html, text)
    # A fresh Message-ID key for every copy: a mailbox drops a Message-ID it has seen.
    base = cfg.digest.base_url
    rcpt = Recipient(
        0, to, "", base + render.PREVIEW_UNSUBSCRIBE, new_message_key(), base + render.PREVIEW_PREFERENCES
    )
    data = template.render(rcpt)
    signer = DkimSigner.from_config(cfg)
    if signer is not None:
        data = signer.sign(data)
    with SmtpConnection(cfg.smtp) as smtp:
        result = smtp.send(cfg.smtp.from_address, to, data)
    if result.outcome is not Outcome.SENT:
        raise SmtpFatal(f"test copy to {to} not accepted: {result.reply}")
    return result.reply


@dataclass
class DigestReport:
    """`digest status`: where one digest's delivery stands."""

    digest_id: int
    issue: int | None
    status: str
    subject: str
    counts: dict[str, int]
    bounced: int
    # What came back after a 250 (mailer.bounces): hard and soft bounces, complaints, and
    # their rates among the delivered, with a line per provider threshold passed.
    returned: Rates
    next_retry_at: datetime | None
    last_error: str
    next_run_at: datetime | None
    errors: list[tuple[str, int]]
    # The runs delivering it now (host:pid:run id), each with the time its heartbeat runs
    # out unless it renews it: a run past its time is gone, and its rows are taken over.
    runs: list[queue.Run]


def status_of(db: Database, digest_id: int | None = None) -> DigestReport:
    """`digest status`: where a digest's delivery stands (default: the newest one sent)."""
    with db.session() as s:
        if digest_id is None:
            d = s.scalars(
                select(Digest).where(Digest.issue_number.is_not(None)).order_by(Digest.id.desc())
            ).first()
            if d is None:
                raise NotFound("no digest has been built yet")
        else:
            d = s.get(Digest, digest_id)
            if d is None:
                raise NotFound(f"digest #{digest_id} does not exist")
        by_status = queue.counts(s, d.id)
        bounced = s.scalar(
            select(func.count())
            .select_from(Delivery)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(
                Delivery.digest_id == d.id,
                Delivery.status == DeliveryStatus.FAILED,
                Subscriber.status == "bounced",
            )
        )
        next_retry = s.scalar(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.digest_id == d.id, Delivery.status == DeliveryStatus.RETRY
            )
        )
        errors = s.execute(
            select(Delivery.last_reply, func.count())
            .where(
                Delivery.digest_id == d.id, Delivery.status.in_((DeliveryStatus.FAILED, DeliveryStatus.RETRY))
            )
            .group_by(Delivery.last_reply)
            .order_by(func.count().desc())
            .limit(5)
        ).all()
        return DigestReport(
            d.id,
            d.issue_number,
            d.status,
            d.subject or d.note,
            {k.value: by_status.get(k, 0) for k in DeliveryStatus},
            int(bounced or 0),
            rates(s, d.id, by_status.get(DeliveryStatus.SENT, 0)),
            next_retry,
            d.last_error,
            d.next_run_at,
            [(reply, n) for reply, n in errors],
            queue.runs(s, d.id, utcnow()),
        )
