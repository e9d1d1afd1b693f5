"""The public archive: the issues sent, and each one as it was mailed, made public.

Only digests that were actually sent (status `sent`) are issues here; one being built,
delivering, skipped or failed is nobody's business yet. The HTML shown is the one stored
when the digest was built (mailer.render), which holds placeholders, never a reader's
link: each is replaced by the public page mailer.render.PUBLIC_LINKS names for it (any
other placeholder by the public unsubscribe page), so no reader's token can ever reach an
archive page or the feed.

The feed is Atom (RFC 4287) written by feedgen; an entry's id is its issue's archive URL,
which stays the same for as long as digest.base_url does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from markupsafe import escape
from sqlalchemy import select

from mailer.config import Config
from mailer.db import Database
from mailer.models import Article, Digest, DigestStatus
from mailer.render import PUBLIC_LINKS, article_url, digest_order, with_links
from mailer.themes import Themes

# The feed carries the newest issues only; the archive page lists all of them.
FEED_ENTRIES = 50
# Issue numbers above SQLite's INTEGER range are no issue (404), not an OverflowError.
MAX_ISSUE = 2**63 - 1


@dataclass(frozen=True)
class ArchivedArticle:
    title: str
    url: str  # where the mail linked: the original if it is an http(s) URL, else our page


@dataclass(frozen=True)
class Issue:
    number: int
    subject: str
    sent_at: datetime
    articles: list[ArchivedArticle] = field(default_factory=list)


def archive_url(cfg: Config, number: int | None = None) -> str:
    base = f"{cfg.digest.base_url}/archive"
    return base if number is None else f"{base}/{number}"


# A digest that is an issue of the archive: sent (see the module docstring).
SENT = (Digest.status == DigestStatus.SENT, Digest.issue_number.is_not(None))


def sent_issues(db: Database, cfg: Config, limit: int | None = None) -> list[Issue]:
    """The issues sent, newest first, each with its articles' titles and links."""
    with db.reader() as s:
        # The columns the list needs, not the stored HTML and text (~100 KB an issue).
        query = (
            select(Digest.id, Digest.issue_number, Digest.subject, Digest.finished_at, Digest.created_at)
            .where(*SENT)
            .order_by(Digest.issue_number.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        digests = s.execute(query).all()
        # Likewise the columns digest_order and the links need, not the bodies.
        rows = s.execute(
            select(
                Article.digest_id,
                Article.id,
                Article.title,
                Article.url,
                Article.theme,
                Article.pinned_at,
                Article.published_at,
                Article.imported_at,
            ).where(Article.digest_id.in_([d.id for d in digests]))
        ).all()
    by_digest: dict[int, list[ArchivedArticle]] = {d.id: [] for d in digests}
    themes = Themes(cfg.themes)
    for row in sorted(rows, key=lambda r: digest_order(r, themes)):  # in the mail's order
        url = article_url(cfg.digest.base_url, row.id, row.url)
        by_digest[row.digest_id].append(ArchivedArticle(row.title, url))
    return [Issue(d.issue_number, d.subject, d.finished_at or d.created_at, by_digest[d.id]) for d in digests]


def public_issue(db: Database, cfg: Config, number: int) -> str | None:
    """The HTML of issue `number` as mailed, with public links in place of every reader's
    own; None unless that issue was sent."""
    if not 0 < number <= MAX_ISSUE:
        return None
    with db.reader() as s:
        html = s.scalar(select(Digest.html).where(*SENT, Digest.issue_number == number))
    return None if html is None else public_html(html, cfg.digest.base_url)


def public_html(html: str, base_url: str) -> str:
    """`html` with each per-reader placeholder replaced by its public page on `base_url`."""
    return with_links(html, base_url, PUBLIC_LINKS)


def issue_of_article(db: Database, digest_id: int | None) -> int | None:
    """The number of the sent issue that carried an article (its digest_id), if any."""
    if digest_id is None:
        return None
    with db.reader() as s:
        return s.scalar(select(Digest.issue_number).where(*SENT, Digest.id == digest_id))


def atom(cfg: Config, issues: list[Issue]) -> bytes:
    """The Atom feed of `issues` (newest first), each entry linking to its archive page."""
    from feedgen.feed import FeedGenerator  # lxml and dateutil: only loaded for the feed

    d = cfg.digest
    feed = FeedGenerator()
    feed.id(archive_url(cfg))
    feed.title(d.name)
    feed.author({"name": d.name})
    feed.link(href=archive_url(cfg), rel="alternate", type="text/html")
    feed.link(href=f"{archive_url(cfg)}.atom", rel="self", type="application/atom+xml")
    feed.language(d.language)
    if issues:
        feed.updated(max(i.sent_at for i in issues))
    # feedgen puts the entry added last first: add the oldest first, so the feed reads
    # newest first as the archive page does.
    for issue in reversed(issues):
        entry = feed.add_entry()
        entry.id(archive_url(cfg, issue.number))
        entry.title(issue.subject)
        entry.link(href=archive_url(cfg, issue.number), rel="alternate", type="text/html")
        entry.published(issue.sent_at)
        entry.updated(issue.sent_at)
        entry.content(_entry_html(issue), type="html")
    return bytes(feed.atom_str(pretty=True))


def _entry_html(issue: Issue) -> str:
    items = "".join(f'<li><a href="{escape(a.url)}">{escape(a.title)}</a></li>' for a in issue.articles)
    return f"<ul>{items}</ul>" if items else ""
