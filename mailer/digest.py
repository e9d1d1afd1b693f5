"""The digest: choosing articles, building one per schedule slot, rendering it once.

Building is one short transaction: the digest row (unique per slot), the articles
reserved for it, the editor's note for it and the frozen audience (one delivery row per
active subscriber). The HTML (CSS inlined once by premailer) and the text part are stored
on the digest, so a send resumed after a crash mails exactly what the first attempt mailed.

The editor shapes the next issue before it is built:
* Articles: held ones are never chosen; pinned ones are chosen first and lead their
  section; an article's summary replaces its computed lead (mailer.articles).
* The editor's note (Markdown): at most one waits for the next issue. The build attaches
  it to the digest it builds (it is then that issue's note, and the next issue has none
  until one is set), so it appears in exactly one issue; a slot skipped for want of
  articles leaves it waiting. It is rendered with markdown-it-py with raw HTML off (any
  `<` in it is text), no images (remote content in a mail tracks its reader) and only
  absolute http(s) and mailto: links (anything else stays text), so the note can put
  nothing in a mail but paragraphs, emphasis, lists, quotes, code and safe links.
* A slot the editor skips (`mailer schedule skip`) gets its `skipped` digest row ahead of
  time: the slot key is unique, so the scheduler's build for that slot does nothing.
"""

from __future__ import annotations

import logging
import re
import textwrap
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from importlib import resources
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from sqlalchemy import case, delete, func, insert, literal, select, update
from sqlalchemy.orm import Session

from mailer.articles import is_http_url
from mailer.config import Config
from mailer.db import Database, serialise
from mailer.errors import InputError, NotFound
from mailer.models import Article, Delivery, Digest, DigestStatus, EditorNote, Subscriber, UTCDateTime, utcnow
from mailer.scheduler import Schedule, Slot
from mailer.themes import Themes

log = logging.getLogger(__name__)

# Stands in for each recipient's unsubscribe URL in the stored HTML and text; replaced per
# message (mailer.message). Letters, digits and underscores only, so neither Jinja's
# escaping nor premailer nor URL handling can alter it.
UNSUBSCRIBE_PLACEHOLDER = "MAILER_UNSUBSCRIBE_URL_7f3a9c"
PREVIEW_UNSUBSCRIBE = "/unsubscribe/preview"

# Digest statuses (models.DigestStatus), by their short names here where they change.
SENDING = DigestStatus.SENDING
SENT = DigestStatus.SENT
SKIPPED = DigestStatus.SKIPPED
FAILED = DigestStatus.FAILED
# The note of a slot the editor skipped (skip_slot); only such a row can be un-skipped.
SKIPPED_BY_EDITOR = "skipped by the editor"

NOTE_MAX_CHARS = 10_000
TEXT_WIDTH = 72


def lead_of(paragraphs: list[str], max_chars: int) -> str:
    """About the first paragraph: cut at a word boundary when it is long."""
    first = paragraphs[0] if paragraphs else ""
    if len(first) <= max_chars:
        return first
    cut = first[:max_chars].rsplit(" ", 1)[0].rstrip(",;:-–— ")
    return cut + "…"


@dataclass
class Section:
    slug: str
    name: str
    articles: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Content:
    """Everything the templates need, independent of the recipient."""

    issue: int
    date: str
    subject: str
    preheader: str
    sections: list[Section]
    article_count: int
    # The editor's note: safe HTML (note_html) and plain text wrapped at 72 (note_text).
    note_html: Markup = field(default_factory=Markup)
    note_text: str = ""


def template_environment(cfg: Config) -> Environment:
    """User templates (config `digest.templates`) first, the packaged ones as fallback."""
    loaders: list[Any] = []
    user_dir = cfg.resolve(cfg.digest.templates)
    if user_dir.is_dir():
        loaders.append(FileSystemLoader(str(user_dir)))
    loaders.append(FileSystemLoader(str(resources.files("mailer.default_templates"))))
    return Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


