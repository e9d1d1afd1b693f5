"""delivery runs: any number of processes deliver one digest, each with a heartbeat

Replaces the lease on the whole digest (digests.lease_owner / lease_until) by a row per
run and the run's id on each row it claimed. Rows left `sending` by the old lease go back
to the queue on the next run's first claim (their claimed_by is NULL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 04:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mailer.models import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_runs",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_delivery_runs_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_runs")),
    )
    op.create_index(op.f("ix_delivery_runs_digest_id"), "delivery_runs", ["digest_id"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_by", sa.String(length=100), nullable=True))
    # Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+): batch mode would rebuild `digests`,
    # and dropping the old table cascades to its deliveries while foreign keys are on.
    op.drop_column("digests", "lease_owner")
    op.drop_column("digests", "lease_until")


def downgrade() -> None:
    op.add_column("digests", sa.Column("lease_until", UTCDateTime(), nullable=True))
    op.add_column("digests", sa.Column("lease_owner", sa.String(length=200), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("claimed_by")
    op.drop_index(op.f("ix_delivery_runs_digest_id"), table_name="delivery_runs")
    op.drop_table("delivery_runs")
