"""Delivering a digest: the per-(digest, subscriber) state machine and the send engine.

    queued ──claim──▶ sending ──250──▶ sent
      ▲                  │ ├──4xx / dropped twice──▶ retry (next_attempt_at) ──due──▶ sending
      │                  │ ├──5xx──▶ failed (subscriber's bounce count +1)
      └──fatal / stop────┘ └──subscriber no longer active──▶ skipped
    queued/retry ──subscriber unsubscribes──▶ skipped

The engine: `smtp.connections` worker threads, each with its own reused SMTP connection
and database connection. They share a list of claimed recipients; whichever finds it
empty claims the next batch. Database writes are serialised by one lock in the process,
so SQLite's busy-wait (which sleeps in whole milliseconds) never comes into play.

Why this gives the crash bounds:
* Rows are claimed (set to `sending`) in batches of CLAIM_BATCH. A worker records each
  result (one short commit) *before* it sends its next message. So at any instant at most
  one message per connection has been accepted by the server without being recorded.
* After a crash, rows left in `sending` go back to the queue (when the next run takes the
  lease). Of those, only the ones accepted-but-unrecorded were really delivered, so a
  crash duplicates at most `smtp.connections` messages, and loses none.
* SIGTERM/Ctrl-C set a stop flag: each worker finishes and records the message it is
  sending, unsent claimed rows are put back to `queued`, and the run ends with no
  `sending` rows: a restart duplicates nothing.
* Only one process delivers a digest at a time: it holds a lease on the digest row (owner
  + expiry, renewed while it works). Another process waits until the lease expires or its
  owner's pid is gone; only then are stale `sending` rows re-queued.
* Unsubscribing marks queued/retry rows `skipped`, and every worker re-reads the
  subscriber's status just before sending, so nobody is mailed after they stopped, even
  when their row was already claimed.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from limits import RateLimitItemPerHour, storage, strategies
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from mailer import digest as digests
from mailer.config import Config
from mailer.db import Database
from mailer.dkim import DkimSigner
from mailer.errors import MailerError, NotFound
from mailer.message import MessageTemplate, Recipient
from mailer.models import DELIVERY_PENDING, Delivery, Digest, Subscriber, utcnow
from mailer.smtp import Outcome, Result, SmtpConnection, SmtpFatal
from mailer.subscribers import set_status
from mailer.tokens import Tokens, load_secret

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
CLAIM_BATCH = 500
OWNER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
# Digests being delivered by this process (the lease identifies the process, so two
# threads of one process are kept apart here).
_ACTIVE: set[int] = set()
_ACTIVE_LOCK = threading.Lock()
# A digest whose run stopped on a relay-wide problem is retried after these delays.
RUN_BACKOFF_MINUTES = [1, 2, 5, 10, 30]


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
    waiting: bool = False
    stopped: str = ""
    # Set when the run ended because smtp.max_per_hour was used up.
    quota_until: datetime | None = None
    seconds: float = 0.0  # how long this run delivered
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
    if (
        owner
        and owner != OWNER
        and _owner_alive(owner)
        and (owner.partition(":")[0] == socket.gethostname() or (d.lease_until and d.lease_until > now))
    ):
        # A live process on this host keeps its claim however slow it is (a tight rate
        # limit); one on another host keeps it while it renews the lease.
        return False
    if owner != OWNER:
        # Whoever had it is gone: what it had in flight may or may not have gone out, so
        # it goes back in the queue (at most one duplicate per connection it had).
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


class RateLimiter:
    """smtp.max_per_second / max_per_hour, shared by every connection of this process.

    Per second, messages are paced evenly (one every 1/limit s, with 2% to spare): a
    burst-then-wait window would let completion jitter put more than the limit into some
    one-second window as the relay sees it. Per hour, `limits`' moving window counts."""

    def __init__(self, per_second: int, per_hour: int, sent_last_hour: int = 0) -> None:
        self.interval = 1.02 / per_second if per_second else 0.0
        self.next_at = 0.0
        self.hourly = RateLimitItemPerHour(per_hour) if per_hour else None
        self.window = strategies.MovingWindowRateLimiter(storage.MemoryStorage())
        if self.hourly is not None and sent_last_hour:
            # What earlier runs sent in the last hour counts as if sent just now: never
            # over the quota, at worst a little late.
            self.window.hit(self.hourly, "smtp", cost=min(sent_last_hour, per_hour))
        self.lock = threading.Lock()
        # When the hourly quota is used up: the epoch time it frees up again.
        self.quota_reset: float | None = None

    def acquire(self, halt: threading.Event) -> bool:
        """Block until a message may go out. False if the run is halted meanwhile, or the
        hourly quota is used up (then `quota_reset` says when it frees up: rather than hold
        a process for up to an hour, the run ends and the service resumes it then)."""
        if not (self.interval or self.hourly):
            return not halt.is_set()
        with self.lock:
            now = time.monotonic()
            if self.hourly is not None:
                if not self.window.test(self.hourly, "smtp"):
                    self.quota_reset = self.window.get_window_stats(self.hourly, "smtp").reset_time
                    return False
                self.window.hit(self.hourly, "smtp")
            at = max(now, self.next_at)
            self.next_at = at + self.interval
        return not halt.wait(at - now) if at > now else not halt.is_set()


