"""status checks: each state machine's statuses, and nothing else, in the database

Adds a CHECK constraint on subscribers.status, digests.status and deliveries.status with
the values of models.SubscriberStatus, DigestStatus and DeliveryStatus (as of this
revision: a later status needs a migration that widens its check). On SQLite, batch mode
rebuilds each table; Database.migrate turns foreign keys off around a migration, so
rebuilding `subscribers` or `digests` does not cascade to the rows that refer to them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 05:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = {
    "subscribers": ("active", "unsubscribed", "bounced"),
    "digests": ("sending", "sent", "skipped", "failed"),
    "deliveries": ("queued", "sending", "sent", "retry", "failed", "skipped"),
}


def upgrade() -> None:
    for table, values in STATUSES.items():
        allowed = ", ".join(f"'{v}'" for v in values)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_check_constraint(op.f(f"ck_{table}_status"), f"status IN ({allowed})")
    _keep_email_index()


def _keep_email_index() -> None:
    """SQLite's rebuild of `subscribers` cannot carry an index on an expression over (it
    is not reflected): put back the one that keeps addresses unique whatever their case."""
    op.execute("CREATE UNIQUE INDEX IF NOT EXISTS uq_subscribers_email_lower ON subscribers (lower(email))")


def downgrade() -> None:
    for table in STATUSES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(op.f(f"ck_{table}_status"), type_="check")
    _keep_email_index()
