"""The per-message half of the queue: what a worker runs for every message.

Each worker keeps its own raw DB-API connection for it, because SQLAlchemy's execution
layer tripled its cost. So the statements are written here once per dialect (the only SQL
in mailer that knows one): SQLite (`?`, a connection in autocommit mode, where each
statement is its own transaction, datetimes in SQLAlchemy's text format) and PostgreSQL
through psycopg (`%s`, autocommit, datetime objects). Both the pre-send check and the record check that
the row is still claimed by this run (queue.py says why that bounds what a replaced run
can still send).

On PostgreSQL a round trip to the server is what a message costs most, so recording one
message and checking the next are one statement (a data-modifying CTE): one round trip
and one commit per message. On SQLite they stay two statements in the process, and only
the write holds the process's write lock (engine.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mailer.delivery.queue import LostRun
from mailer.models import DeliveryStatus, SubscriberStatus, utcnow


class FastPath:
    """A worker's own raw DB-API connection. On PostgreSQL it is in autocommit: each
    statement is its own transaction, one round trip, where psycopg's implicit BEGIN and
    the COMMIT would make three."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.sqlite = dialect == "sqlite"
        if not self.sqlite:
            raw.driver_connection.autocommit = True  # set back in close(), for the pool
        self._record_sql = {k: self._sql(v) for k, v in _RECORD_SQL.items()}
        self._check_sql = self._sql(_CHECK_SQL)
        self._record_then_check_sql = {
            k: self._sql(_RECORD_THEN_CHECK.format(v)) for k, v in _RECORD_SQL.items()
        }

    def _sql(self, sql: str) -> str:
        return sql if self.sqlite else sql.replace("?", "%s")

    def _time(self, value: datetime) -> Any:
        naive = value.astimezone(UTC).replace(tzinfo=None)
        # SQLite has no datetime type: the text format UTCDateTime's impl stores.
        return naive.isoformat(" ", "microseconds") if self.sqlite else naive  # as strftime, 3x faster

    def record(
        self,
        delivery_id: int,
        owner: str,
        status: DeliveryStatus,
        reply: str,
        retry_at: datetime | None,
        then_check: tuple[int, int] | None = None,
    ) -> bool | None:
        """What became of one message, in its own short transaction: `sending` → `status`,
        on a row this run still holds (else LostRun: it was replaced). `queued` means the
        attempt did not count (the run stopped, not the recipient's fault).

        `then_check` (the next job's subscriber and delivery ids; PostgreSQL only, in the
        same statement): also check that one and return whether its subscriber is active,
        or None when its row is no longer this run's (None without it). On SQLite the
        caller checks apart with `check`, outside the process's write lock (engine.py)."""
        now = self._time(utcnow())
        args: tuple[Any, ...]
        if status is DeliveryStatus.SENT:
            args = (reply, now, now, delivery_id, owner)
        elif status is DeliveryStatus.RETRY:
            assert retry_at is not None
            args = (reply, self._time(retry_at), now, delivery_id, owner)
        else:
            args = (reply, now, delivery_id, owner)
        if then_check is not None:
            assert not self.sqlite, "SQLite checks apart (see the docstring)"
            row = self._one(self._record_then_check_sql[status], (*args, *then_check))
            if row[0] != 1:
                raise LostRun()
            return self._active(row[1:], owner)
        cur = self.raw.cursor()
        try:
            # Autocommit on both: the statement is its own transaction. On SQLite an UPDATE
            # takes the write lock before it reads (as BEGIN IMMEDIATE would), so it waits
            # for another process's writer in the busy handler, and it is one call into
            # SQLite instead of three, each of which gives up and takes back the GIL.
            cur.execute(self._record_sql[status], args)
            held = cur.rowcount == 1
        finally:
            cur.close()
        if not held:
            raise LostRun()
        return None

    def check(self, subscriber_id: int, delivery_id: int, owner: str) -> bool | None:
        """Is the subscriber active? None when the delivery row is no longer this run's."""
        return self._active(self._one(self._check_sql, (subscriber_id, delivery_id)), owner)

    def still_active(self, subscriber_id: int, delivery_id: int, owner: str) -> bool:
        """Just before each message: is the subscriber still active, and does this run still
        hold the row? A read that never waits for a writer (WAL; PostgreSQL's MVCC), so an
        unsubscribe counts even for an already-claimed row, and a run that stalled past its
        lease stops at its next message instead of sending rows another run has taken."""
        active = self.check(subscriber_id, delivery_id, owner)
        if active is None:
            raise LostRun()
        return active

    @staticmethod
    def _active(row: Any, owner: str) -> bool | None:
        """(subscriber status, the row's claimant) → active? None if the row is not ours."""
        if row is None or row[1] != owner:
            return None
        return bool(row[0] == SubscriberStatus.ACTIVE)

    def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        cur = self.raw.cursor()
        try:
            cur.execute(sql, args)
            return cur.fetchone()
        finally:
            cur.close()

    def close(self) -> None:
        driver = self.raw.driver_connection
        if not self.sqlite:
            if getattr(driver, "broken", False) or getattr(driver, "closed", False):
                # The server dropped it (a restart): discard it rather than have the pool
                # try to roll back on a dead socket and log a traceback.
                self.raw.invalidate()
            else:
                driver.autocommit = False  # as the pool's other users expect it
        self.raw.close()


_SET = "UPDATE deliveries SET {} WHERE id = ? AND claimed_by = ?"
_RECORD_SQL = {
    DeliveryStatus.SENT: _SET.format("status = 'sent', last_reply = ?, sent_at = ?, updated_at = ?"),
    DeliveryStatus.RETRY: _SET.format(
        "status = 'retry', last_reply = ?, next_attempt_at = ?, updated_at = ?"
    ),
    DeliveryStatus.QUEUED: _SET.format(
        "status = 'queued', claimed_by = NULL, attempts = attempts - 1, last_reply = ?, updated_at = ?"
    ),
    DeliveryStatus.FAILED: _SET.format("status = 'failed', last_reply = ?, updated_at = ?"),
    DeliveryStatus.SKIPPED: _SET.format("status = 'skipped', last_reply = ?, updated_at = ?"),
}
_CHECK_SQL = "SELECT (SELECT status FROM subscribers WHERE id = ?), claimed_by FROM deliveries WHERE id = ?"
# PostgreSQL only: one message's record and the next one's check in one statement. The
# CTE's UPDATE runs whether or not it is read; the outer SELECT sees the snapshot from
# before it, which is what the check wants (it reads another row). Scalar subqueries, so
# there is always exactly one row.
_RECORD_THEN_CHECK = (
    "WITH recorded AS ({} RETURNING id) SELECT (SELECT count(*) FROM recorded), "
    "(SELECT status FROM subscribers WHERE id = ?), (SELECT claimed_by FROM deliveries WHERE id = ?)"
)
