"""Articles: importing files, adding, listing, re-theming and removing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

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
)
from mailer.themes import Themes

MAX_FILE_BYTES = 20 * 1024 * 1024


@dataclass
class FileReport:
    path: str
    added: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def collect_files(paths: list[str]) -> list[Path]:
    """Files named directly, plus the .txt files in named folders (sorted, recursive)."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*.txt") if f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{raw}: no such file or folder")
    return files


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with nothing unprintable in it: the only links ever emitted."""
    parts = urlsplit(url)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and not any(c.isspace() or not c.isprintable() for c in url)
    )


def check_url(url: str | None) -> str | None:
    """Only absolute http(s) URLs are ever stored (and so ever emitted in a link)."""
    if not url:
        return None
    url = url.strip()
    if not is_http_url(url):
        raise InputError(f"--url {url!r}: only absolute http:// or https:// URLs are allowed")
    return url


class ArticleStore:
    def __init__(self, db: Database, cfg: Config) -> None:
        self.db = db
        self.cfg = cfg
        self.themes = Themes(cfg.themes)
        self.cleaner = Cleaner(cfg.articles)

    def import_paths(self, paths: list[str]) -> list[FileReport]:
        return [self.import_file(f) for f in collect_files(paths)]

    def import_file(self, path: Path) -> FileReport:
        """Import one file atomically: all its new articles, or (on error) none."""
        report = FileReport(str(path))
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise InputError(f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB")
            text = decode(path.read_bytes())
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
                    if self._insert(s, item, source=item.source_note or path.name) is None:
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

    def _insert(
        self,
        s: Session,
        item: ParsedArticle,
        source: str,
        url: str | None = None,
        theme: str | None = None,
        published_at: datetime | None = None,
    ) -> Article | None:
        """Insert unless an article with the same normalised body exists (then None)."""
        fp = fingerprint(item.body)
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
        )
        s.add(article)
        s.flush()
        return article

    def add(
        self,
        title: str,
        body: str,
        url: str | None = None,
        theme: str | None = None,
        published_at: datetime | None = None,
    ) -> Article:
        title = clean_line(title)
        if not title:
            raise InputError("--title is empty")
        if len(title) > MAX_TITLE_CHARS:
            raise InputError(f"--title is longer than {MAX_TITLE_CHARS} characters")
        paragraphs = paragraphs_of(body, self.cleaner)
        if not paragraphs:
            raise InputError("the article body is empty")
        if theme is not None:
            self._check_theme(theme)
        item = ParsedArticle(title, paragraphs)
        with self.db.session() as s:
            article = self._insert(s, item, "cli", check_url(url), theme, published_at)
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
