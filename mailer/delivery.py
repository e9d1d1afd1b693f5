"""Delivering a digest: the per-(digest, subscriber) state machine.

    queued ──claim──▶ sending ──250──▶ sent
                         │ ├──4xx / dropped──▶ retry (next_attempt_at) ──due──▶ sending
                         │ ├──5xx──▶ failed (subscriber's bounce count +1)
                         │ └──fatal (auth/TLS/unreachable)──▶ queued, run stops
    queued/retry ──subscriber no longer active──▶ skipped

Why this gives the crash bounds:
* A row is set to `sending` (committed) before its message is handed to the server and to
  `sent` (committed) right after the server's 250. Whatever instant a process dies at,
  the only rows whose fate is unknown are those in `sending`: at most the messages in
  flight. A restart puts them back in the queue, so each may be delivered twice (at most
  one duplicate per message in flight) and nothing is ever lost.
* SIGTERM/Ctrl-C set a stop flag checked between messages: the message in flight finishes
  and is recorded, then the run ends with no `sending` rows, so a restart duplicates none.
* Only one process delivers a digest at a time: it holds a lease on the digest row
  (owner + expiry, renewed while it works). A second service waits until the lease
  expires or its owner's pid is gone; only then are stale `sending` rows re-queued.
* The unsubscribe path marks the subscriber's queued/retry rows `skipped`, and each row is
  re-read immediately before its message is sent, so nobody is mailed after they stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from mailer import digest as digests
from mailer.config import Config
from mailer.db import Database
from mailer.message import MessageTemplate, Recipient
from mailer.models import DELIVERY_PENDING, Delivery, Digest, Subscriber, utcnow
from mailer.smtp import Outcome, SmtpConnection, SmtpFatal
from mailer.subscribers import set_status
from mailer.tokens import Tokens, load_secret

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
CLAIM_BATCH = 50
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class RunSummary:
    digest_id: int
    issue: int | None = None
    sent: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0
    finished: bool = False
    busy: bool = False
    stopped: str = ""
    counts: dict[str, int] = field(default_factory=dict)


def unsubscribe_url(cfg: Config, tokens: Tokens, subscriber_id: int, nonce: str) -> str:
    return f"{cfg.digest.base_url}/unsubscribe/{tokens.make(subscriber_id, nonce)}"


def _owner_alive(owner: str) -> bool:
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # cannot tell: trust the lease expiry
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire(s: Session, d: Digest, now: datetime) -> bool:
    owner = d.lease_owner
    if owner and owner != OWNER and d.lease_until and d.lease_until > now and _owner_alive(owner):
        return False
    if owner != OWNER:
        # Whoever had it is gone: what it had in flight may or may not have gone out, so
        # it goes back in the queue (at most one duplicate per message in flight).
        s.execute(
            update(Delivery)
            .where(Delivery.digest_id == d.id, Delivery.status == "sending")
            .values(status="queued", updated_at=now)
        )
    d.lease_owner = OWNER
    d.lease_until = now + LEASE
    return True


def counts(s: Session, digest_id: int) -> dict[str, int]:
    rows = s.execute(
        select(Delivery.status, func.count()).where(Delivery.digest_id == digest_id).group_by(Delivery.status)
    )
    return dict(rows.all())


class Deliverer:
    """Delivers one digest over one reused SMTP connection."""

    def __init__(
        self,
        db: Database,
        cfg: Config,
        stop: threading.Event | None = None,
        on_progress: Callable[[RunSummary, int], None] | None = None,
    ) -> None:
        self.db = db
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.tokens = Tokens(load_secret(cfg.var_dir))

    def run(self, digest_id: int) -> RunSummary:
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, digest_id)
            if d is None or d.status != "sending":
                summary = RunSummary(digest_id, d.issue_number if d else None, finished=True)
                return summary
            summary = RunSummary(digest_id, d.issue_number)
            if not _acquire(s, d, now):
                summary.busy = True
                return summary
            if now - d.created_at > digests.give_up_age(self.cfg):
                self._give_up(s, d, now)
            template = MessageTemplate(self.cfg, d.id, d.subject, d.html, d.text)
        try:
            with SmtpConnection(self.cfg.smtp) as smtp:
                self._loop(template, smtp, summary)
        finally:
            self._release(summary)
        return summary

    def _give_up(self, s: Session, d: Digest, now: datetime) -> None:
        hours = self.cfg.delivery.give_up_hours
        s.execute(
            update(Delivery)
            .where(Delivery.digest_id == d.id, Delivery.status.in_(DELIVERY_PENDING))
            .values(status="failed", last_reply=f"gave up after {hours:g} hours", updated_at=now)
        )

    def _claim(self, digest_id: int) -> list[tuple[int, Recipient]]:
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, digest_id)
            assert d is not None
            if d.lease_owner != OWNER:
                raise SmtpFatal("lost the delivery lease to another process")
            d.lease_until = now + LEASE
            due = or_(
                Delivery.status == "queued",
                and_(Delivery.status == "retry", Delivery.next_attempt_at <= now),
            )
            rows = s.execute(
                select(
                    Delivery.id,
                    Subscriber.id,
                    Subscriber.email,
                    Subscriber.name,
                    Subscriber.status,
                    Subscriber.token_nonce,
                )
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.digest_id == digest_id, due)
                .order_by(Delivery.id)
                .limit(CLAIM_BATCH)
            ).all()
            claimed, inactive = [], []
            for delivery_id, sub_id, email, name, status, nonce in rows:
                if status != "active":
                    inactive.append(delivery_id)
                    continue
                url = unsubscribe_url(self.cfg, self.tokens, sub_id, nonce)
                claimed.append((delivery_id, Recipient(sub_id, email, name, url)))
            if inactive:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(inactive))
                    .values(status="skipped", last_reply="subscriber no longer active", updated_at=now)
                )
            return claimed

    def _loop(self, template: MessageTemplate, smtp: SmtpConnection, summary: RunSummary) -> None:
        consecutive_errors = 0
        limit = self.cfg.delivery.max_consecutive_errors
        sender = self.cfg.smtp.from_address
        while not self.stop.is_set():
            batch = self._claim(summary.digest_id)
            if not batch:
                break
            for delivery_id, rcpt in batch:
                if self.stop.is_set():
                    return
                if not self._mark_sending(delivery_id):
                    summary.skipped += 1
                    continue
                try:
                    result = smtp.send(sender, rcpt.email, template.render(rcpt))
                except SmtpFatal as exc:
                    self._requeue(delivery_id)
                    summary.stopped = str(exc)
                    return
                if result.outcome is Outcome.FATAL:
                    self._requeue(delivery_id)
                    summary.stopped = f"SMTP server refused the run: {result.reply}"
                    return
                self._record(delivery_id, rcpt.subscriber_id, result.outcome, result.reply)
                if result.outcome is Outcome.SENT:
                    summary.sent += 1
                    consecutive_errors = 0
                else:
                    if result.outcome is Outcome.TEMPORARY:
                        summary.retry += 1
                    else:
                        summary.failed += 1
                    consecutive_errors += 1
                    if consecutive_errors >= limit:
                        summary.stopped = (
                            f"paused after {consecutive_errors} consecutive failures; "
                            f"last reply: {result.reply}"
                        )
                        return
                if self.on_progress:
                    self.on_progress(summary, 1)

    def _mark_sending(self, delivery_id: int) -> bool:
        """Claim one row for the wire; False if it was skipped meanwhile (unsubscribed)."""
        with self.db.session() as s:
            n = s.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id, Delivery.status.in_(("queued", "retry")))
                .values(status="sending", attempts=Delivery.attempts + 1, updated_at=utcnow())
            ).rowcount
            return n == 1

    def _requeue(self, delivery_id: int) -> None:
        with self.db.session() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id == delivery_id)
                .values(status="queued", attempts=Delivery.attempts - 1, updated_at=utcnow())
            )

    def _record(self, delivery_id: int, subscriber_id: int, outcome: Outcome, reply: str) -> None:
        now = utcnow()
        with self.db.session() as s:
            row = s.get(Delivery, delivery_id)
            assert row is not None
            row.last_reply = reply
            row.updated_at = now
            if outcome is Outcome.SENT:
                row.status = "sent"
                row.sent_at = now
            elif outcome is Outcome.TEMPORARY:
                delays = self.cfg.delivery.retry_minutes
                delay = delays[min(row.attempts, len(delays)) - 1]
                row.status = "retry"
                row.next_attempt_at = now + timedelta(minutes=delay)
            else:
                row.status = "failed"
                sub = s.get(Subscriber, subscriber_id)
                if sub is not None:
                    sub.bounce_count += 1
                    threshold = self.cfg.delivery.bounce_threshold
                    if sub.bounce_count >= threshold and sub.status == "active":
                        set_status(s, sub, "bounced")

    def _release(self, summary: RunSummary) -> None:
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, summary.digest_id)
            if d is None or d.lease_owner != OWNER:
                return
            summary.counts = counts(s, d.id)
            if not any(summary.counts.get(st, 0) for st in DELIVERY_PENDING):
                digests.finish(s, d, now)
                summary.finished = True
            else:
                d.lease_owner = None
                d.lease_until = None
        if summary.finished:
            log.info("digest #%s finished: %s", summary.issue, summary.counts)


def deliver(
    db: Database,
    cfg: Config,
    digest_id: int,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
) -> RunSummary:
    return Deliverer(db, cfg, stop, on_progress).run(digest_id)


def send_test(cfg: Config, html: str, text: str, subject: str, to: str) -> str:
    """A test copy of a digest to one address; no state changes. Returns the server reply."""
    template = MessageTemplate(cfg, 0, f"[TEST] {subject}", html, text)
    rcpt = Recipient(0, to, "", cfg.digest.base_url + digests.PREVIEW_UNSUBSCRIBE)
    with SmtpConnection(cfg.smtp) as smtp:
        result = smtp.send(cfg.smtp.from_address, to, template.render(rcpt))
    if result.outcome is not Outcome.SENT:
        raise SmtpFatal(f"test copy to {to} not accepted: {result.reply}")
    return result.reply
