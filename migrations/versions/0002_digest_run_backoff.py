"""digest run back-off: last error, consecutive failed runs, next run time

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 23:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailer.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_error", sa.String(length=1000), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("run_failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("next_run_at", mailer.models.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digests", schema=None) as batch_op:
        batch_op.drop_column("next_run_at")
        batch_op.drop_column("run_failures")
        batch_op.drop_column("last_error")
