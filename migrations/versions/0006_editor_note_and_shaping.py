"""editor's note per issue

`editor_notes` holds the note for the next issue (no digest) and the notes of built
issues (one per digest).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from mailer.models import UTCDateTime

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "editor_notes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("markdown", sa.Text(), nullable=False),
        sa.Column("set_at", UTCDateTime(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_editor_notes_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_editor_notes")),
        sa.UniqueConstraint("digest_id", name=op.f("uq_editor_notes_digest_id")),
    )


def downgrade() -> None:
    op.drop_table("editor_notes")
