"""the reader's side: pending readers, consent, notices, themes per reader

Adds the `pending` subscriber status (its CHECK widened), the consent record of a web
sign-up and the reader's chosen themes on `subscribers`, the `notices` queue (mails to
one reader outside the digest: a sign-up's confirmation), `signup_requests` (what the
per-IP limit counts), and the editions of a digest cut to some readers' themes
(`digest_editions`, with `deliveries.themes` naming each reader's). On SQLite, batch
mode rebuilds `subscribers`; Database.migrate turns foreign keys off around a migration,
so the rebuild cascades to nothing.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("active", "unsubscribed", "bounced")
AFTER = ("pending", *BEFORE)


def _check(values: tuple[str, ...]) -> str:
    return "status IN ({})".format(", ".join(f"'{v}'" for v in values))


def upgrade() -> None:
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_subscribers_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_subscribers_status"), _check(AFTER))
        batch_op.add_column(sa.Column("signup_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("signup_ip", sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column("confirmed_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("confirm_ip", sa.String(length=45), nullable=True))
        batch_op.add_column(sa.Column("themes", sa.Text(), server_default="", nullable=False))
    _keep_email_index()
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_at", sa.DateTime(), nullable=True),
        sa.Column("last_reply", sa.String(length=1000), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'sending', 'sent', 'retry', 'failed')", name=op.f("ck_notices_status")
        ),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["subscribers.id"],
            name=op.f("fk_notices_subscriber_id_subscribers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
    )
    op.create_index("ix_notices_status", "notices", ["status", "next_attempt_at"])
    op.create_index(op.f("ix_notices_subscriber_id"), "notices", ["subscriber_id"])
    op.create_index(op.f("ix_notices_created_at"), "notices", ["created_at"])
    op.create_index(op.f("ix_notices_sent_at"), "notices", ["sent_at"])
    op.create_table(
        "signup_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ip", sa.String(length=45), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signup_requests")),
    )
    op.create_index("ix_signup_requests_ip_at", "signup_requests", ["ip", "at"])
    op.add_column("deliveries", sa.Column("themes", sa.Text(), server_default="", nullable=False))
    op.create_table(
        "digest_editions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest_id", sa.Integer(), nullable=False),
        sa.Column("themes", sa.Text(), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("html", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest_id"],
            ["digests.id"],
            name=op.f("fk_digest_editions_digest_id_digests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digest_editions")),
        sa.UniqueConstraint("digest_id", "themes", name=op.f("uq_digest_editions_digest_id")),
    )


def _keep_email_index() -> None:
    """SQLite's rebuild of `subscribers` drops the index on an expression (see 0008)."""
    op.execute("CREATE UNIQUE INDEX IF NOT EXISTS uq_subscribers_email_lower ON subscribers (lower(email))")


def downgrade() -> None:
    op.drop_table("digest_editions")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_column("themes")
    op.drop_table("signup_requests")
    op.drop_table("notices")
    op.execute("DELETE FROM subscribers WHERE status = 'pending'")
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        for column in ("themes", "confirm_ip", "confirmed_at", "signup_ip", "signup_at"):
            batch_op.drop_column(column)
        batch_op.drop_constraint(op.f("ck_subscribers_status"), type_="check")
        batch_op.create_check_constraint(op.f("ck_subscribers_status"), _check(BEFORE))
    _keep_email_index()