@dataclass
class _Job:
    delivery_id: int
    attempts: int
    recipient: Recipient


class _Shared:
    """What the workers of one run share: the claimed jobs and the write lock."""

    def __init__(self) -> None:
        self.write_lock = threading.Lock()
        self.jobs: collections.deque[_Job] = collections.deque()
        self.more = True
        self.consecutive = 0  # failures in a row, across connections
        self.error: BaseException | None = None

    def give_back(self, job: _Job) -> None:
        with self.write_lock:
            self.jobs.appendleft(job)


class Deliverer:
    """Delivers one digest over `smtp.connections` reused SMTP connections."""

    def __init__(
        self,
        db: Database,
        cfg: Config,
        stop: threading.Event | None = None,
        on_progress: Callable[[RunSummary, int], None] | None = None,
        ignore_backoff: bool = False,
    ) -> None:
        self.db = db
        self.cfg = cfg
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.ignore_backoff = ignore_backoff
        self.tokens = Tokens(load_secret(cfg.var_dir))
        self.limiter = RateLimiter(cfg.smtp.max_per_second, cfg.smtp.max_per_hour, self._sent_last_hour())
        # Loaded and checked once: a bad key refuses the run before anything is sent.
        self.signer = DkimSigner.from_config(cfg)

    def _sent_last_hour(self) -> int:
        if not self.cfg.smtp.max_per_hour:
            return 0
        with self.db.session() as s:
            since = utcnow() - timedelta(hours=1)
            return s.scalar(select(func.count()).where(Delivery.sent_at > since)) or 0

    # ------------------------------------------------------------------ the run

    def run(self, digest_id: int) -> RunSummary:
        with _ACTIVE_LOCK:
            if digest_id in _ACTIVE:
                return RunSummary(digest_id, busy=True)
            _ACTIVE.add(digest_id)
        try:
            return self._run(digest_id)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(digest_id)

    def _run(self, digest_id: int) -> RunSummary:
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, digest_id)
            if d is None or d.status != "sending":
                return RunSummary(digest_id, d.issue_number if d else None, finished=True)
            summary = RunSummary(digest_id, d.issue_number)
            if not self.ignore_backoff and d.next_run_at and d.next_run_at > now:
                summary.waiting = True
                summary.stopped = d.last_error
                return summary
            if not _acquire(s, d, now):
                summary.busy = True
                return summary
            if now - (d.retried_at or d.created_at) > digests.give_up_age(self.cfg):
                self._give_up(s, d, now)
            template = MessageTemplate(self.cfg, d.id, d.subject, d.html, d.text)
        halt = threading.Event()  # a relay-wide problem: every worker stops
        started = time.monotonic()
        try:
            self._coordinate(template, summary, halt)
        finally:
            summary.seconds = time.monotonic() - started
            if self.limiter.quota_reset is not None:
                summary.quota_until = datetime.fromtimestamp(self.limiter.quota_reset, UTC)
            self._release(summary)
        return summary

    def _coordinate(self, template: MessageTemplate, summary: RunSummary, halt: threading.Event) -> None:
        shared = _Shared()
        workers = [
            threading.Thread(target=self._work, args=(template, shared, halt, summary), daemon=True)
            for _ in range(self.cfg.smtp.connections)
        ]
        for w in workers:
            w.start()
        renewed = time.monotonic()
        try:
            while any(w.is_alive() for w in workers):
                if self.stop.wait(0.05):
                    halt.set()  # SIGTERM/Ctrl-C: finish the messages in flight, then stop
                if time.monotonic() - renewed > LEASE.total_seconds() / 3:
                    # Renewed on a timer, not only per claimed batch: a rate-limited batch
                    # can take longer than the lease.
                    with shared.write_lock:
                        self._renew_lease(summary.digest_id)
                    renewed = time.monotonic()
        finally:
            halt.set()  # also wakes workers blocked in the rate limiter
            for w in workers:
                w.join()
            # Whatever was claimed but never handed to the server goes back in the queue.
            self._requeue([job.delivery_id for job in shared.jobs])
            if shared.error is not None:
                raise shared.error

    def _work(
        self, template: MessageTemplate, shared: _Shared, halt: threading.Event, summary: RunSummary
    ) -> None:
        smtp = SmtpConnection(self.cfg.smtp)
        # The raw DBAPI connection (with the engine's pragmas): the per-message commit is
        # three tiny statements, and SQLAlchemy's execution layer tripled their cost.
        conn = self.db.engine.raw_connection()
        sender = self.cfg.smtp.from_address
        try:
            while not (halt.is_set() or self.stop.is_set()):
                job = self._next_job(shared, summary)
                if job is None:
                    return
                if not self.limiter.acquire(halt):
                    shared.give_back(job)  # never sent: re-queued when the run ends
                    if self.limiter.quota_reset is not None:
                        halt.set()  # hourly quota used up: every connection stops
                    return
                try:
                    if _still_active(conn, job.recipient.subscriber_id):
                        data = template.render(job.recipient)
                        if self.signer is not None:
                            data = self.signer.sign(data)  # last: after the message is final
                        result = smtp.send(sender, job.recipient.email, data)
                    else:
                        result = Result(Outcome.SKIPPED, "subscriber no longer active")
                except SmtpFatal as exc:
                    result = Result(Outcome.FATAL, str(exc))
                # Recorded before the next message: this is what bounds the duplicates
                # after a crash to one message per connection.
                with shared.write_lock:
                    self._record(conn, job, result, summary, halt, shared)
                if result.outcome is Outcome.FATAL:
                    return
        except MailerError as exc:  # e.g. the lease lost to another process: one line, no trace
            shared.error = shared.error or exc
            halt.set()
        except Exception as exc:  # a bug or a database failure stops the whole run
            log.exception("delivery worker failed")
            shared.error = shared.error or exc
            halt.set()
        finally:
            smtp.close()
            conn.close()

    def _renew_lease(self, digest_id: int) -> None:
        with self.db.session() as s:
            s.execute(
                update(Digest)
                .where(Digest.id == digest_id, Digest.lease_owner == OWNER)
                .values(lease_until=utcnow() + LEASE)
            )

    def _next_job(self, shared: _Shared, summary: RunSummary) -> _Job | None:
        with shared.write_lock:
            if not shared.jobs and shared.more:
                batch = self._claim(summary)
                shared.more = bool(batch)
                shared.jobs.extend(batch)
            return shared.jobs.popleft() if shared.jobs else None

    # ------------------------------------------------------------------ database work

    def _claim(self, summary: RunSummary) -> list[_Job]:
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, summary.digest_id)
            assert d is not None
            if d.lease_owner != OWNER:
                raise SmtpFatal("another process took over the delivery of this digest")
            d.lease_until = now + LEASE
            due = or_(
                Delivery.status == "queued",
                and_(Delivery.status == "retry", Delivery.next_attempt_at <= now),
            )
            rows = s.execute(
                select(
                    Delivery.id,
                    Delivery.attempts,
                    Subscriber.id,
                    Subscriber.email,
                    Subscriber.name,
                    Subscriber.status,
                    Subscriber.token_nonce,
                )
                .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
                .where(Delivery.digest_id == summary.digest_id, due)
                .order_by(Delivery.id)
                .limit(CLAIM_BATCH)
            ).all()
            jobs, inactive = [], []
            for delivery_id, attempts, sub_id, email, name, status, nonce in rows:
                if status != "active":
                    inactive.append(delivery_id)
                    continue
                url = unsubscribe_url(self.cfg, self.tokens, sub_id, nonce)
                jobs.append(_Job(delivery_id, attempts + 1, Recipient(sub_id, email, name, url)))
            if inactive:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(inactive))
                    .values(status="skipped", last_reply="subscriber no longer active", updated_at=now)
                )
                summary.skipped += len(inactive)
            if jobs:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_([j.delivery_id for j in jobs]))
                    .values(status="sending", attempts=Delivery.attempts + 1, updated_at=now)
                )
            return jobs

    def _record(
        self,
        conn: Any,
        job: _Job,
        result: Result,
        summary: RunSummary,
        halt: threading.Event,
        shared: _Shared,
    ) -> None:
        """One short commit per message (called with the write lock held)."""
        now = _sql_value(utcnow())
        outcome = result.outcome
        args: tuple[Any, ...]
        if outcome is Outcome.SENT:
            sql, args = _SENT, (result.reply, now, now, job.delivery_id)
            summary.sent += 1
            shared.consecutive = 0
        elif outcome is Outcome.SKIPPED:
            sql, args = _SET_STATUS, ("skipped", result.reply, now, job.delivery_id)
            summary.skipped += 1
        elif outcome is Outcome.FATAL:
            # Not the recipient's fault: back in the queue, the attempt not counted.
            sql, args = _REQUEUE_ONE, (result.reply, now, job.delivery_id)
            if not summary.stopped:
                summary.stopped = result.reply
            halt.set()
        elif outcome is Outcome.TEMPORARY:
            delays = self.cfg.delivery.retry_minutes
            delay = delays[min(job.attempts, len(delays)) - 1]
            retry_at = _sql_value(utcnow() + timedelta(minutes=delay))
            sql, args = _RETRY, (result.reply, retry_at, now, job.delivery_id)
            summary.retry += 1
            shared.consecutive += 1
        else:
            sql, args = _SET_STATUS, ("failed", result.reply, now, job.delivery_id)
            summary.failed += 1
            shared.consecutive += 1
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            cur.execute(sql, args)
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):  # BEGIN itself may be what failed
                cur.execute("ROLLBACK")
            raise
        finally:
            cur.close()
        if outcome is Outcome.PERMANENT:
            self._bounce(job.recipient.subscriber_id)
        limit = self.cfg.delivery.max_consecutive_errors
        if shared.consecutive >= limit and not summary.stopped:
            summary.stopped = (
                f"paused after {shared.consecutive} consecutive failures; last reply: {result.reply}"
            )
            halt.set()
        if self.on_progress:
            self.on_progress(summary, 1)

    def _bounce(self, subscriber_id: int) -> None:
        with self.db.session() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                return
            sub.bounce_count += 1
            if sub.bounce_count >= self.cfg.delivery.bounce_threshold and sub.status == "active":
                set_status(s, sub, "bounced")

    def _requeue(self, delivery_ids: list[int]) -> None:
        if not delivery_ids:
            return
        with self.db.session() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id.in_(delivery_ids), Delivery.status == "sending")
                .values(status="queued", attempts=Delivery.attempts - 1, updated_at=utcnow())
            )

    def _give_up(self, s: Session, d: Digest, now: datetime) -> None:
        hours = self.cfg.delivery.give_up_hours
        s.execute(
            update(Delivery)
            .where(Delivery.digest_id == d.id, Delivery.status.in_(DELIVERY_PENDING))
            .values(status="failed", last_reply=f"gave up after {hours:g} hours", updated_at=now)
        )

    def _release(self, summary: RunSummary) -> None:
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, summary.digest_id)
            if d is None or d.lease_owner != OWNER:
                return
            summary.counts = counts(s, d.id)
            d.lease_owner = None
            d.lease_until = None
            if summary.stopped:
                d.run_failures += 1
                d.last_error = summary.stopped[:1000]
                wait = RUN_BACKOFF_MINUTES[min(d.run_failures, len(RUN_BACKOFF_MINUTES)) - 1]
                d.next_run_at = now + timedelta(minutes=wait)
            else:
                d.run_failures = 0
                d.last_error = ""
                # Hourly quota used up: not a failure, just resume when it frees up.
                d.next_run_at = summary.quota_until
            if not any(summary.counts.get(st, 0) for st in DELIVERY_PENDING):
                digests.finish(s, d, now, delivered=summary.counts.get("sent", 0) > 0)
                summary.finished = True
        if summary.finished:
            log.info("digest #%s finished: %s", summary.issue, summary.counts)


