"""delivery message_key: the random part of a delivery's Message-ID

Rows that were attempted before this revision already went out with the old, derived
Message-ID (<digest-N.sub-M@domain>): they get "" so that a retry repeats that ID. The
others stay NULL and get a random key when they are first claimed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("message_key", sa.String(length=32), nullable=True))
    op.execute("UPDATE deliveries SET message_key = '' WHERE attempts > 0")


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("message_key")
