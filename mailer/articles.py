"""Articles: importing files, adding, listing, re-theming, shaping and removing.

Shaping the next issue (pin, hold, edit) changes only unsent articles: one that a digest
has reserved is frozen with that digest (its HTML and text are stored), so a change could
never reach its readers; each change is one transaction that checks `digest_id IS NULL`
on the row it changes, the same lock a digest's build takes, so a build sees the article
either before or after the change, never half of it.

Files are read by mailer.article_files (what an import reads, and why nothing else is);
feeds insert through `insert_many` (mailer.feeds.poll).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from mailer.article_files import FileReport, collect_files, read_regular_file
from mailer.config import Config
from mailer.db import Database
from mailer.errors import InputError, NotFound
from mailer.models import Article, utcnow
from mailer.parsing import (
    MAX_TITLE_CHARS,
    Cleaner,
    ParsedArticle,
    clean_line,
    decode,
    fingerprint,
    paragraphs_of,
    squash,
)
from mailer.themes import Themes

# An editor's summary stands in for the lead (about digest.lead_chars): room for a few
# sentences, not a second article.
MAX_SUMMARY_CHARS = 1000


def check_title(title: str) -> str:
    """A title as `articles add` and `articles edit` take it: one clean line, with letters
    or digits, at most MAX_TITLE_CHARS (what an import accepts as a title line)."""
    title = clean_line(title)
    if not title:
        raise InputError("--title is empty")
    if len(title) > MAX_TITLE_CHARS:
        raise InputError(f"--title is longer than {MAX_TITLE_CHARS} characters")
    if not squash(title):
        raise InputError("--title has no letters or digits")
    return title


def check_summary(summary: str) -> str:
    """A summary is one paragraph of clean text ("" clears it: the computed lead again)."""
    summary = clean_line(summary)
    if len(summary) > MAX_SUMMARY_CHARS:
        raise InputError(f"--summary is longer than {MAX_SUMMARY_CHARS} characters")
    return summary


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with nothing unprintable in it: the only links ever emitted."""
    parts = urlsplit(url)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and not any(c.isspace() or not c.isprintable() for c in url)
    )


# What an import records as the source of an article whose file names none (the file's
# name, e.g. "000_2144d8fa5bdb739e.txt"), and what `articles add` records ("cli"): the
# editor's bookkeeping, never a name to show a reader.
_FILE_NAME = re.compile(r"[^\s/]+\.[A-Za-z0-9]{1,8}")
_NO_SOURCE = "cli"


def source_name(source: str, url: str | None) -> str:
    """The source as a reader sees it: a name the file gave (a teaser's "SCMP"), else the
    host of the article's URL ("www." dropped), else "" (there is none to show)."""
    if source and source != _NO_SOURCE and not _FILE_NAME.fullmatch(source):
        return source
    host = urlsplit(url).hostname if url and is_http_url(url) else None
    return host.removeprefix("www.") if host else ""


def check_url(url: str | None) -> str | None:
    """Only absolute http(s) URLs are ever stored (and so ever emitted in a link)."""
    if not url:
        return None
    url = url.strip()
    if not is_http_url(url):
        raise InputError(f"--url {url!r}: only absolute http:// or https:// URLs are allowed")
    return url


@dataclass(frozen=True)
class NewArticle:
    """What ArticleStore.insert_many takes per article: `insert`'s arguments."""

    item: ParsedArticle
    source: str
    url: str | None = None
    theme: str | None = None
    published_at: datetime | None = None
    author: str = ""
    fingerprint_of: str | None = None


