"""The send engine: `smtp.connections` workers delivering one digest.

Each worker thread keeps its own SMTP connection (reused across messages) and its own
raw database connection. They share a list of claimed recipients; whichever finds it
running low claims more. On SQLite, database writes are serialised by one lock in the
process, so SQLite's busy-wait (which sleeps in whole milliseconds) never comes into
play; PostgreSQL takes the workers' writes concurrently.

Why this gives the crash bounds:
* A worker records each result (one short commit) *before* its next message's data goes
  out: the record rides in the next message's gate (jobs.Gate), the database round trip
  that runs while the relay answers that message's envelope, and only when it has
  committed does the message itself go. So at any instant at most one message per
  connection has been accepted by the server without being recorded; after a crash, only
  those are sent again when another run re-queues the rows the dead run left in
  `sending` (see queue.py). A crash duplicates at most `smtp.connections` messages, and
  loses none.
* SIGTERM/Ctrl-C set a stop flag: each worker finishes and records the message it is
  sending, unsent claimed rows are put back to `queued`, and the run ends with no
  `sending` rows: a restart duplicates nothing.
* Any number of runs deliver a digest together, each claiming its own rows; a run renews
  its heartbeat on a timer, and a renewal or a pre-send check that finds the run replaced
  halts every worker (queue.py says why a dead run's rows are always taken over).
* Every worker re-reads the subscriber's status just before sending, and the unsubscribe
  outbox (requests not yet in a locked database), so nobody is mailed after they
  stopped, even when their row was already claimed.

What stops a run, and what does not:
* One recipient's refusal (any reply to RCPT, 5.1.x/5.2.x at DATA) is that recipient's.
* A relay that refuses one connection with a 4xx greeting (its connection limit) costs
  that connection only (pacing.ConnectionSlots).
* Relay-wide problems (authentication, TLS, the sender refused, the message refused, a
  relay that refuses every connection, `max_consecutive_errors` in a row) halt every
  worker and leave the rest queued; the service tries again with back-off.
* A database error ends the run with one line; while the database is only locked by
  another process, a worker waits for it (queue.LOCK_PATIENCE) instead.

Why one module of ~580 lines: the worker loop, its connection handling and its error
paths are one protocol (when a claimed row is sent, recorded or given back), and the
crash argument above reads in one place; the database side lives in queue.py and
fastpath.py, the shared jobs, editions and the gate in jobs.py.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from mailer import digest as digests
from mailer.bounces.verp import envelope_sender
from mailer.config import Config
from mailer.db import Database, serialise
from mailer.delivery import queue
from mailer.delivery.fastpath import FastPath
from mailer.delivery.jobs import Editions, Gate, Job, Shared
from mailer.delivery.pacing import RateLimiter
from mailer.dkim import DkimSigner
from mailer.errors import MailerError
from mailer.message import Recipient
from mailer.models import (
    DeliveryStatus,
    Digest,
    DigestEdition,
    DigestStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)
from mailer.smtp import Outcome, Result, SmtpBusy, SmtpConnection, SmtpFatal
from mailer.subscribers import set_status
from mailer.tokens import Tokens, load_secret

log = logging.getLogger("mailer.delivery")

# Rows claimed at a time, per connection: enough that claiming costs little, few enough
# that runs joining a digest find rows left to share. While a run stays alone on the
# digest, each claim doubles its batch up to CLAIM_MAX_PER_CONNECTION: a claim costs a few
# ms whatever its size (the heartbeat, the reclaim, the counts of other runs' rows), and
# at 250 rather than 50 a send into smtp-sink used ~20% less CPU (bench/throughput.py).
# A run that starts a moment after the first still finds rows: the first claims double
# from 50, and any company sets the batch back.
CLAIM_PER_CONNECTION = 50
CLAIM_MAX_PER_CONNECTION = 250
# Fewer than this many left, per connection: more are claimed ahead, a whole batch while
# the run is alone on the digest (each claim costs a few ms of write lock), this many with
# other runs on it, so they keep finding rows to share.
REFILL_PER_CONNECTION = 10
# Digests being delivered by this process: one run per digest and process is enough (it
# has smtp.connections workers), so a second thread of the process stays out.
_ACTIVE: set[int] = set()
_ACTIVE_LOCK = threading.Lock()


@dataclass
class RunSummary:
    digest_id: int
    issue: int | None = None
    sent: int = 0
    retry: int = 0
    failed: int = 0
    skipped: int = 0
    finished: bool = False
    # Another thread of this process is delivering this digest already.
    busy: bool = False
    waiting: bool = False
    stopped: str = ""
    # Set when the run ended because smtp.max_per_hour was used up.
    quota_until: datetime | None = None
    seconds: float = 0.0  # how long this run delivered
    counts: dict[str, int] = field(default_factory=dict)


def unsubscribe_url(cfg: Config, tokens: Tokens, subscriber_id: int, nonce: str) -> str:
    return f"{cfg.digest.base_url}/unsubscribe/{tokens.make(subscriber_id, nonce)}"


def preferences_url(cfg: Config, tokens: Tokens, subscriber_id: int, nonce: str) -> str:
    return f"{cfg.digest.base_url}/preferences/{tokens.preferences(subscriber_id, nonce)}"


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
        self.owner = queue.new_owner()
        self.lease = timedelta(seconds=cfg.delivery.lease_seconds)
        self.tokens = Tokens(load_secret(cfg.var_dir))
        self.limiter = RateLimiter(cfg.smtp.max_per_second)
        # Set when smtp.max_per_hour is used up: the epoch time it frees up again.
        self.quota_reset: float | None = None
        # Loaded and checked once: a bad key refuses the run before anything is sent.
        self.signer = DkimSigner.from_config(cfg)
        self.alone = True  # the only run on the digest (see _share)
        self.batch = CLAIM_PER_CONNECTION  # rows per connection of the next whole claim
        # SQLite takes one writer at a time: the workers queue on a lock in the process
        # rather than in SQLite's busy-wait (which sleeps in whole milliseconds).
        self.serial_writes = db.engine.dialect.name == "sqlite"

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

    def _start(self, digest_id: int) -> tuple[RunSummary, Editions | None]:
        """Join the digest's runs (and give up on what is too old); no template: nothing to do."""
        now = utcnow()
        with self.db.session() as s:
            d = s.get(Digest, digest_id)
            if d is None or d.status != DigestStatus.SENDING:
                return RunSummary(digest_id, d.issue_number if d else None, finished=True), None
            summary = RunSummary(digest_id, d.issue_number)
            if not self.ignore_backoff and d.next_run_at and d.next_run_at > now:
                summary.waiting = True
                summary.stopped = d.last_error
                return summary, None
            queue.join(s, digest_id, self.owner, now, self.lease)
            self._share(len(queue.runs(s, digest_id, now)))
            if now - (d.retried_at or d.created_at) > digests.give_up_age(self.cfg):
                queue.give_up(s, digest_id, self.cfg.delivery.give_up_hours, now)
            editions = s.scalars(select(DigestEdition).where(DigestEdition.digest_id == d.id)).all()
            return summary, Editions(self.cfg, d, list(editions))

    def _run(self, digest_id: int) -> RunSummary:
        summary, template = queue.patiently(self.db.url, self.stop, self._start, digest_id)
        if template is None:
            return summary
        halt = threading.Event()  # a relay-wide problem: every worker stops
        started = time.monotonic()
        error: BaseException | None = None
        try:
            self._coordinate(template, summary, halt)
        except BaseException as exc:
            error = exc
        summary.seconds = time.monotonic() - started
        if self.quota_reset is not None:
            summary.quota_until = datetime.fromtimestamp(self.quota_reset, UTC)
        try:
            queue.patiently(self.db.url, self.stop, self._release, summary)
        except MailerError:
            if error is None:
                raise
            # The run's own error says more. Unreleased, its heartbeat runs out and another
            # run takes its rows, so nothing is lost.
        if error is not None:
            raise error
        return summary

    def _coordinate(self, template: Editions, summary: RunSummary, halt: threading.Event) -> None:
        shared = Shared(self.cfg.smtp.connections)
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
                if time.monotonic() - renewed > self.lease.total_seconds() / 3:
                    # On a timer, not per claimed batch: a rate-limited batch can take
                    # longer than the lease.
                    with shared.write_lock:
                        self._guard_db(shared, halt, self._heartbeat, summary.digest_id)
                    renewed = time.monotonic()
        finally:
            halt.set()  # also wakes workers blocked in the rate limiter or a back-off
            for w in workers:
                w.join()
            # Whatever was claimed but never handed to the server goes back in the queue.
            # If the database refuses even that, the rows stay `sending` and another run
            # re-queues them when this run's heartbeat has expired: nothing is lost.
            left = [job.delivery_id for job in shared.jobs]
            if left:
                self._guard_db(shared, halt, self._requeue, left)
        if shared.error is not None:
            raise shared.error

    def _share(self, runs: int) -> None:
        """`runs` runs deliver this digest now: the relay's per-second limit is split
        between them, and a run with company tops up its jobs a little at a time."""
        self.limiter.share(runs)
        self.alone = runs <= 1

    def _heartbeat(self, digest_id: int) -> None:
        with self.db.session() as s:
            if not queue.heartbeat(s, self.owner, utcnow(), self.lease):
                raise queue.LostRun()
            # The relay's per-second limit is shared by every run on the digest.
            self._share(len(queue.runs(s, digest_id, utcnow())))

    def _work(self, template: Editions, shared: Shared, halt: threading.Event, summary: RunSummary) -> None:
        smtp = SmtpConnection(self.cfg.smtp)
        conn: FastPath | None = None
        job: Job | None = None  # claimed, not yet handed to the relay
        done: tuple[Job, Result] | None = None  # handed to the relay, not yet recorded
        try:
            conn = self._guard_db(shared, halt, self._fast_path)
            while conn is not None and not (halt.is_set() or self.stop.is_set()):
                if not self._connect(smtp, shared, halt, summary):
                    break
                got = self._guard_db(shared, halt, self._next_job, shared, summary)
                if got is False:  # other runs hold the last rows: look again in a moment
                    self._settle(conn, shared, halt, summary, done)  # not held while waiting
                    done = None
                    halt.wait(1.0)
                    continue
                if not isinstance(got, Job):
                    break
                job = got
                if not self.limiter.acquire(halt):  # halted while waiting for its turn
                    break
                gate = Gate(self, conn, shared, halt, summary, done, job)
                result = self._send(template, smtp, job, gate)
                gate()  # if the data never went out, the previous message is recorded now
                done = gate.done
                if gate.active is None:  # the database failed or this run was replaced: halted
                    break
                if result is None:  # the relay refused a new connection: not sent
                    shared.give_back(job)
                else:
                    done = (job, result)
                    self._observe(result, summary, halt, shared)
                job = None
                if result is not None and result.outcome is Outcome.FATAL:
                    break
        except Exception as exc:  # a bug: stop the whole run, and say where
            log.exception("delivery worker failed")
            shared.error = shared.error or exc
            halt.set()
        finally:
            if conn is not None:
                self._settle(conn, shared, halt, summary, done)
            if job is not None:
                shared.give_back(job)  # claimed but never sent: re-queued when the run ends
            if smtp.conn is not None:
                shared.slots.closed()
            smtp.close()
            if conn is not None:
                conn.close()

    def _settle(
        self,
        conn: FastPath,
        shared: Shared,
        halt: threading.Event,
        summary: RunSummary,
        done: tuple[Job, Result] | None,
    ) -> None:
        """Record a message handed to the relay that no next message's gate recorded."""
        if done is not None:
            self._guard_db(shared, halt, self._record, conn, *done, summary, shared, None)

    def _fast_path(self) -> FastPath:
        # A raw connection from the engine's pool: with the engine's pragmas on SQLite.
        return FastPath(self.db.engine.raw_connection(), self.db.engine.dialect.name)

    def _send(self, template: Editions, smtp: SmtpConnection, job: Job, gate: Gate) -> Result | None:
        """One message; None when the relay refused a new connection (not sent)."""
        had = smtp.conn is not None
        try:
            data = template.of(job).render(job.recipient)
            if self.signer is not None:
                data = self.signer.sign(data)  # last: after the message is final
            sender = envelope_sender(self.cfg, self.tokens, job.delivery_id)  # VERP when configured
            return smtp.send(sender, job.recipient.email, data, gate)
        except SmtpBusy:
            # send() reconnected after a hang-up and the relay refused the new connection.
            return None
        except SmtpFatal as exc:
            return Result(Outcome.FATAL, str(exc))
        finally:
            if had and smtp.conn is None:
                gate.shared.slots.closed()  # the relay hung up (421 or a dropped line)

    def _connect(
        self, smtp: SmtpConnection, shared: Shared, halt: threading.Event, summary: RunSummary
    ) -> bool:
        """Make sure this worker has an open connection. False when it should stop: the
        run is halted or done, or the relay refuses every connection (the run stops)."""
        attempt = 0
        while smtp.conn is None:
            if halt.is_set() or self.stop.is_set() or shared.drained():
                return False
            if not shared.slots.opening():
                halt.wait(1.0)  # the relay's limit is reached: wait for a slot to free up
                continue
            try:
                smtp.open()
            except SmtpBusy as exc:
                if not shared.slots.refused(exc.reply):
                    with shared.write_lock:
                        summary.stopped = (
                            summary.stopped or f"the relay refused every connection: {exc.reply}"
                        )
                    halt.set()
                    return False
                halt.wait(shared.slots.delay(attempt))
                attempt += 1
                continue
            except SmtpFatal as exc:
                shared.slots.closed()
                with shared.write_lock:
                    summary.stopped = summary.stopped or str(exc)
                halt.set()
                return False
            shared.slots.connected()
        return True

    def _guard_db(self, shared: Shared, halt: threading.Event, work: Callable[..., Any], *args: Any) -> Any:
        """`patiently` inside a worker: a database error (or a lost run) is kept as the
        run's error and halts every worker; None is returned then."""
        try:
            return queue.patiently(self.db.url, self.stop, work, *args)
        except MailerError as exc:
            shared.error = shared.error or exc
            halt.set()
            return None

    def _next_job(self, shared: Shared, summary: RunSummary) -> Job | bool | None:
        """The next claimed job; None when nothing is left; False when the only rows left
        are in flight with other runs: wait, then ask again (they finish, or their run
        dies and its rows come back), so the last run standing finishes the digest."""
        job = shared.take()
        if job is not None:
            # Running low: one worker claims the next batch while the others go on with
            # what is left, so no worker waits for a claim in the middle of a digest.
            low = len(shared.jobs) < self.cfg.smtp.connections * REFILL_PER_CONNECTION
            if low and shared.more and shared.claim_lock.acquire(blocking=False):
                try:
                    self._refill(shared, summary, self.batch if self.alone else REFILL_PER_CONNECTION)
                finally:
                    shared.claim_lock.release()
            return job
        with shared.claim_lock:  # one claim at a time; the others then find its jobs
            job = shared.take()
            if job is None and shared.more:
                self._refill(shared, summary, self.batch)
                job = shared.take()
        if job is not None:
            return job
        return False if shared.more else None

    def _refill(self, shared: Shared, summary: RunSummary, per_connection: int) -> None:
        """Claim the next batch (with the claim lock held)."""
        batch, elsewhere = self._claim(shared, summary, per_connection * self.cfg.smtp.connections)
        self.batch = min(self.batch * 2, CLAIM_MAX_PER_CONNECTION) if self.alone else CLAIM_PER_CONNECTION
        shared.more = bool(batch) or elsewhere > 0
        with shared.jobs_lock:
            shared.jobs.extend(batch)

    # ------------------------------------------------------------------ database work

    def _claim(self, shared: Shared, summary: RunSummary, limit: int) -> tuple[list[Job], int]:
        """Claim up to `limit` rows and make their jobs. On SQLite the transaction holds the
        process's write lock (the workers' records wait for it); the jobs' links, an HMAC
        each, are made after it is released."""
        now = utcnow()
        with self._writing(shared), self.db.session() as s:
            if self.cfg.smtp.max_per_hour:
                # The relay's hourly quota holds for every run together: never claim more
                # than what it has left (sent in the last hour and in flight anywhere count).
                serialise(s, "hourly-quota")  # one claim at a time reads and takes it
                left, frees_at = queue.hourly_quota_left(s, self.cfg.smtp.max_per_hour, now)
                if left <= 0:
                    self.quota_reset = frees_at.timestamp()
                    return [], 0
                limit = min(limit, left)
            claimed, skipped, elsewhere = queue.claim(
                s, summary.digest_id, self.owner, now, self.lease, limit
            )
            # Noticed at every claim, not only at a heartbeat: a run that joined since.
            self.alone = elsewhere == 0 and len(queue.runs(s, summary.digest_id, now)) <= 1
        with shared.counts_lock:
            summary.skipped += skipped
        jobs = [
            Job(
                c.delivery_id,
                c.attempts,
                Recipient(
                    c.subscriber_id,
                    c.email,
                    c.name,
                    unsubscribe_url(self.cfg, self.tokens, c.subscriber_id, c.nonce),
                    c.message_key,
                    preferences_url(self.cfg, self.tokens, c.subscriber_id, c.nonce),
                ),
                c.themes,
            )
            for c in claimed
        ]
        return jobs, elsewhere

    def _record(
        self,
        conn: FastPath,
        job: Job,
        result: Result,
        summary: RunSummary,
        shared: Shared,
        following: Job | None,
    ) -> bool | None:
        """One short commit per message, then the run's counts. With `following`, also
        its pre-send check: active or not, None when its row is no longer this run's
        (None without it). On SQLite the write alone holds the process's write lock (the
        check is a read, which WAL never makes wait: holding the lock for it made the other
        workers wait too); PostgreSQL takes concurrent writers, and serialising them there
        would make every worker wait for the others' commits, so the record and the check
        are one statement there."""
        outcome = result.outcome
        retry_at = None
        if outcome is Outcome.TEMPORARY:
            delays = self.cfg.delivery.retry_minutes
            retry_at = utcnow() + timedelta(minutes=delays[min(job.attempts, len(delays)) - 1])
        then = (following.recipient.subscriber_id, following.delivery_id) if following else None
        if self.serial_writes:
            with shared.write_lock:
                conn.record(job.delivery_id, self.owner, _STATUS_OF[outcome], result.reply, retry_at)
            active = conn.check(*then, self.owner) if then else None
        else:
            active = conn.record(
                job.delivery_id, self.owner, _STATUS_OF[outcome], result.reply, retry_at, then
            )
        with shared.counts_lock:
            self._count(result, summary)
        if outcome is Outcome.PERMANENT:
            with self._writing(shared):
                self._bounce(job.recipient.subscriber_id)
        return active

    def _writing(self, shared: Shared) -> contextlib.AbstractContextManager[Any]:
        """Around a database write of a worker: SQLite's one writer at a time."""
        return shared.write_lock if self.serial_writes else contextlib.nullcontext()

    def _observe(self, result: Result, summary: RunSummary, halt: threading.Event, shared: Shared) -> None:
        """What a reply says about the relay, as soon as it comes (not when it is recorded,
        a message later): a FATAL one, or `max_consecutive_errors` failures in a row across
        the connections, halt the run."""
        outcome = result.outcome
        with shared.counts_lock:
            if outcome is Outcome.SENT:
                shared.consecutive = 0
            elif outcome in (Outcome.TEMPORARY, Outcome.PERMANENT):
                shared.consecutive += 1
            if outcome is Outcome.FATAL:
                summary.stopped = summary.stopped or result.reply
                halt.set()
            limit = self.cfg.delivery.max_consecutive_errors
            if shared.consecutive >= limit and not summary.stopped:
                summary.stopped = (
                    f"paused after {shared.consecutive} consecutive failures; last reply: {result.reply}"
                )
                halt.set()

    def _count(self, result: Result, summary: RunSummary) -> None:
        """The run's counts, once a result is recorded (so a failed write leaves them true)."""
        outcome = result.outcome
        if outcome is Outcome.SENT:
            summary.sent += 1
        elif outcome is Outcome.SKIPPED:
            summary.skipped += 1
        elif outcome is Outcome.TEMPORARY:
            summary.retry += 1
        elif outcome is Outcome.PERMANENT:
            summary.failed += 1
        if self.on_progress:
            self.on_progress(summary, 1)

    def _bounce(self, subscriber_id: int) -> None:
        with self.db.session() as s:
            sub = s.get(Subscriber, subscriber_id)
            if sub is None:
                return
            if sub.hard_bounce(self.cfg.delivery.bounce_threshold):
                set_status(s, sub, SubscriberStatus.BOUNCED)

    def _requeue(self, delivery_ids: list[int]) -> None:
        with self.db.session() as s:
            queue.requeue(s, delivery_ids, utcnow())

    def _release(self, summary: RunSummary) -> None:
        with self.db.session() as s:
            released = queue.release(s, summary.digest_id, self.owner, summary.stopped, summary.quota_until)
        if released is not None:
            summary.counts, summary.finished = released
        if summary.finished:
            log.info("digest #%s finished: %s", summary.issue, summary.counts)


# What each outcome makes of the row. FATAL is not the recipient's fault: the row goes
# back in the queue, the attempt not counted.
_STATUS_OF = {
    Outcome.SENT: DeliveryStatus.SENT,
    Outcome.SKIPPED: DeliveryStatus.SKIPPED,
    Outcome.FATAL: DeliveryStatus.QUEUED,
    Outcome.TEMPORARY: DeliveryStatus.RETRY,
    Outcome.PERMANENT: DeliveryStatus.FAILED,
}


def deliver(
    db: Database,
    cfg: Config,
    digest_id: int,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
    ignore_backoff: bool = False,
) -> RunSummary:
    return Deliverer(db, cfg, stop, on_progress, ignore_backoff).run(digest_id)
