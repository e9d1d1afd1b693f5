"""feeds: RSS and Atom sources, the items each has shown, and an article's author

Adds `feeds` (one row per source, with its polling state and health), `feed_items` (every
item a feed has shown, by the hash of its key: the per-feed de-duplication record) and
`articles.author` (a feed item's byline).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 10:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("articles", sa.Column("author", sa.String(length=200), server_default="", nullable=False))
    op.create_table(
        "feeds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("listed_url", sa.String(length=2000), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("theme", sa.String(length=64), nullable=True),
        sa.Column("fetch_full_text", sa.Boolean(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("etag", sa.String(length=500), nullable=True),
        sa.Column("last_modified", sa.String(length=100), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=False),
        sa.Column("last_notes", sa.Text(), nullable=False),
        sa.Column("last_imported", sa.Integer(), nullable=False),
        sa.Column("items_imported", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.CheckConstraint("origin IN ('config', 'cli')", name=op.f("ck_feeds_origin")),
        sa.CheckConstraint("status IN ('active', 'gone')", name=op.f("ck_feeds_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feeds")),
        sa.UniqueConstraint("listed_url", name=op.f("uq_feeds_listed_url")),
    )
    op.create_index(op.f("ix_feeds_next_poll_at"), "feeds", ["next_poll_at"], unique=False)
    op.create_table(
        "feed_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("feed_id", sa.Integer(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("article_id", sa.Integer(), nullable=True),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["article_id"],
            ["articles.id"],
            name=op.f("fk_feed_items_article_id_articles"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["feed_id"], ["feeds.id"], name=op.f("fk_feed_items_feed_id_feeds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feed_items")),
        sa.UniqueConstraint("feed_id", "key_hash", name=op.f("uq_feed_items_feed_id")),
    )


def downgrade() -> None:
    op.drop_table("feed_items")
    op.drop_index(op.f("ix_feeds_next_poll_at"), table_name="feeds")
    op.drop_table("feeds")
    with op.batch_alter_table("articles", schema=None) as batch_op:
        batch_op.drop_column("author")
