"""The delivery queue in the database: who may deliver a digest, and each row's state.

    queued ──claim──▶ sending ──250──▶ sent
      ▲                  │ ├──4xx / dropped twice──▶ retry (next_attempt_at) ──due──▶ sending
      │                  │ ├──5xx──▶ failed (subscriber's bounce count +1)
      └──fatal / stop────┘ └──subscriber no longer active──▶ skipped
    queued/retry ──subscriber unsubscribes──▶ skipped

This module owns that state machine (`DeliveryStatus`) and the lease on a digest row.

The lease is how runs keep apart, and why a dead run is always taken over:
* Its owner is a random id made per run (`new_owner`), never a pid: a process restarted in
  a container is PID 1 again, so a pid says nothing about whether a run is alive.
* It is taken by compare-and-set (`UPDATE … WHERE lease_owner IS NULL OR lease_until <
  now`, then count the rows), so of two runs that race for it exactly one wins, on any
  database.
* The holder renews it on a timer (`heartbeat`, every third of the lease) and checks
  the row count of that renewal too: a run that finds its lease taken stops at once. A run
  that died renews nothing, so its lease expires and the next run takes over within
  `delivery.lease_seconds`, whatever its pid or host was.
* Taking the lease puts rows left in `sending` back to `queued`: nobody holds the digest,
  so those rows belong to a run that is gone. Of them, only the ones its server accepted
  but it never recorded were really delivered, at most one per connection (see engine).
Hosts are assumed to keep their clocks within a few seconds of each other (NTP): the
lease's expiry is written by one host and read by another.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from mailer import digest as digests
from mailer.errors import MailerError, database_problem, is_dbapi_error
from mailer.message import new_message_key
from mailer.models import DELIVERY_PENDING, Delivery, Digest, Subscriber, utcnow

# How long a run waits for a database another process keeps locked.
LOCK_PATIENCE = 300.0
# A digest whose run stopped on a relay-wide problem is retried after these delays.
RUN_BACKOFF_MINUTES = [1, 2, 5, 10, 30]


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"


def new_owner() -> str:
    """A run's identity: host and pid for people to read, the random part for uniqueness."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Holder:
    """Who holds a digest's lease, and until when (unless it renews it)."""

    owner: str
    until: datetime | None