class Renderer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.themes = Themes(cfg.themes)
        self.env = template_environment(cfg)

    def article_url(self, article: Article) -> str:
        # Checked again here, not only when stored: a row edited behind the store's back
        # must not put a javascript: link in anyone's mail.
        if article.url and is_http_url(article.url):
            return article.url
        return f"{self.cfg.digest.base_url}/articles/{article.id}"

    def content(self, articles: list[Article], issue: int, when: datetime, note: str = "") -> Content:
        d = self.cfg.digest
        by_theme: dict[str, Section] = {}
        for a in sorted(articles, key=lambda a: digest_order(a, self.themes)):
            slug = a.theme if a.theme in self.themes.by_slug else self.themes.fallback.slug
            section = by_theme.setdefault(slug, Section(slug, self.themes.name(slug)))
            section.articles.append(
                {
                    "id": a.id,
                    "title": a.title,
                    "lead": a.summary or lead_of(a.paragraphs, d.lead_chars),
                    "url": self.article_url(a),
                    "pinned": a.pinned_at is not None,
                }
            )
        sections = list(by_theme.values())
        leading = sorted(sections, key=lambda s: -len(s.articles))[:3]
        local = when.astimezone(self.cfg.zone)
        date = f"{local.day} {local:%B %Y}"
        subject = d.subject.format(
            name=d.name, issue=issue, themes=", ".join(s.name for s in leading), date=date
        )
        # A header value: never let a newline through, whatever the template produced.
        subject = " ".join(subject.split())
        preheader = f"{len(articles)} stories this week: " + "; ".join(
            s.articles[0]["title"] for s in sections[:3]
        )
        return Content(
            issue, date, subject, preheader, sections, len(articles), note_html(note), note_text(note)
        )

    def _context(self, content: Content, unsubscribe_url: str) -> dict[str, Any]:
        d = self.cfg.digest
        return {
            "c": content,
            "name": d.name,
            "language": d.language,
            "accent": d.accent_color,
            "footer_text": d.footer_text,
            "postal_address": d.postal_address,
            "base_url": d.base_url,
            "unsubscribe_url": unsubscribe_url,
        }

    def html(self, content: Content, unsubscribe_url: str = UNSUBSCRIBE_PLACEHOLDER) -> str:
        context = self._context(content, unsubscribe_url)
        # The dark palette of the template's prefers-color-scheme rules; the accent as text
        # on the dark card is lightened until it reads (WCAG contrast >= 4.5).
        context.update(
            dark_page=DARK_PAGE,
            dark_card=DARK_CARD,
            accent_on_dark=readable_on(self.cfg.digest.accent_color, DARK_CARD),
        )
        raw = self.env.get_template("digest.html").render(context)
        return inline_css(raw)

    def text(self, content: Content, unsubscribe_url: str = UNSUBSCRIBE_PLACEHOLDER) -> str:
        """The text part, ending in exactly one newline (Jinja drops a template's last one,
        and a user's template may have none or several)."""
        text = self.env.get_template("digest.txt").render(self._context(content, unsubscribe_url))
        return text.rstrip("\n") + "\n"