class ArticleStore:
    def __init__(self, db: Database, cfg: Config) -> None:
        self.db = db
        self.cfg = cfg
        self.themes = Themes(cfg.themes)
        self.cleaner = Cleaner(cfg.articles)

    def import_paths(self, paths: list[str]) -> list[FileReport]:
        return [
            self.import_file(c.path, c.identity)
            if not (c.skip or c.error)
            else FileReport(str(c.path), skipped=[c.skip] if c.skip else [], error=c.error)
            for c in collect_files(paths)
        ]

    def import_file(self, path: Path, identity: tuple[int, int] | None = None) -> FileReport:
        """Import one file atomically: all its new articles, or (on error) none."""
        report = FileReport(str(path))
        try:
            text = decode(read_regular_file(path, identity))
        except InputError as exc:
            report.error = str(exc)
            return report
        except OSError as exc:
            report.error = f"cannot read: {exc.strerror or exc}"
            return report
        if not text.strip():
            report.skipped.append("empty file")
            return report
        parsed = self.cleaner.parse(text)
        report.skipped.extend(parsed.skipped)
        if not parsed.articles:
            report.skipped.append("no article found")
            return report
        added = duplicates = 0
        try:
            with self.db.session() as s:
                for item in parsed.articles:
                    if self.insert(s, item, source=item.source_note or path.name) is None:
                        duplicates += 1
                    else:
                        added += 1
        except SQLAlchemyError as exc:
            # The transaction was rolled back: nothing of this file is stored.
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            report.error = f"database: {reason}; nothing from this file was imported"
            return report
        report.added, report.duplicates = added, duplicates
        return report

    def insert(
        self,
        s: Session,
        item: ParsedArticle,
        source: str,
        url: str | None = None,
        theme: str | None = None,
        published_at: datetime | None = None,
        author: str = "",
        fingerprint_of: str | None = None,
    ) -> Article | None:
        """Insert unless an article with the same normalised body exists (then None), from
        any source: a file, `articles add` or a feed, so a story is stored once however
        many ways it arrives. A concurrent insert of the same body (another process's
        import) fails the unique fingerprint inside a savepoint and counts as a duplicate.
        `fingerprint_of` stands in for a body too short to tell stories apart (a feed item
        with a title and a link only)."""
        fp = fingerprint(item.body if fingerprint_of is None else fingerprint_of)
        if s.scalar(select(Article.id).where(Article.fingerprint == fp)) is not None:
            return None
        article = Article(
            title=item.title,
            body=item.body,
            url=url,
            source=source,
            published_at=published_at,
            imported_at=utcnow(),
            theme=theme or self.themes.classify(item.title, item.body),
            fingerprint=fp,
            author=author,
        )
        try:
            with s.begin_nested():
                s.add(article)
                s.flush()
        except IntegrityError:
            return None
        return article

    def insert_many(self, s: Session, new: list[NewArticle]) -> list[int | None]:
        """`insert` for many at once (a feed's items): one query for the fingerprints
        already stored and one multi-row INSERT … RETURNING, instead of a query, a
        savepoint and an INSERT each. The ids in order; None for a duplicate (stored
        before, or earlier in `new`). A concurrent import's duplicate fails the batch's
        savepoint, and the batch is then inserted one by one, each deciding for itself."""
        fps = [fingerprint(n.item.body if n.fingerprint_of is None else n.fingerprint_of) for n in new]
        seen: set[str] = set()
        for i in range(0, len(fps), 500):
            seen.update(
                s.scalars(select(Article.fingerprint).where(Article.fingerprint.in_(fps[i : i + 500])))
            )
        rows, where = [], []
        now = utcnow()
        for i, (n, fp) in enumerate(zip(new, fps, strict=True)):
            if fp in seen:
                continue
            seen.add(fp)
            where.append(i)
            rows.append(
                {
                    "title": n.item.title,
                    "body": n.item.body,
                    "url": n.url,
                    "source": n.source,
                    "published_at": n.published_at,
                    "imported_at": now,
                    "theme": n.theme or self.themes.classify(n.item.title, n.item.body),
                    "fingerprint": fp,
                    "author": n.author,
                }
            )
        ids: list[int | None] = [None] * len(new)
        if not rows:
            return ids
        try:
            with s.begin_nested():
                stmt = insert(Article).returning(Article.id, sort_by_parameter_order=True)
                for i, article_id in zip(where, s.scalars(stmt, rows), strict=True):
                    ids[i] = article_id
        except IntegrityError:
            again = (
                self.insert(s, n.item, n.source, n.url, n.theme, n.published_at, n.author, n.fingerprint_of)
                for n in new
            )
            return [a.id if a is not None else None for a in again]
        return ids

    def add(
        self,
        title: str,
        body: str,
        url: str | None = None,
        theme: str | None = None,
        published_at: datetime | None = None,
    ) -> Article:
        title = check_title(title)
        paragraphs = paragraphs_of(body, self.cleaner)
        if not paragraphs:
            raise InputError("the article body is empty")
        if theme is not None:
            self._check_theme(theme)
        item = ParsedArticle(title, paragraphs)
        with self.db.session() as s:
            article = self.insert(s, item, "cli", check_url(url), theme, published_at)
            if article is None:
                existing = s.scalar(select(Article.id).where(Article.fingerprint == fingerprint(item.body)))
                raise InputError(f"duplicate: the same text is already article #{existing}")
            return article

    def list(self, unsent: bool = False, theme: str | None = None) -> list[Article]:
        if theme is not None:
            self._check_theme(theme)
        q = select(Article)
        if unsent:
            q = q.where(Article.digest_id.is_(None))
        if theme:
            q = q.where(Article.theme == theme)
        with self.db.session() as s:
            rows = list(s.scalars(q))
        return sorted(rows, key=lambda a: (self.themes.order(a.theme), a.imported_at, a.id))

    def get(self, article_id: int) -> Article:
        with self.db.session() as s:
            article = s.get(Article, article_id)
            if article is None:
                raise NotFound(f"article #{article_id} does not exist")
            return article

    def set_theme(self, article_id: int, slug: str) -> Article:
        self._check_theme(slug)
        with self.db.session() as s:
            article = s.get(Article, article_id)
            if article is None:
                raise NotFound(f"article #{article_id} does not exist")
            if article.digest_id is not None:
                raise InputError(f"article #{article_id} is already in digest #{article.digest_id}")
            article.theme = slug
            return article

    def _unsent(self, s: Session, article_id: int, verb: str) -> Article:
        """The article, if it is unsent; else NotFound or a one-line InputError."""
        article = s.get(Article, article_id)
        if article is None:
            raise NotFound(f"article #{article_id} does not exist")
        if article.digest_id is not None:
            raise InputError(
                f"article #{article_id} is in digest #{article.digest_id}; only unsent ones can be {verb}"
            )
        return article

    def pin(self, article_id: int, pinned: bool = True) -> Article:
        """Pin (top of its section, chosen first for the next issue) or unpin. Pinning a
        pinned article keeps its place among the pinned."""
        return self._mark(article_id, "pinned_at", pinned, "pinned" if pinned else "unpinned")

    def hold(self, article_id: int, held: bool = True) -> Article:
        """Hold (kept out of every digest, stays unsent) or release."""
        return self._mark(article_id, "held_at", held, "held" if held else "released")

    def _mark(self, article_id: int, field: str, on: bool, verb: str) -> Article:
        """Set a timestamp mark (pinned_at, held_at) on an unsent article, or clear it; a
        mark already set keeps its time (the order among the pinned)."""
        with self.db.session() as s:
            article = self._unsent(s, article_id, verb)
            if not on:
                setattr(article, field, None)
            elif getattr(article, field) is None:
                setattr(article, field, utcnow())
            return article

    def edit(self, article_id: int, title: str | None = None, summary: str | None = None) -> Article:
        """A new title and/or summary ("" clears the summary) for an unsent article."""
        if title is None and summary is None:
            raise InputError("give --title, --summary or both")
        new_title = check_title(title) if title is not None else None
        new_summary = check_summary(summary) if summary is not None else None
        with self.db.session() as s:
            article = self._unsent(s, article_id, "edited")
            if new_title is not None:
                article.title = new_title
            if new_summary is not None:
                article.summary = new_summary
            return article

    def remove(self, article_id: int) -> Article:
        with self.db.session() as s:
            article = s.get(Article, article_id)
            if article is None:
                raise NotFound(f"article #{article_id} does not exist")
            if article.digest_id is not None:
                raise InputError(
                    f"article #{article_id} is in digest #{article.digest_id}; "
                    "only unsent ones can be removed"
                )
            s.delete(article)
            return article

    def _check_theme(self, slug: str) -> None:
        if slug not in self.themes.by_slug:
            known = ", ".join(self.cfg.theme_slugs)
            raise InputError(f"unknown theme {slug!r} (themes: {known})")
