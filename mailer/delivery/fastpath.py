"""The per-message half of the queue: two statements a worker runs for every message.

Each worker keeps its own raw DB-API connection for them, because SQLAlchemy's execution
layer tripled their cost. So they are written here once per dialect (the only SQL in
mailer that knows one): SQLite (`?`, an explicit BEGIN IMMEDIATE on a connection in
autocommit mode, datetimes in SQLAlchemy's text format) and PostgreSQL through psycopg
(`%s`, implicit transactions ended by commit, datetime objects). Both statements check
that the row is still claimed by this run (queue.py says why that bounds what a replaced
run can still send).
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any

from mailer.delivery.queue import LostRun
from mailer.models import DeliveryStatus, SubscriberStatus, utcnow


class FastPath:
    """A worker's own raw DB-API connection for the two statements it runs per message.
    SQLAlchemy's execution layer tripled their cost, so they are written here once per
    dialect: SQLite (`?`, an explicit BEGIN IMMEDIATE on a connection in autocommit mode,
    datetimes in SQLAlchemy's text format) and PostgreSQL through psycopg (`%s`, datetime
    objects, and autocommit: each statement is its own transaction, one round trip, where
    psycopg's implicit BEGIN and the COMMIT would make three)."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self.raw = raw
        self.sqlite = dialect == "sqlite"
        if not self.sqlite:
            raw.driver_connection.autocommit = True  # set back in close(), for the pool
        self._record_sql = {k: self._sql(v) for k, v in _RECORD_SQL.items()}
        self._check_sql = self._sql(_CHECK_SQL)

    def _sql(self, sql: str) -> str:
        return sql if self.sqlite else sql.replace("?", "%s")

    def _time(self, value: datetime) -> Any:
        naive = value.astimezone(UTC).replace(tzinfo=None)
        # SQLite has no datetime type: the text format UTCDateTime's impl stores.
        return naive.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else naive

    def record(
        self, delivery_id: int, owner: str, status: DeliveryStatus, reply: str, retry_at: datetime | None
    ) -> None:
        """What became of one message, in its own short transaction: `sending` → `status`,
        on a row this run still holds (else LostRun: it was replaced). `queued` means the
        attempt did not count (the run stopped, not the recipient's fault)."""
        now = self._time(utcnow())
        args: tuple[Any, ...]
        if status is DeliveryStatus.SENT:
            args = (reply, now, now, delivery_id, owner)
        elif status is DeliveryStatus.RETRY:
            assert retry_at is not None
            args = (reply, self._time(retry_at), now, delivery_id, owner)
        else:
            args = (reply, now, delivery_id, owner)
        cur = self.raw.cursor()
        try:
            if not self.sqlite:  # autocommit: the statement is its own transaction
                cur.execute(self._record_sql[status], args)
                held = cur.rowcount == 1
            else:
                cur.execute("BEGIN IMMEDIATE")
                try:
                    cur.execute(self._record_sql[status], args)
                    held = cur.rowcount == 1
                    cur.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):  # BEGIN itself may be what failed
                        cur.execute("ROLLBACK")
                    raise
        finally:
            cur.close()
        if not held:
            raise LostRun()

    def still_active(self, subscriber_id: int, delivery_id: int, owner: str) -> bool:
        """Just before each message: is the subscriber still active, and does this run still
        hold the row? A read that never waits for a writer (WAL; PostgreSQL's MVCC), so an
        unsubscribe counts even for an already-claimed row, and a run that stalled past its
        lease stops at its next message instead of sending rows another run has taken."""
        cur = self.raw.cursor()
        try:
            cur.execute(self._check_sql, (subscriber_id, delivery_id))
            row = cur.fetchone()
        finally:
            cur.close()
        if row is None or row[1] != owner:
            raise LostRun()
        return bool(row[0] == SubscriberStatus.ACTIVE)

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
