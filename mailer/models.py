"""Typed SQLAlchemy models: the database is the source of truth for every state.

Each state machine's statuses are one StrEnum (SubscriberStatus, DigestStatus,
DeliveryStatus, NoticeStatus, FeedStatus), and the database refuses any other value (a
CHECK constraint per table, migrations 0008 onwards), so a typo or an old process can never
write a status nobody handles. Each machine has one owner that changes it:
mailer.subscribers (and mailer.bounces.ledger through it), mailer.digest (with
mailer.delivery.queue finishing a digest), mailer.delivery.queue, mailer.notices,
mailer.feeds.poll.

About 450 lines, on purpose: the whole schema in one declarative file, as Alembic's
autogenerate and every reader of a migration see it; the logic lives with each owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class SubscriberStatus(StrEnum):
    PENDING = "pending"  # signed up on the web, not yet confirmed: gets no digest
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    # Reported our mail as spam: never mailed again unless they sign up again themselves
    # (the double opt-in form); the editor cannot put them back.
    COMPLAINED = "complained"


class DigestStatus(StrEnum):
    SENDING = "sending"
    SENT = "sent"
    SKIPPED = "skipped"  # the slot was handled and sends nothing (too few articles, the editor)
    FAILED = "failed"  # it reached nobody


class FeedStatus(StrEnum):
    ACTIVE = "active"
    GONE = "gone"  # the server answered 410 Gone: never polled again until added again


class FeedOrigin(StrEnum):
    CONFIG = "config"  # [[feeds.sources]] in config.toml: the file is the truth for it
    CLI = "cli"  # `mailer feeds add`


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"
    SKIPPED = "skipped"


def status_check(statuses: type[StrEnum]) -> CheckConstraint:
    """The table's `status` column holds one of `statuses` and nothing else."""
    values = ", ".join(f"'{s.value}'" for s in statuses)
    return CheckConstraint(f"status IN ({values})", name="status")


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite has no zones) and always hands back aware UTC datetimes."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
        }
    )


