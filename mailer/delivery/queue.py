"""The delivery queue in the database: who may deliver a digest, and each row's state.

    queued ──claim──▶ sending ──250──▶ sent
      ▲                  │ ├──4xx / dropped twice──▶ retry (next_attempt_at) ──due──▶ sending
      │                  │ ├──5xx──▶ failed (subscriber's bounce count +1)
      └──fatal / stop────┘ └──subscriber no longer active──▶ skipped
    queued/retry ──subscriber unsubscribes──▶ skipped

This module owns that state machine (models.DeliveryStatus) and the runs that work on it.

Any number of runs (processes, on any hosts) deliver one digest at the same time, and a
run that dies is always replaced. Why that holds:
* A claim takes due rows and marks them `sending` with the run's id (`claimed_by`) in one
  transaction. On PostgreSQL the rows are selected `FOR UPDATE SKIP LOCKED`, so concurrent
  claims take disjoint rows without waiting for each other; on SQLite every write
  transaction is `BEGIN IMMEDIATE`, so claims are serialised. Either way no row is claimed
  by two runs.
* A run's identity is a random id made per run (`new_owner`), never a pid: a process
  restarted in a container is PID 1 again, so a pid says nothing about who is alive.
* Each run has a row in `delivery_runs` whose `expires_at` it renews every third of its
  lease (`heartbeat`, which checks the row count: a run whose row is gone was declared
  dead and stops at once). A run that died renews nothing; the next claim by any run
  deletes expired runs and puts the rows they had `sending` back to `queued` (`reclaim`).
  Of those, only the ones its server accepted but it never recorded were really
  delivered, at most one per connection (see engine.py).
* Before each message a worker checks that its row is still claimed by its run, and a
  result is recorded only on a row its run still holds (fastpath.py): a run that stalled
  past its lease and was replaced sends at most the messages already in flight.
* The digest is finished by whichever run finds nothing pending, with the digest row
  locked (`release`), so it is finished once.
Hosts are assumed to keep their clocks within a few seconds of each other (NTP): a run's
expiry is written by one host and read by another.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from mailer import digest as digests
from mailer.errors import MailerError, database_problem, is_dbapi_error
from mailer.models import (
    DELIVERY_PENDING,
    Delivery,
    DeliveryRun,
    DeliveryStatus,
    Digest,
    DigestStatus,
    Notice,
    NoticeStatus,
    Subscriber,
    SubscriberStatus,
    utcnow,
)

# How long a run waits for a database another process keeps locked.
LOCK_PATIENCE = 300.0
# A digest whose run stopped on a relay-wide problem is retried after these delays.
RUN_BACKOFF_MINUTES = [1, 2, 5, 10, 30]


def new_owner() -> str:
    """A run's identity: host and pid for people to read, the random part for uniqueness."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Run:
    """A run working on a digest, and until when it is taken for alive."""

    owner: str
    expires_at: datetime


def join(s: Session, digest_id: int, owner: str, now: datetime, lease: timedelta) -> None:
    """Register a run on the digest (it may then claim rows)."""
    s.add(DeliveryRun(id=owner, digest_id=digest_id, started_at=now, expires_at=now + lease))
    s.flush()


