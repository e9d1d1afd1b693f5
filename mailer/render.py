"""Rendering a digest: Jinja2 templates, CSS inlined once by premailer, the text part.

A digest is rendered once, when it is built, and stored: a send resumed after a crash
mails exactly what the first attempt mailed. Each recipient's unsubscribe link is a
placeholder in the stored HTML and text, substituted per message (mailer.message), and
by a public page in the issue's archive copy (mailer.archive); the "View in browser" link
to that copy is the same for everyone, so it is rendered in.

The HTML is fluid (a column capped at 600 px, layout in inline styles, so it fits a phone
even without its <style> block), with a dark mode whose colours keep WCAG contrast 4.5:
`readable_on` lightens the configured accent colour for the dark background. The text
part is wrapped at TEXT_WIDTH columns.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from mailer.articles import is_http_url
from mailer.config import Config
from mailer.models import Article
from mailer.notes import note_html, note_text
from mailer.themes import Themes

# Stands in for each recipient's unsubscribe URL in the stored HTML and text; replaced per
# message (mailer.message). Letters, digits and underscores only, so neither Jinja's
# escaping nor premailer nor URL handling can alter it.
UNSUBSCRIBE_PLACEHOLDER = "MAILER_UNSUBSCRIBE_URL_7f3a9c"
# The same for the reader's preferences page (mailer.web.subscribe).
PREFERENCES_PLACEHOLDER = "MAILER_PREFERENCES_URL_4b8e21"
PREVIEW_UNSUBSCRIBE = "/unsubscribe/preview"
PREVIEW_PREFERENCES = "/preferences/preview"
# What a preview or a test copy links to instead: pages that belong to no reader.
PREVIEW_LINKS = {UNSUBSCRIBE_PLACEHOLDER: PREVIEW_UNSUBSCRIBE, PREFERENCES_PLACEHOLDER: PREVIEW_PREFERENCES}
# Every per-reader placeholder has this shape, and the public copy of an issue
# (mailer.archive) puts, in place of each, the page on base_url named here: a reader's
# token never reaches a public page. One the table does not name gets PUBLIC_UNSUBSCRIBE,
# a page that belongs to no reader and says to use the links in one's own mail.
PLACEHOLDER = re.compile(r"MAILER_[A-Z]+(?:_[A-Z]+)*_URL_[0-9a-f]{6}")
PUBLIC_UNSUBSCRIBE = "/unsubscribe"
PUBLIC_LINKS = {UNSUBSCRIBE_PLACEHOLDER: PUBLIC_UNSUBSCRIBE}


def with_links(body: str, base_url: str, links: dict[str, str]) -> str:
    """A stored digest's HTML or text with each per-reader placeholder replaced by the
    page on base_url that `links` names for it (PREVIEW_LINKS, PUBLIC_LINKS)."""
    return PLACEHOLDER.sub(lambda m: base_url + links.get(m.group(0), PUBLIC_UNSUBSCRIBE), body)


TEXT_WIDTH = 72


def lead_of(paragraphs: list[str], max_chars: int) -> str:
    """About the first paragraph: cut at a word boundary when it is long."""
    first = paragraphs[0] if paragraphs else ""
    if len(first) <= max_chars:
        return first
    cut = first[:max_chars].rsplit(" ", 1)[0].rstrip(",;:-–— ")
    return cut + "…"


def article_url(base_url: str, article_id: int, url: str | None) -> str:
    """Where the mail links an article: its original if that is an http(s) URL, else its
    page here. Checked again here, not only when stored: a row edited behind the store's
    back must not put a javascript: link in anyone's mail."""
    if url and is_http_url(url):
        return url
    return f"{base_url}/articles/{article_id}"


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
        return article_url(self.cfg.digest.base_url, article.id, article.url)

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
            issue,
            date,
            subject,
            preheader,
            sections,
            len(articles),
            note_html(note),
            note_text(note, TEXT_WIDTH),
        )

    def archive_url(self, issue: int) -> str:
        """The issue's public page (mailer.web.archive), the mail's "View in browser"
        link: the same for every reader, so it is rendered into the stored digest. "" when
        web.archive is off (that page would be a 404)."""
        return f"{self.cfg.digest.base_url}/archive/{issue}" if self.cfg.web.archive else ""

    def _context(self, content: Content, unsubscribe_url: str) -> dict[str, Any]:
        """The template's variables; the per-reader links are placeholders (replaced per
        message, or by with_links) unless `unsubscribe_url` is given (the naive bench)."""
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
            "preferences_url": PREFERENCES_PLACEHOLDER,
            "archive_url": self.archive_url(content.issue),
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
    """Theme order; within a theme the pinned first (in pinning order), then the oldest:
    by publication date, or for an undated article by when it was first seen."""
    return (themes.order(a.theme), a.pinned_at is None, a.pinned_at or a.published_at or a.imported_at, a.id)
