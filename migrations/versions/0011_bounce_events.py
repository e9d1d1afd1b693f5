"""bounces and complaints: what comes back after delivery

Adds the `complained` subscriber status (its CHECK widened) and `bounce_events`, every
bounce or complaint received, once per (source, event_id). On SQLite, batch mode rebuilds
`subscribers` (Database.migrate turns foreign keys off around a migration, so the rebuild
cascades to nothing) and the expression index on lower(email) is made again.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 10:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("pending", "active", "unsubscribed", "bounced")
AFTER = (*BEFORE, "complained")


def _check(values: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{v}'" for v in values))


def _status_check(values: tuple[str, ...]) -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_subscribers_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_subscribers_status"), _check(values))
    # SQLite's rebuild of `subscribers` drops the index on an expression (see 0008).
    op.execute("CREATE UNIQUE INDEX IF NOT EXISTS uq_subscribers_email_lower ON subscribers (lower(email))")


def upgrade() -> None:
    _status_check(AFTER)
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("event_id", sa.String(length=500), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("diagnostic", sa.String(length=500), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('hard', 'soft', 'complaint')", name=op.f("ck_bounce_events_kind")),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            ["deliveries.id"],
            name=op.f("fk_bounce_events_delivery_id_deliveries"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_bounce_events_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
        sa.UniqueConstraint("source", "event_id", name=op.f("uq_bounce_events_source")),
    )
    op.create_index(op.f("ix_bounce_events_delivery_id"), "bounce_events", ["delivery_id"], unique=False)
    op.create_index(
        "ix_bounce_events_subscriber", "bounce_events", ["subscriber_id", "received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_bounce_events_subscriber", table_name="bounce_events")
    op.drop_index(op.f("ix_bounce_events_delivery_id"), table_name="bounce_events")
    op.drop_table("bounce_events")
    op.execute("UPDATE subscribers SET status = 'unsubscribed' WHERE status = 'complained'")
    _status_check(BEFORE)
