"""The digest: choosing articles, building one per schedule slot, and its lifecycle.

Building is one short transaction: the digest row (unique per slot), the articles
reserved for it, the editor's note for it and the frozen audience (one delivery row per
active subscriber). The HTML (CSS inlined once by premailer) and the text part are stored
on the digest, so a send resumed after a crash mails exactly what the first attempt mailed.
Readers who chose themes get an edition cut to them (DigestEdition, stored the same way,
one per distinct choice); a reader whose themes have no article this time is recorded as
skipped with the reason, in the same statement that freezes the audience.

The editor shapes the next issue before it is built: held articles are never chosen;
pinned ones are chosen first and lead their section; an article's summary replaces its
computed lead (mailer.articles); the waiting editor's note is attached to the digest built
(mailer.notes). A slot the editor skips (`mailer schedule skip`) gets its `skipped` digest
row ahead of time: the slot key is unique, so the scheduler's build for it does nothing.

This module owns the digest's lifecycle (models.DigestStatus):
    build ──▶ sending ──nothing pending, someone reached──▶ sent
      │          │ └────nothing pending, nobody reached──▶ failed (articles released)
      │          ◀──────────── digest retry (reopen) ──────┘
      └──too few articles, no audience, the editor skips──▶ skipped
`finish` runs in mailer.delivery.queue.release, with the digest row locked, by whichever
run finds nothing pending; the rows themselves are mailer.delivery.queue's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session

from mailer.bounces.ledger import Rates, counts_by_digest
from mailer.config import Config
from mailer.db import Database, serialise
from mailer.errors import InputError, NotFound
from mailer.models import (
    Article,
    Delivery,
    DeliveryStatus,
    Digest,
    DigestEdition,
    DigestStatus,
    Subscriber,
    UTCDateTime,
    utcnow,
)
from mailer.notes import waiting_note
from mailer.render import PREVIEW_LINKS, Renderer, digest_order, with_links
from mailer.scheduler import Schedule, Slot
from mailer.themes import Themes

log = logging.getLogger(__name__)

# Digest statuses (models.DigestStatus), by their short names here where they change.
SENDING = DigestStatus.SENDING
SENT = DigestStatus.SENT
SKIPPED = DigestStatus.SKIPPED
FAILED = DigestStatus.FAILED
# The note of a slot the editor skipped (skip_slot); only such a row can be un-skipped.
SKIPPED_BY_EDITOR = "skipped by the editor"
NO_ARTICLE_IN_THEMES = "no article in the reader's themes this time"


def _unsent(s: Session, limit: int, themes: Themes) -> list[Article]:
    """The articles the next digest holds: of the unsent ones not held, the pinned first,
    then the oldest (published, else first seen), `limit` in all; in digest order.

    The database picks them (ORDER BY ... LIMIT), so only those rows are ever loaded, however
    many are waiting; the rest wait for next week."""
    chosen = (
        select(Article.id)
        .where(Article.digest_id.is_(None), Article.held_at.is_(None))
        .order_by(
            case((Article.pinned_at.is_(None), 1), else_=0),
            Article.pinned_at,
            func.coalesce(Article.published_at, Article.imported_at),
            Article.id,
        )
        .limit(limit)
        .scalar_subquery()
    )
    rows = list(s.scalars(select(Article).where(Article.id.in_(chosen))))
    return sorted(rows, key=lambda a: digest_order(a, themes))


@dataclass
class Preview:
    subject: str
    html: str
    text: str
    article_count: int
    issue: int


def preview(db: Database, cfg: Config, now: datetime | None = None) -> Preview | None:
    """What the next digest would be, with no state changed. None when nothing is unsent."""
    renderer = Renderer(cfg)
    now = now or utcnow()
    with db.session() as s:
        articles = _unsent(s, cfg.digest.max_articles, renderer.themes)
        issue = (s.scalar(select(func.max(Digest.issue_number))) or 0) + 1
        note = waiting_note(s)
    if not articles:
        return None
    schedule = Schedule.of(cfg)
    upcoming = schedule.next_slots(now, 1)
    when = upcoming[0].at if upcoming else now
    content = renderer.content(articles, issue, when, note.markdown if note else "")
    base = cfg.digest.base_url
    return Preview(
        content.subject,
        with_links(renderer.html(content), base, PREVIEW_LINKS),
        with_links(renderer.text(content), base, PREVIEW_LINKS),
        len(articles),
        issue,
    )


def build(
    db: Database, cfg: Config, slot: Slot, record_skip: bool = True, manual: bool = False
) -> Digest | None:
    """Create the digest for `slot` unless that slot already has one (then None); with
    `manual` (`digest send --now`), also unless any digest is still being delivered: the
    caller then joins that one.

    Too few unsent articles: a `skipped` digest records that the slot was handled (so a
    restart does not reconsider it), or, for a manual send, an InputError says why.

    Builds are serialised across processes and hosts (db.serialise: SQLite's write lock,
    PostgreSQL's advisory lock), so of services racing for the same slot, or editors
    pressing send on two hosts, the second one finds the first's row and does nothing; the
    unique slot_key and issue_number stand behind that.
    """
    renderer = Renderer(cfg)
    with db.session() as s:
        serialise(s, "build")
        if s.scalar(select(Digest.id).where(Digest.slot_key == slot.key)) is not None:
            return None
        if manual and s.scalar(select(Digest.id).where(Digest.status == SENDING).limit(1)) is not None:
            return None
        articles = _unsent(s, cfg.digest.max_articles, renderer.themes)
        audience = s.scalar(select(func.count()).where(Subscriber.status == "active")) or 0
        note = ""
        if len(articles) < max(cfg.digest.min_articles, 1):
            note = (
                f"skipped: {len(articles)} unsent article(s), the minimum is "
                f"{max(cfg.digest.min_articles, 1)}"
            )
        elif audience == 0:
            note = "skipped: no active subscribers"
        if note:
            if not record_skip:
                raise InputError(f"no digest: {note.removeprefix('skipped: ')}")
            log.info("slot %s: %s", slot.key, note)
            digest = Digest(slot_key=slot.key, slot_at=slot.at, status=SKIPPED, note=note)
            s.add(digest)
            return digest
        issue = (s.scalar(select(func.max(Digest.issue_number))) or 0) + 1
        editor_note = waiting_note(s)
        content = renderer.content(articles, issue, slot.at, editor_note.markdown if editor_note else "")
        digest = Digest(
            slot_key=slot.key,
            slot_at=slot.at,
            status=SENDING,
            issue_number=issue,
            subject=storable(content.subject),
            html=storable(renderer.html(content)),
            text=storable(renderer.text(content)),
        )
        s.add(digest)
        s.flush()
        s.execute(update(Article).where(Article.id.in_([a.id for a in articles])).values(digest_id=digest.id))
        if editor_note is not None:
            editor_note.digest_id = digest.id  # this issue's note now; the next has none yet
        empty = _editions(s, renderer, digest, articles, slot, editor_note.markdown if editor_note else "")
        # Freeze the audience in one statement: fast even for 100,000 subscribers. A reader
        # whose themes have no article this time is recorded as skipped, with the reason.
        nothing = Subscriber.themes.in_(empty)
        s.execute(
            insert(Delivery).from_select(
                ["digest_id", "subscriber_id", "status", "attempts", "last_reply", "updated_at", "themes"],
                select(
                    literal(digest.id),
                    Subscriber.id,
                    case((nothing, literal(DeliveryStatus.SKIPPED)), else_=literal(DeliveryStatus.QUEUED)),
                    literal(0),
                    case((nothing, literal(NO_ARTICLE_IN_THEMES)), else_=literal("")),
                    literal(utcnow(), UTCDateTime()),
                    Subscriber.themes,
                )
                .where(Subscriber.status == "active")
                .order_by(Subscriber.id),
            )
        )
        log.info("digest #%s built for slot %s: %d articles", issue, slot.key, len(articles))
        return digest


def storable(text: str) -> str:
    """Text as every database stores it: PostgreSQL refuses NUL in any text value, and a
    config value (a theme's name, the subject template) can carry one into a digest."""
    return text.replace("\x00", "")


def _editions(
    s: Session, renderer: Renderer, digest: Digest, articles: list[Article], slot: Slot, note: str
) -> list[str]:
    """One edition per theme choice among the active readers, holding only those themes'
    articles (sections, contents line and subject); the choices with no article this
    time are returned (their readers get no mail). A choice that covers every article
    needs no edition: its readers get the digest itself."""
    choices = s.scalars(
        select(Subscriber.themes).where(Subscriber.status == "active", Subscriber.themes != "").distinct()
    ).all()
    empty = []
    for key in choices:
        chosen = set(key.split(","))
        subset = [a for a in articles if a.theme in chosen]
        if not subset:
            empty.append(key)
        elif len(subset) < len(articles):
            content = renderer.content(subset, digest.issue_number or 0, slot.at, note)
            s.add(
                DigestEdition(
                    digest_id=digest.id,
                    themes=key,
                    subject=storable(content.subject),
                    html=storable(renderer.html(content)),
                    text=storable(renderer.text(content)),
                )
            )
    return empty


def skip_slot(db: Database, slot: Slot) -> Digest:
    """Record that `slot` sends nothing: a `skipped` digest row with its key, so the
    scheduler's build for it finds the row and does nothing. A slot that already has a
    digest (built, or skipped) is refused."""
    with db.session() as s:
        serialise(s, "build")  # as build does: a skip and a build of one slot never race
        existing = s.scalar(select(Digest).where(Digest.slot_key == slot.key))
        if existing is not None and existing.note == SKIPPED_BY_EDITOR:
            raise InputError(f"the slot {slot.key} is already skipped")
        if existing is not None:
            raise InputError(f"the slot {slot.key} already has digest id {existing.id} ({existing.status})")
        digest = Digest(slot_key=slot.key, slot_at=slot.at, status=SKIPPED, note=SKIPPED_BY_EDITOR)
        s.add(digest)
        log.info("slot %s: %s", slot.key, SKIPPED_BY_EDITOR)
        return digest


def unskip_slot(db: Database, slot: Slot) -> None:
    """Undo skip_slot for `slot`; NotFound when the editor has not skipped it."""
    with db.session() as s:
        gone = s.execute(
            delete(Digest).where(
                Digest.slot_key == slot.key, Digest.status == SKIPPED, Digest.note == SKIPPED_BY_EDITOR
            )
        ).rowcount
        if not gone:
            raise NotFound(f"the slot {slot.key} is not skipped")


def manual_slot(now: datetime) -> Slot:
    return Slot(f"manual:{now.strftime('%Y-%m-%dT%H:%M:%S')}", now)


def unfinished(db: Database) -> list[Digest]:
    with db.session() as s:
        return list(s.scalars(select(Digest).where(Digest.status == "sending").order_by(Digest.id)))


def reopen(digest: Digest) -> None:
    """A finished digest delivers again (`digest retry`): the give-up clock restarts and
    an earlier run's back-off is forgotten."""
    digest.status = SENDING
    digest.retried_at = utcnow()
    digest.finished_at = None
    digest.next_run_at = None
    digest.run_failures = 0
    digest.last_error = ""


def finish(s: Session, digest: Digest, now: datetime, delivered: bool = True) -> None:
    """The digest has finished delivering: mark it and its articles sent. If it reached
    nobody at all (every delivery failed or was skipped), it is `failed` and its articles
    are released for the next digest: an article is sent when someone got it."""
    digest.finished_at = now
    if delivered:
        digest.status = "sent"
        s.execute(update(Article).where(Article.digest_id == digest.id).values(sent_at=now))
    else:
        digest.status = "failed"
        digest.note = "reached nobody; its articles go into the next digest"
        s.execute(update(Article).where(Article.digest_id == digest.id).values(digest_id=None))


@dataclass
class DigestRow:
    """A digest as `digest list` and the web pages show it.

    `slot` is the slot's key, an identifier (unique per digest): a scheduled slot's local
    wall-clock time without a zone, or "manual:" and the UTC time of a `send --now`.
    People read `slot_at` instead, the slot's instant, shown in the configured zone."""

    id: int
    issue: int | None
    slot: str
    slot_at: datetime
    status: str
    subject: str
    created_at: datetime
    finished_at: datetime | None
    note: str
    articles: int
    counts: dict[str, int]
    returned: Rates  # bounces and complaints after delivery (mailer.bounces.ledger)

    @property
    def manual(self) -> bool:
        """A slot of `digest send --now` (manual_slot) rather than of the schedule."""
        return self.slot.startswith("manual:")


def list_digests(db: Database, limit: int | None = None) -> list[DigestRow]:
    with db.session() as s:
        q = select(Digest).order_by(Digest.id.desc())
        if limit:
            q = q.limit(limit)
        digests = list(s.scalars(q))
        ids = [d.id for d in digests]
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        for digest_id, status, n in s.execute(
            select(Delivery.digest_id, Delivery.status, func.count())
            .where(Delivery.digest_id.in_(ids))
            .group_by(Delivery.digest_id, Delivery.status)
        ):
            counts[digest_id][status] = n
        articles = dict(
            s.execute(
                select(Article.digest_id, func.count())
                .where(Article.digest_id.in_(ids))
                .group_by(Article.digest_id)
            ).all()
        )
        returned = counts_by_digest(s, ids)
    return [
        DigestRow(
            d.id,
            d.issue_number,
            d.slot_key,
            d.slot_at,
            d.status,
            d.subject,
            d.created_at,
            d.finished_at,
            d.note,
            articles.get(d.id, 0),
            counts[d.id],
            Rates.of(counts[d.id].get(DeliveryStatus.SENT, 0), returned[d.id]),
        )
        for d in digests
    ]


def get_digest(db: Database, digest_id: int) -> Digest | None:
    with db.session() as s:
        return s.get(Digest, digest_id)


def give_up_age(cfg: Config) -> timedelta:
    return timedelta(hours=cfg.delivery.give_up_hours)