def _still_active(conn: Any, subscriber_id: int) -> bool:
    """Re-read the subscriber's status just before sending (autocommit read: WAL readers
    never wait for the writer), so an unsubscribe counts even for an already-claimed row."""
    cur = conn.cursor()
    try:
        row = cur.execute("SELECT status FROM subscribers WHERE id = ?", (subscriber_id,)).fetchone()
    finally:
        cur.close()
    return row is not None and row[0] == "active"


def _sql_value(value: Any) -> Any:
    """Datetimes as UTCDateTime stores them (naive UTC, SQLAlchemy's SQLite format)."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


_SET = "UPDATE deliveries SET {} WHERE id = ?"
_SENT = _SET.format("status = 'sent', last_reply = ?, sent_at = ?, updated_at = ?")
_RETRY = _SET.format("status = 'retry', last_reply = ?, next_attempt_at = ?, updated_at = ?")
_SET_STATUS = _SET.format("status = ?, last_reply = ?, updated_at = ?")
_REQUEUE_ONE = _SET.format("status = 'queued', attempts = attempts - 1, last_reply = ?, updated_at = ?")


def deliver(
    db: Database,
    cfg: Config,
    digest_id: int,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
    ignore_backoff: bool = False,
) -> RunSummary:
    return Deliverer(db, cfg, stop, on_progress, ignore_backoff).run(digest_id)


def retry_failed(db: Database, digest_id: int) -> int:
    """`digest retry`: failed deliveries of still-active subscribers go back in the queue."""
    with db.session() as s:
        d = s.get(Digest, digest_id)
        if d is None or d.issue_number is None:
            raise NotFound(f"digest #{digest_id} does not exist or was skipped")
        active = select(Subscriber.id).where(Subscriber.status == "active")
        n = s.execute(
            update(Delivery)
            .where(
                Delivery.digest_id == digest_id,
                Delivery.status == "failed",
                Delivery.subscriber_id.in_(active),
            )
            .values(status="queued", next_attempt_at=None, updated_at=utcnow())
        ).rowcount
        if n:
            d.status = "sending"
            d.retried_at = utcnow()  # the give-up clock starts again
            d.finished_at = None
            d.next_run_at = None
            d.run_failures = 0
            d.last_error = ""
        return int(n or 0)


def send_test(cfg: Config, html: str, text: str, subject: str, to: str) -> str:
    """A test copy of a digest to one address; no state changes. Returns the server reply."""
    template = MessageTemplate(cfg, 0, f"[TEST] {subject}", html, text)
    rcpt = Recipient(0, to, "", cfg.digest.base_url + digests.PREVIEW_UNSUBSCRIBE)
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
class DigestStatus:
    digest_id: int
    issue: int | None
    status: str
    subject: str
    counts: dict[str, int]
    bounced: int
    next_retry_at: datetime | None
    last_error: str
    next_run_at: datetime | None
    errors: list[tuple[str, int]]


def status_of(db: Database, digest_id: int | None = None) -> DigestStatus:
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
        by_status = counts(s, d.id)
        bounced = s.scalar(
            select(func.count())
            .select_from(Delivery)
            .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
            .where(Delivery.digest_id == d.id, Delivery.status == "failed", Subscriber.status == "bounced")
        )
        next_retry = s.scalar(
            select(func.min(Delivery.next_attempt_at)).where(
                Delivery.digest_id == d.id, Delivery.status == "retry"
            )
        )
        errors = s.execute(
            select(Delivery.last_reply, func.count())
            .where(Delivery.digest_id == d.id, Delivery.status.in_(("failed", "retry")))
            .group_by(Delivery.last_reply)
            .order_by(func.count().desc())
            .limit(5)
        ).all()
        return DigestStatus(
            d.id,
            d.issue_number,
            d.status,
            d.subject or d.note,
            {k: by_status.get(k, 0) for k in ("queued", "sending", "sent", "retry", "failed", "skipped")},
            int(bounced or 0),
            next_retry,
            d.last_error,
            d.next_run_at,
            [(reply, n) for reply, n in errors],
        )
