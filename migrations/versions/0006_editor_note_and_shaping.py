"""editor's note per issue; pinned, held and summarised articles

`editor_notes` holds the note for the next issue (no digest) and the notes of built
issues (one per digest). Articles get pinned_at, held_at and summary; existing articles
are neither pinned nor held and have no summary, so every digest built after the upgrade
holds what it would have held before.

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
    # Plain ADD COLUMN (no batch mode): rebuilding `articles` is neither needed nor wanted.
    op.add_column("articles", sa.Column("pinned_at", UTCDateTime(), nullable=True))
    op.add_column("articles", sa.Column("held_at", UTCDateTime(), nullable=True))
    op.add_column("articles", sa.Column("summary", sa.Text(), server_default="", nullable=False))


def downgrade() -> None:
    op.drop_column("articles", "summary")
    op.drop_column("articles", "held_at")
    op.drop_column("articles", "pinned_at")
    op.drop_table("editor_notes")