def inline_css(html: str) -> str:
    """premailer once per digest. Keep !important in the @media rules it leaves in <style>,
    never fetch external CSS, and keep cssutils' warnings out of the logs."""
    from premailer import Premailer  # heavy (cssutils, lxml): only loaded to render

    return Premailer(
        html,
        strip_important=False,
        allow_network=False,
        keep_style_tags=True,
        remove_classes=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()


DARK_PAGE = "#111827"
DARK_CARD = "#1f2937"


def _rgb(colour: str) -> list[int]:
    """'#1a56db' or '#15d' -> [26, 86, 219] (the config accepts only these two forms)."""
    digits = colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return [int(digits[i : i + 2], 16) for i in (0, 2, 4)]


def luminance(colour: str) -> float:
    """WCAG relative luminance."""
    channels = [c / 255 for c in _rgb(colour)]
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two hex colours, 1 to 21."""
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def readable_on(colour: str, background: str, minimum: float = 4.5) -> str:
    """`colour` mixed with white in 10 % steps until it reaches `minimum` contrast on the
    dark `background` (at worst white itself): the accent as text in dark mode keeps its
    hue and stays legible."""
    rgb = _rgb(colour)
    for step in range(10):
        mixed = "#" + "".join(f"{round(c + (255 - c) * step / 10):02x}" for c in rgb)
        if contrast(mixed, background) >= minimum:
            return mixed
    return "#ffffff"


def digest_order(a: Article, themes: Themes) -> tuple[Any, ...]:
    """Theme order; within a theme the pinned first (in pinning order), then the oldest."""
    return (themes.order(a.theme), a.pinned_at is None, a.pinned_at or a.imported_at, a.imported_at, a.id)


def _unsent(s: Session, limit: int, themes: Themes) -> list[Article]:
    """The articles the next digest holds: of the unsent ones not held, the pinned first,
    then the oldest, `limit` in all; in digest order.

    The database picks them (ORDER BY ... LIMIT), so only those rows are ever loaded, however
    many are waiting; the rest wait for next week."""
    chosen = (
        select(Article.id)
        .where(Article.digest_id.is_(None), Article.held_at.is_(None))
        .order_by(
            case((Article.pinned_at.is_(None), 1), else_=0),
            Article.pinned_at,
            Article.imported_at,
            Article.id,
        )
        .limit(limit)
        .scalar_subquery()
    )
    rows = list(s.scalars(select(Article).where(Article.id.in_(chosen))))
    return sorted(rows, key=lambda a: digest_order(a, themes))


def _next_note(s: Session) -> EditorNote | None:
    return s.scalar(select(EditorNote).where(EditorNote.digest_id.is_(None)))


def set_note(db: Database, markdown: str) -> str:
    """The editor's note for the next issue (replacing any); the note as stored."""
    markdown = markdown.replace("\r\n", "\n").strip()
    if not markdown:
        raise InputError("the note is empty (mailer digest note --clear removes it)")
    if len(markdown) > NOTE_MAX_CHARS:
        raise InputError(f"the note is longer than {NOTE_MAX_CHARS} characters")
    with db.session() as s:
        serialise(s, "note")  # on PostgreSQL too, two editors never leave two waiting notes
        s.execute(delete(EditorNote).where(EditorNote.digest_id.is_(None)))
        s.add(EditorNote(markdown=markdown, set_at=utcnow()))
    return markdown


def next_note(db: Database) -> str:
    """The note waiting for the next issue, "" when there is none."""
    with db.reader() as s:
        note = _next_note(s)
        return note.markdown if note else ""


def clear_note(db: Database) -> bool:
    """Remove the note for the next issue; whether there was one."""
    with db.session() as s:
        return bool(s.execute(delete(EditorNote).where(EditorNote.digest_id.is_(None))).rowcount)


def _safe_link(url: str) -> bool:
    """The only links a note may carry (markdown-it leaves any other as plain text)."""
    if url.startswith("mailto:"):
        address = url.removeprefix("mailto:")
        return bool(re.fullmatch(r"[^\s@<>\"]+@[^\s@<>\"]+", address))
    return is_http_url(url)


def _markdown() -> Any:
    from markdown_it import MarkdownIt  # comes with rich; loaded only to render

    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.disable("image")
    md.validateLink = _safe_link
    return md


def note_html(markdown: str) -> Markup:
    """The note as HTML: markdown-it-py's output with raw HTML escaped, no images, and safe
    links only (see the module docstring); empty for no note."""
    return Markup(_markdown().render(markdown) if markdown.strip() else "")


def note_text(markdown: str, width: int = TEXT_WIDTH) -> str:
    """The note as plain text for the text part: paragraphs, headings and list items
    wrapped at `width` between words, a link as "text (url)", code blocks as they are,
    quotes prefixed with "> "; blocks separated by a blank line, the items of one list by
    none."""
    if not markdown.strip():
        return ""
    blocks: list[tuple[str, int]] = []  # (text, the list it is an item of, or -1)
    lists: list[list[Any]] = []  # per open list: [ordered, next number, its token's index]
    quote = ""
    marker = ""  # the marker of a list item whose first block is still to come
    for index, token in enumerate(_markdown().parse(markdown)):
        indent = quote + "   " * max(len(lists) - 1, 0)
        if token.type == "blockquote_open":
            quote += "> "
        elif token.type == "blockquote_close":
            quote = quote[:-2]
        elif token.type in ("bullet_list_open", "ordered_list_open"):
            lists.append([token.type == "ordered_list_open", int(token.attrGet("start") or 1), index])
        elif token.type in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif token.type == "list_item_open":
            ordered, number, _ = lists[-1]
            marker = f"{number}. " if ordered else "- "
            lists[-1][1] = number + 1
        elif token.type == "inline":
            first = indent + marker
            rest = indent + " " * len(marker) if lists else indent
            text = textwrap.fill(
                _inline_text(token.children or []),
                width,
                initial_indent=first,
                subsequent_indent=rest,
                break_long_words=False,
                break_on_hyphens=False,
            )
            blocks.append((text, lists[-1][2] if lists else -1))
            marker = ""
        elif token.type in ("fence", "code_block"):
            lines = token.content.rstrip("\n").split("\n")
            blocks.append(("\n".join((indent + "    " + ln).rstrip() for ln in lines), -1))
        elif token.type == "hr":
            blocks.append((indent + "* * *", -1))
    out = ""
    for i, (text, in_list) in enumerate(blocks):
        if i:
            out += "\n" if in_list >= 0 and in_list == blocks[i - 1][1] else "\n\n"
        out += text
    return out


def _inline_text(children: list[Any]) -> str:
    parts: list[str] = []
    links: list[tuple[str, int]] = []  # (href, where its text starts in parts)
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "link_open":
            links.append((str(child.attrGet("href") or ""), len(parts)))
        elif child.type == "link_close" and links:
            href, start = links.pop()
            shown = "".join(parts[start:])
            if href.removeprefix("mailto:") != shown:
                parts.append(f" ({href})")
    return "".join(parts)


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
        note = _next_note(s)
    if not articles:
        return None
    schedule = Schedule.of(cfg)
    upcoming = schedule.next_slots(now, 1)
    when = upcoming[0].at if upcoming else now
    content = renderer.content(articles, issue, when, note.markdown if note else "")
    unsubscribe = cfg.digest.base_url + PREVIEW_UNSUBSCRIBE
    return Preview(
        content.subject,
        renderer.html(content, unsubscribe),
        renderer.text(content, unsubscribe),
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
        editor_note = _next_note(s)
        content = renderer.content(articles, issue, slot.at, editor_note.markdown if editor_note else "")
        digest = Digest(
            slot_key=slot.key,
            slot_at=slot.at,
            status=SENDING,
            issue_number=issue,
            subject=content.subject,
            html=renderer.html(content),
            text=renderer.text(content),
        )
        s.add(digest)
        s.flush()
        s.execute(update(Article).where(Article.id.in_([a.id for a in articles])).values(digest_id=digest.id))
        if editor_note is not None:
            editor_note.digest_id = digest.id  # this issue's note now; the next has none yet
        # Freeze the audience in one statement: fast even for 100,000 subscribers.
        s.execute(
            insert(Delivery).from_select(
                ["digest_id", "subscriber_id", "status", "attempts", "last_reply", "updated_at"],
                select(
                    literal(digest.id),
                    Subscriber.id,
                    literal("queued"),
                    literal(0),
                    literal(""),
                    literal(utcnow(), UTCDateTime()),
                )
                .where(Subscriber.status == "active")
                .order_by(Subscriber.id),
            )
        )
        log.info("digest #%s built for slot %s: %d articles", issue, slot.key, len(articles))
        return digest


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
        )
        for d in digests
    ]


def get_digest(db: Database, digest_id: int) -> Digest | None:
    with db.session() as s:
        return s.get(Digest, digest_id)


def give_up_age(cfg: Config) -> timedelta:
    return timedelta(hours=cfg.delivery.give_up_hours)