class Article(Base):
    __tablename__ = "articles"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(500))
    # Paragraphs separated by one blank line.
    body: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(String(2000))
    source: Mapped[str] = mapped_column(String(500))
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    theme: Mapped[str] = mapped_column(String(64), index=True)
    # sha256 of the normalised body (letters and digits only): the de-duplication key.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    # Set in the transaction that builds a digest: the article is then reserved for it.
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("digests.id", ondelete="RESTRICT"), index=True)
    # Set when that digest has finished delivering.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The editor's shaping of the next issue (mailer.articles), changed only while the
    # article is unsent: pinned ones lead their section (in pinning order) and are chosen
    # first; a held one stays out of every digest until released; the summary, when not
    # empty, is shown instead of the lead computed from the body.
    pinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    held_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    summary: Mapped[str] = mapped_column(Text, default="", server_default="")
    # The byline a feed gave ("" for files and `articles add`).
    author: Mapped[str] = mapped_column(String(200), default="", server_default="")

    digest: Mapped[Digest | None] = relationship(back_populates="articles")

    @property
    def paragraphs(self) -> list[str]:
        return [p for p in self.body.split("\n\n") if p.strip()]

    @property
    def is_sent(self) -> bool:
        return self.sent_at is not None

    @property
    def state(self) -> str:
        """What `articles list` shows: sent, in a digest, or unsent (held, pinned)."""
        if self.sent_at is not None:
            return "sent"
        if self.digest_id is not None:
            return f"digest #{self.digest_id}"
        if self.held_at is not None:
            return "held"
        return "pinned" if self.pinned_at is not None else "unsent"


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (
        Index("uq_subscribers_email_lower", func.lower("email"), unique=True),
        status_check(SubscriberStatus),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(16), default=SubscriberStatus.ACTIVE, index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Per-subscriber nonce mixed into unsubscribe tokens; changing it revokes old links.
    token_nonce: Mapped[str] = mapped_column(String(32))
    bounce_count: Mapped[int] = mapped_column(Integer, default=0)
    # The consent record of a web sign-up (double opt-in): when and from where the form
    # was sent, and the confirmation clicked. None for readers the editor added.
    signup_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    signup_ip: Mapped[str | None] = mapped_column(String(45))
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirm_ip: Mapped[str | None] = mapped_column(String(45))
    # Themes the reader asked for (slugs, sorted, comma-separated: theme_key); "" every theme.
    themes: Mapped[str] = mapped_column(Text, default="", server_default="")

    def hard_bounce(self, threshold: int) -> bool:
        """Count a permanent failure (at the relay or reported later); True when it makes an
        active reader `bounced` (the caller applies that with subscribers.set_status)."""
        self.bounce_count += 1
        return self.bounce_count >= threshold and self.status == SubscriberStatus.ACTIVE

    def confirm(self, ip: str, now: datetime) -> bool:
        """Double opt-in's second step; False when there was nothing to confirm (already
        active: a second click changes nothing)."""
        if self.status == SubscriberStatus.ACTIVE:
            return False
        self.status = SubscriberStatus.ACTIVE
        self.status_changed_at = now
        self.confirmed_at = now
        self.confirm_ip = ip
        return True


def theme_key(slugs: Iterable[str]) -> str:
    """A choice of themes as stored: sorted, unique, comma-separated ("" for all)."""
    return ",".join(sorted({s for s in slugs if s}))


class NoticeStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    RETRY = "retry"
    FAILED = "failed"


class Notice(Base):
    """A mail to one reader outside the digest (a sign-up's confirmation), queued in the
    database when asked for and sent by whichever process gets to it first."""

    __tablename__ = "notices"
    __table_args__ = (status_check(NoticeStatus), Index("ix_notices_status", "status", "next_attempt_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=NoticeStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_reply: Mapped[str] = mapped_column(String(1000), default="")


class SignupRequest(Base):
    """One sign-up form sent, by IP: what the per-IP limit counts (in the database, so it
    holds across every instance)."""

    __tablename__ = "signup_requests"
    __table_args__ = (Index("ix_signup_requests_ip_at", "ip", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    ip: Mapped[str] = mapped_column(String(45))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Digest(Base):
    __tablename__ = "digests"
    __table_args__ = (status_check(DigestStatus),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # The schedule slot as local wall-clock time in the configured zone ("2026-03-02T08:00"),
    # or "manual:<utc iso>". Unique, so no slot can ever produce two digests, even when a
    # DST fall-back makes the cron trigger fire twice at the same wall-clock time.
    slot_key: Mapped[str] = mapped_column(String(64), unique=True)
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # sending -> sent; skipped when there were too few articles; failed when given up.
    status: Mapped[str] = mapped_column(String(16), index=True)
    issue_number: Mapped[int | None] = mapped_column(Integer, unique=True)
    subject: Mapped[str] = mapped_column(String(500), default="")
    # Rendered once at build time (CSS already inlined), so a resumed send is identical.
    html: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # After a run that stopped on a relay-wide problem (unreachable, auth, too many
    # errors): the error, how many runs in a row failed, and when the service tries again.
    last_error: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    run_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set by `digest retry`: the give-up age counts from here instead of created_at.
    retried_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    articles: Mapped[list[Article]] = relationship(back_populates="digest")


class EditorNote(Base):
    """The editor's note (Markdown) for an issue. At most one row has no digest: the note
    for the next issue (mailer.digest.set_note replaces it in one transaction). Building a
    digest attaches that row to it in the same transaction as the articles it reserves, so
    the note is used by exactly one issue and the next one starts without a note."""

    __tablename__ = "editor_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    markdown: Mapped[str] = mapped_column(Text)
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    digest_id: Mapped[int | None] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"), unique=True)


class Delivery(Base):
    """One row per (digest, subscriber): the audience is frozen when the digest is built."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("digest_id", "subscriber_id"),
        Index("ix_deliveries_digest_status", "digest_id", "status", "next_attempt_at"),
        status_check(DeliveryStatus),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"))
    # Forgetting a subscriber erases their deliveries too.
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    # queued -> sending -> sent | retry (-> sending ...) | failed | skipped
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_reply: Mapped[str] = mapped_column(String(1000), default="")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The random part of this delivery's Message-ID (mailer.message): set when it is first
    # claimed, before anything is sent, and kept, so every retry carries the same ID and no
    # other message ever does. "" on rows sent before it existed (their ID had no key).
    message_key: Mapped[str | None] = mapped_column(String(32))
    # The run (DeliveryRun.id) that claimed it while it is `sending`: a row whose run is no
    # longer alive goes back to the queue (mailer.delivery.queue).
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    # The reader's themes when the digest was built (Subscriber.themes): which edition
    # (DigestEdition) they get; "" the whole digest.
    themes: Mapped[str] = mapped_column(Text, default="", server_default="")


class DigestEdition(Base):
    """A digest cut down to some readers' themes: its own sections, contents and subject.
    Made when the digest is built, one per theme choice among its readers."""

    __tablename__ = "digest_editions"
    __table_args__ = (UniqueConstraint("digest_id", "themes"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"))
    themes: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(500))
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)


class DeliveryRun(Base):
    """A process delivering a digest. Any number of runs, on any hosts, work on one digest
    at once; each renews `expires_at` while it is alive, and whatever a run that stopped
    renewing had claimed is put back in the queue by the others."""

    __tablename__ = "delivery_runs"

    # host:pid:random (mailer.delivery.queue.new_owner): unique per run, readable by people.
    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    digest_id: Mapped[int] = mapped_column(ForeignKey("digests.id", ondelete="CASCADE"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Written by the run itself from its own delivery.lease_seconds.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


DELIVERY_PENDING = (DeliveryStatus.QUEUED, DeliveryStatus.SENDING, DeliveryStatus.RETRY)


class SharedSetting(Base):
    """A setting every instance on this database must agree on (mailer.shared_settings):
    the first instance stores its value, and the others are checked against it."""

    __tablename__ = "shared_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(500))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Feed(Base):
    """An RSS or Atom source (mailer.feeds). `listed_url` is the URL as the editor listed it
    (config.toml or `feeds add`), the key a config entry is matched by; `url` is where it is
    polled, moved by a permanent redirect. Polling state is per feed, so one feed's trouble
    never touches another's."""

    __tablename__ = "feeds"
    __table_args__ = (
        status_check(FeedStatus),
        CheckConstraint(
            "origin IN ({})".format(", ".join(f"'{o.value}'" for o in FeedOrigin)), name="origin"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    listed_url: Mapped[str] = mapped_column(String(2000), unique=True)
    url: Mapped[str] = mapped_column(String(2000))
    # "" until the first poll names it after the feed's own title.
    name: Mapped[str] = mapped_column(String(200), default="")
    # A theme slug for every item, or None: each item classified by keywords like a file's.
    theme: Mapped[str | None] = mapped_column(String(64))
    fetch_full_text: Mapped[bool] = mapped_column(default=False)
    origin: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=FeedStatus.ACTIVE)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The validators of the last 200, sent back as If-None-Match / If-Modified-Since.
    etag: Mapped[str | None] = mapped_column(String(500))
    last_modified: Mapped[str | None] = mapped_column(String(100))
    # Health, as `feeds list` shows it.
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(1000), default="")
    last_notes: Mapped[str] = mapped_column(Text, default="")
    last_imported: Mapped[int] = mapped_column(Integer, default=0)
    items_imported: Mapped[int] = mapped_column(Integer, default=0)
    # Polls in a row that failed: the back-off doubles with each.
    failures: Mapped[int] = mapped_column(Integer, default=0)
    # When the feed is next due (None once it is gone).
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # The claim of the poller fetching it now, until then (mailer.feeds.poll): set by a
    # compare-and-set, so two pollers (the service, `feeds poll`) never fetch one feed at
    # once, and a poller that died leaves a claim that simply runs out.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    items: Mapped[list[FeedItem]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class FeedItem(Base):
    """Every item a feed has shown, imported or not: the per-feed de-duplication record
    (an item seen once is never imported again, even after its article is removed)."""

    __tablename__ = "feed_items"
    __table_args__ = (UniqueConstraint("feed_id", "key_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feed_id: Mapped[int] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"))
    # sha256 of the item's key (guid, else link, else content): guids can be any length.
    key_hash: Mapped[str] = mapped_column(String(64))
    article_id: Mapped[int | None] = mapped_column(ForeignKey("articles.id", ondelete="SET NULL"))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BounceEvent(Base):
    """A bounce or complaint that came back after delivery (mailer.bounces.ledger), stored
    once per (source, event_id): a provider's retry, or the same DSN seen twice, is a
    replay and changes nothing."""

    __tablename__ = "bounce_events"
    __table_args__ = (
        UniqueConstraint("source", "event_id"),
        CheckConstraint("kind IN ('hard', 'soft', 'complaint')", name="kind"),
        Index("ix_bounce_events_subscriber", "subscriber_id", "received_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    event_id: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="")
    diagnostic: Mapped[str] = mapped_column(String(500), default="")
    recipient: Mapped[str | None] = mapped_column(String(320))
    # What it was matched to; None when nothing was (a forged token, an unknown address).
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    # Forgetting a reader erases what came back about them too.
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
