"""What the workers of one run share, one message at a time: the jobs, the editions'
templates, and the gate that records the previous message and checks the next.

Split out of engine.py, whose worker loop uses them; engine.py's docstring argues the
crash bounds they serve (a message is recorded before the next one's data goes out).
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailer.config import Config
from mailer.delivery import queue
from mailer.delivery.fastpath import FastPath
from mailer.delivery.pacing import ConnectionSlots
from mailer.message import MessageTemplate, Recipient
from mailer.models import Digest, DigestEdition
from mailer.smtp import Outcome, Result
from mailer.unsubscribe_outbox import pending_unsubscribes

if TYPE_CHECKING:
    from mailer.delivery.engine import Deliverer, RunSummary


@dataclass
class Job:
    delivery_id: int
    attempts: int
    recipient: Recipient
    edition: str = ""  # DigestEdition.themes; "" the whole digest


class Editions:
    """The message templates of one digest: the whole digest, and one per edition cut to
    some readers' themes (models.DigestEdition). An edition's row is read once."""

    def __init__(self, cfg: Config, digest: Digest, editions: list[DigestEdition]) -> None:
        self.whole = MessageTemplate(cfg, digest.id, digest.subject, digest.html, digest.text)
        self.by_themes = {
            e.themes: MessageTemplate(cfg, digest.id, e.subject, e.html, e.text) for e in editions
        }

    def of(self, job: Job) -> MessageTemplate:
        return self.by_themes.get(job.edition, self.whole)


class Shared:
    """What the workers of one run share: the claimed jobs, the write lock, the slots."""

    def __init__(self, connections: int) -> None:
        # SQLite's one writer at a time in this process (its busy handler sleeps whole
        # milliseconds); PostgreSQL's writes do not take it, but for the heartbeat.
        self.write_lock = threading.Lock()
        # One claim at a time, the others then find its jobs; taken before write_lock.
        self.claim_lock = threading.Lock()
        # Taking a job must not wait behind another worker's write or claim: the jobs
        # have a lock of their own, taken inside the others if several.
        self.jobs_lock = threading.Lock()
        # The run's counts (RunSummary, consecutive failures) and the progress callback.
        self.counts_lock = threading.Lock()
        self.jobs: collections.deque[Job] = collections.deque()
        self.more = True
        self.consecutive = 0  # failures in a row, across connections
        self.error: BaseException | None = None
        self.slots = ConnectionSlots(connections)

    def give_back(self, job: Job) -> None:
        with self.jobs_lock:
            self.jobs.appendleft(job)

    def take(self) -> Job | None:
        with self.jobs_lock:
            return self.jobs.popleft() if self.jobs else None

    def drained(self) -> bool:
        return not self.jobs and not self.more


class Gate:
    """SmtpConnection.send's `before_data` for one message: record the worker's previous
    message (`done`) and check this one (still active, still this run's), in one database
    round trip on PostgreSQL, while the relay answers this message's envelope. So the
    previous message is recorded before this one's data goes out (the crash bound), and
    the check stays the last thing before it (an unsubscribe counts). Runs once; called
    again after send() it only makes sure `done` was recorded."""

    def __init__(
        self,
        run: Deliverer,
        conn: FastPath,
        shared: Shared,
        halt: threading.Event,
        summary: RunSummary,
        done: tuple[Job, Result] | None,
        job: Job,
    ) -> None:
        self.run, self.conn, self.shared, self.halt, self.summary = run, conn, shared, halt, summary
        self.done = done  # None once recorded
        self.job = job
        self.ran = False
        # Still active? None: the database failed or the run was replaced (halted).
        self.active: bool | None = None
        self.answer: Result | None = None  # for SmtpConnection.send: None means "send it"

    def __call__(self) -> Result | None:
        if self.ran:
            return self.answer
        self.ran = True
        self.active = self.run._guard_db(self.shared, self.halt, self._round_trip)
        # An unsubscribe still in the outbox (the database was locked) counts too.
        if self.active and self.job.recipient.subscriber_id in pending_unsubscribes(self.run.cfg):
            self.active = False
        if self.active is None:
            self.answer = Result(Outcome.SKIPPED, "the run halted before sending")  # not recorded
        elif not self.active:
            self.answer = Result(Outcome.SKIPPED, "subscriber no longer active")
        return self.answer

    def _round_trip(self) -> bool:
        job = self.job
        if self.done is None:
            return self.conn.still_active(job.recipient.subscriber_id, job.delivery_id, self.run.owner)
        active = self.run._record(self.conn, *self.done, self.summary, self.shared, job)
        self.done = None
        if active is None:  # recorded, but this message's row is no longer this run's
            raise queue.LostRun()
        return active