def heartbeat(s: Session, owner: str, now: datetime, lease: timedelta) -> bool:
    """Renew the run's expiry; False if the run was declared dead meanwhile."""
    return (
        s.execute(
            update(DeliveryRun)
            .where(DeliveryRun.id == owner)
            .values(expires_at=now + lease)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


def reclaim(s: Session, digest_id: int, now: datetime) -> None:
    """Runs that stopped renewing are gone: put back what they had in flight."""
    s.execute(
        delete(DeliveryRun).where(DeliveryRun.expires_at < now).execution_options(synchronize_session=False)
    )
    alive = select(DeliveryRun.id).where(DeliveryRun.digest_id == digest_id)
    s.execute(
        update(Delivery)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.status == DeliveryStatus.SENDING,
            or_(Delivery.claimed_by.is_(None), Delivery.claimed_by.not_in(alive)),
        )
        .values(status=DeliveryStatus.QUEUED, claimed_by=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def runs(s: Session, digest_id: int, now: datetime) -> list[Run]:
    """The runs alive on a digest now."""
    rows = s.execute(
        select(DeliveryRun.id, DeliveryRun.expires_at)
        .where(DeliveryRun.digest_id == digest_id, DeliveryRun.expires_at >= now)
        .order_by(DeliveryRun.started_at)
    )
    return [Run(owner, until) for owner, until in rows]


@dataclass
class Claimed:
    delivery_id: int
    attempts: int
    subscriber_id: int
    email: str
    name: str
    nonce: str
    # The row's Message-ID key: stored when the row is first claimed, then always the same.
    message_key: str
    themes: str = ""  # the reader's edition (DigestEdition.themes); "" the whole digest


def claim(
    s: Session, digest_id: int, owner: str, now: datetime, lease: timedelta, limit: int
) -> tuple[list[Claimed], int, int]:
    """Claim up to `limit` due rows for `owner` (set them `sending`). Rows of readers who
    left are marked skipped on the way. Returns the claimed rows, how many were skipped,
    and how many rows other live runs have in flight. Raises LostRun when `owner` was
    declared dead."""
    if not heartbeat(s, owner, now, lease):
        raise LostRun()
    reclaim(s, digest_id, now)
    due = or_(
        Delivery.status == DeliveryStatus.QUEUED,
        and_(Delivery.status == DeliveryStatus.RETRY, Delivery.next_attempt_at <= now),
    )
    chosen = (
        select(Delivery.id)
        .where(Delivery.digest_id == digest_id, due)
        .order_by(Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it
    )
    # One statement takes the rows and, on a row's first claim, stores its Message-ID key
    # (before any message can go out): a select, one update per new key and a bulk update
    # made claiming cost more than sending on PostgreSQL.
    taken = s.execute(
        update(Delivery)
        .where(Delivery.id.in_(chosen.scalar_subquery()))
        .values(
            status=DeliveryStatus.SENDING,
            claimed_by=owner,
            attempts=Delivery.attempts + 1,
            updated_at=now,
            message_key=func.coalesce(Delivery.message_key, RandomKey()),
        )
        .returning(
            Delivery.id, Delivery.attempts, Delivery.subscriber_id, Delivery.message_key, Delivery.themes
        )
        .execution_options(synchronize_session=False)
    ).all()
    readers = {
        row.id: row
        for row in s.execute(
            select(
                Subscriber.id, Subscriber.email, Subscriber.name, Subscriber.status, Subscriber.token_nonce
            ).where(Subscriber.id.in_({t.subscriber_id for t in taken}))
        )
    }
    jobs: list[Claimed] = []
    inactive: list[int] = []
    for delivery_id, attempts, sub_id, key, themes in sorted(taken):
        reader = readers[sub_id]
        if reader.status != SubscriberStatus.ACTIVE:
            inactive.append(delivery_id)
            continue
        jobs.append(
            Claimed(delivery_id, attempts, sub_id, reader.email, reader.name, reader.token_nonce, key, themes)
        )
    if inactive:
        # Never handed to anyone: the claim is undone, the attempt not counted.
        _set(
            s,
            inactive,
            status=DeliveryStatus.SKIPPED,
            claimed_by=None,
            attempts=Delivery.attempts - 1,
            last_reply="subscriber no longer active",
            updated_at=now,
        )
    elsewhere = s.scalar(
        select(func.count()).where(
            Delivery.digest_id == digest_id,
            Delivery.status == DeliveryStatus.SENDING,
            Delivery.claimed_by != owner,
        )
    )
    return jobs, len(inactive), int(elsewhere or 0)


class RandomKey(FunctionElement[str]):
    """A new Message-ID key made by the database, as message.new_message_key makes one in
    Python: 32 lower-case hex digits from the database's own secure random source."""

    type = String()
    inherit_cache = True


@compiles(RandomKey, "sqlite")
def _random_key_sqlite(element: RandomKey, compiler: Any, **kw: Any) -> str:
    return "lower(hex(randomblob(16)))"


@compiles(RandomKey, "postgresql")
def _random_key_postgresql(element: RandomKey, compiler: Any, **kw: Any) -> str:
    # gen_random_uuid() is built in since PostgreSQL 13 (pgcrypto's random bytes are an
    # extension): 122 random bits, from the server's strong random source.
    return "replace(gen_random_uuid()::text, '-', '')"


def _set(s: Session, ids: list[int], **values: Any) -> None:
    s.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def requeue(s: Session, delivery_ids: list[int], now: datetime) -> None:
    """Claimed rows never handed to the server go back, their attempt not counted."""
    s.execute(
        update(Delivery)
        .where(Delivery.id.in_(delivery_ids), Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.QUEUED, claimed_by=None, attempts=Delivery.attempts - 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )


def requeue_failed(s: Session, digest_id: int) -> int:
    """Failed rows of still-active subscribers back to `queued`; how many."""
    active = select(Subscriber.id).where(Subscriber.status == SubscriberStatus.ACTIVE)
    n = s.execute(
        update(Delivery)
        .where(
            Delivery.digest_id == digest_id,
            Delivery.status == DeliveryStatus.FAILED,
            Delivery.subscriber_id.in_(active),
        )
        .values(status=DeliveryStatus.QUEUED, next_attempt_at=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    return int(n or 0)


def give_up(s: Session, digest_id: int, hours: float, now: datetime) -> None:
    s.execute(
        update(Delivery)
        .where(Delivery.digest_id == digest_id, Delivery.status.in_(DELIVERY_PENDING))
        .values(status=DeliveryStatus.FAILED, last_reply=f"gave up after {hours:g} hours", updated_at=now)
        .execution_options(synchronize_session=False)
    )


def release(
    s: Session, digest_id: int, owner: str, stopped: str, resume_at: datetime | None
) -> tuple[dict[str, int], bool] | None:
    """The run ends: it leaves the digest and notes how it went (`stopped`: why a
    relay-wide problem stopped it; the next run then waits a growing back-off). The digest
    row is locked first (PostgreSQL; SQLite's write lock already serialises this), so of
    runs ending at once exactly one finishes it when nothing is pending. Returns the
    digest's counts and whether it is finished; None when the digest is gone."""
    now = utcnow()
    d = s.get(Digest, digest_id, with_for_update=True)
    s.execute(delete(DeliveryRun).where(DeliveryRun.id == owner).execution_options(synchronize_session=False))
    if d is None:
        return None
    by_status = counts(s, digest_id)
    if stopped:
        d.run_failures += 1
        d.last_error = stopped[:1000]
        wait = RUN_BACKOFF_MINUTES[min(d.run_failures, len(RUN_BACKOFF_MINUTES)) - 1]
        d.next_run_at = now + timedelta(minutes=wait)
    else:
        d.run_failures = 0
        d.last_error = ""
        d.next_run_at = resume_at  # e.g. when the hourly quota frees up: not a failure
    pending = any(by_status.get(st, 0) for st in DELIVERY_PENDING)
    if d.status == DigestStatus.SENDING and not pending:
        digests.finish(s, d, now, delivered=by_status.get(DeliveryStatus.SENT, 0) > 0)
    return by_status, d.status != DigestStatus.SENDING


def hourly_quota_left(s: Session, per_hour: int, now: datetime) -> tuple[int, datetime]:
    """How many more messages the relay's hourly quota allows now, counting every run
    (sent in the last hour, and in flight), and when the oldest of those frees up."""
    since = now - timedelta(hours=1)
    recent, in_transit = Delivery.sent_at > since, Delivery.status == DeliveryStatus.SENDING
    # One statement, so one snapshot. In two, a row another worker records between them
    # (still `sending` when the first counts what was sent, already `sent` when the second
    # counts what is in flight) would be counted by neither, and one message too many
    # claimed.
    sent, oldest, in_flight = s.execute(
        select(
            func.count().filter(recent),
            func.min(Delivery.sent_at).filter(recent),
            func.count().filter(in_transit),
        ).where(recent | in_transit)
    ).one()
    # Notices (sign-up confirmations) go through the same relay and count the same way.
    notices = s.scalar(
        select(func.count()).where((Notice.sent_at > since) | (Notice.status == NoticeStatus.SENDING))
    )
    sent += int(notices or 0)
    frees_at = (oldest or now) + timedelta(hours=1)
    return per_hour - int(sent or 0) - int(in_flight), frees_at


def counts(s: Session, digest_id: int) -> dict[str, int]:
    rows = s.execute(
        select(Delivery.status, func.count()).where(Delivery.digest_id == digest_id).group_by(Delivery.status)
    )
    return dict(rows.all())


def patiently(db_url: str, stop: threading.Event, work: Callable[..., Any], *args: Any) -> Any:
    """Run `work`, waiting out a database that another process keeps locked (up to
    LOCK_PATIENCE, or until `stop`); any other database error becomes one line
    (MailerError) naming the database and the cause."""
    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            return work(*args)
        except MailerError:
            raise
        except Exception as exc:
            if not (isinstance(exc, SQLAlchemyError) or is_dbapi_error(exc)):
                raise
            if _locked(exc) and time.monotonic() < deadline and not stop.is_set():
                time.sleep(0.2)
                continue
            raise MailerError(database_problem(exc, db_url)) from None


def _locked(exc: BaseException) -> bool:
    """SQLite's "database is locked" / "database table is locked": another process holds
    the write lock, which it will release; every other database error is final."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    return "locked" in text or "busy" in text


class LostRun(MailerError):
    """This run stalled past its lease and was declared dead: others took its rows."""

    def __init__(self) -> None:
        super().__init__("this run stalled past its lease and was replaced; its rows went back to the queue")