def acquire(s: Session, digest_id: int, owner: str, now: datetime, lease: timedelta) -> Holder | None:
    """Take the digest's lease for `owner`. None when taken; else who holds it."""
    taken = s.execute(
        update(Digest)
        .where(
            Digest.id == digest_id,
            or_(Digest.lease_owner.is_(None), Digest.lease_until.is_(None), Digest.lease_until < now),
        )
        .values(lease_owner=owner, lease_until=now + lease)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:
        row = s.execute(select(Digest.lease_owner, Digest.lease_until).where(Digest.id == digest_id)).one()
        return Holder(row[0] or "", row[1])
    # Nobody held it: rows in `sending` belong to a run that is gone.
    s.execute(
        update(Delivery)
        .where(Delivery.digest_id == digest_id, Delivery.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.QUEUED, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return None


def heartbeat(s: Session, digest_id: int, owner: str, now: datetime, lease: timedelta) -> bool:
    """Renew the lease; False if `owner` no longer holds it."""
    return (
        s.execute(
            update(Digest)
            .where(Digest.id == digest_id, Digest.lease_owner == owner)
            .values(lease_until=now + lease)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )


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


def claim(
    s: Session, digest_id: int, owner: str, now: datetime, lease: timedelta, limit: int
) -> tuple[list[Claimed], int]:
    """Claim up to `limit` due rows (set them `sending`). Rows of readers who left are
    marked skipped on the way. Returns the claimed rows and how many were skipped.
    Raises LostLease when `owner` no longer holds the digest."""
    if not heartbeat(s, digest_id, owner, now, lease):
        raise LostLease()
    due = or_(
        Delivery.status == DeliveryStatus.QUEUED,
        and_(Delivery.status == DeliveryStatus.RETRY, Delivery.next_attempt_at <= now),
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
            Delivery.message_key,
        )
        .join(Subscriber, Subscriber.id == Delivery.subscriber_id)
        .where(Delivery.digest_id == digest_id, due)
        .order_by(Delivery.id)
        .limit(limit)
    ).all()
    jobs: list[Claimed] = []
    inactive: list[int] = []
    new_keys: list[dict[str, Any]] = []
    for delivery_id, attempts, sub_id, email, name, status, nonce, key in rows:
        if status != "active":
            inactive.append(delivery_id)
            continue
        if key is None:  # first claim: the key is stored before any message can go out
            key = new_message_key()
            new_keys.append({"row": delivery_id, "key": key})
        jobs.append(Claimed(delivery_id, attempts + 1, sub_id, email, name, nonce, key))
    if new_keys:
        # One executemany on the connection (the ORM would take a list of rows for a bulk
        # update by primary key, which cannot keep the IS NULL guard).
        s.connection().execute(
            update(Delivery)
            .where(Delivery.id == bindparam("row"), Delivery.message_key.is_(None))
            .values(message_key=bindparam("key")),
            new_keys,
        )
    if inactive:
        _set(
            s,
            inactive,
            status=DeliveryStatus.SKIPPED,
            last_reply="subscriber no longer active",
            updated_at=now,
        )
    if jobs:
        _set(
            s,
            [j.delivery_id for j in jobs],
            status=DeliveryStatus.SENDING,
            attempts=Delivery.attempts + 1,
            updated_at=now,
        )
    return jobs, len(inactive)


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
        .values(status=DeliveryStatus.QUEUED, attempts=Delivery.attempts - 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )


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
    """The run ends: give the lease back and note how the run went (`stopped`: why a
    relay-wide problem stopped it; the next run then waits a growing back-off). Finishes
    the digest when nothing is pending. Returns its counts and whether it finished, or
    None when `owner` no longer held it."""
    now = utcnow()
    d = s.get(Digest, digest_id)
    if d is None or d.lease_owner != owner:
        return None
    by_status = counts(s, digest_id)
    d.lease_owner = None
    d.lease_until = None
    if stopped:
        d.run_failures += 1
        d.last_error = stopped[:1000]
        wait = RUN_BACKOFF_MINUTES[min(d.run_failures, len(RUN_BACKOFF_MINUTES)) - 1]
        d.next_run_at = now + timedelta(minutes=wait)
    else:
        d.run_failures = 0
        d.last_error = ""
        d.next_run_at = resume_at  # e.g. when the hourly quota frees up: not a failure
    finished = not any(by_status.get(st, 0) for st in DELIVERY_PENDING)
    if finished:
        digests.finish(s, d, now, delivered=by_status.get(DeliveryStatus.SENT, 0) > 0)
    return by_status, finished


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


class LostLease(MailerError):
    """Another run took the digest over (this one stalled past its lease)."""

    def __init__(self) -> None:
        super().__init__("another run took over this digest's delivery (this one stalled past its lease)")


# ---------------------------------------------------------------- the per-message fast path


class FastPath:
    """A worker's own raw DB-API connection for the two statements it runs per message.
    SQLAlchemy's execution layer tripled their cost, so they are written here once per
    dialect: SQLite (`?`, an explicit BEGIN IMMEDIATE on a connection in autocommit mode,
    datetimes in SQLAlchemy's text format) and PostgreSQL through psycopg (`%s`, implicit
    transactions ended by commit, datetime objects)."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.sqlite = dialect == "sqlite"
        self._record_sql = {k: self._sql(v) for k, v in _RECORD_SQL.items()}
        self._check_sql = self._sql(_CHECK_SQL)

    def _sql(self, sql: str) -> str:
        return sql if self.sqlite else sql.replace("?", "%s")

    def _time(self, value: datetime) -> Any:
        naive = value.astimezone(UTC).replace(tzinfo=None)
        # SQLite has no datetime type: the text format UTCDateTime's impl stores.
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else naive

    def record(self, delivery_id: int, status: DeliveryStatus, reply: str, retry_at: datetime | None) -> None:
        """What became of one message, in its own short transaction: `sending` → `status`.
        `queued` means the attempt did not count (the run stopped, not the recipient's fault)."""
        now = self._time(utcnow())
        args: tuple[Any, ...]
        if status is DeliveryStatus.SENT:
            args = (reply, now, now, delivery_id)
        elif status is DeliveryStatus.RETRY:
            assert retry_at is not None
            args = (reply, self._time(retry_at), now, delivery_id)
        else:
            args = (reply, now, delivery_id)
        cur = self.raw.cursor()
        try:
            if self.sqlite:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(self._record_sql[status], args)
            self._commit(cur)
        except BaseException:
            with contextlib.suppress(Exception):  # BEGIN itself may be what failed
                self._rollback(cur)
            raise
        finally:
            cur.close()

    def still_active(self, subscriber_id: int, digest_id: int, owner: str) -> bool:
        """Just before each message: is the subscriber still active, and does this run still
        hold the digest? A read that never waits for a writer (WAL; PostgreSQL's MVCC), so an
        unsubscribe counts even for an already-claimed row, and a run that stalled past its
        lease stops at its next message instead of sending a batch another run has taken."""
        cur = self.raw.cursor()
        try:
            cur.execute(self._check_sql, (subscriber_id, digest_id))
            row = cur.fetchone()
            if not self.sqlite:
                self.raw.commit()  # end the read's implicit transaction
        finally:
            cur.close()
        if row is None or row[1] != owner:
            raise LostLease()
        return bool(row[0] == "active")

    def _commit(self, cur: Any) -> None:
        if self.sqlite:
            cur.execute("COMMIT")
        else:
            self.raw.commit()

    def _rollback(self, cur: Any) -> None:
        if self.sqlite:
            cur.execute("ROLLBACK")
        else:
            self.raw.rollback()

    def close(self) -> None:
        self.raw.close()


_SET = "UPDATE deliveries SET {} WHERE id = ?"
_RECORD_SQL = {
    DeliveryStatus.SENT: _SET.format("status = 'sent', last_reply = ?, sent_at = ?, updated_at = ?"),
    DeliveryStatus.RETRY: _SET.format(
        "status = 'retry', last_reply = ?, next_attempt_at = ?, updated_at = ?"
    ),
    DeliveryStatus.QUEUED: _SET.format(
        "status = 'queued', attempts = attempts - 1, last_reply = ?, updated_at = ?"
    ),
    DeliveryStatus.FAILED: _SET.format("status = 'failed', last_reply = ?, updated_at = ?"),
    DeliveryStatus.SKIPPED: _SET.format("status = 'skipped', last_reply = ?, updated_at = ?"),
}
_CHECK_SQL = "SELECT (SELECT status FROM subscribers WHERE id = ?), lease_owner FROM digests WHERE id = ?"
