"""Articles: importing files, adding, listing, re-theming, shaping and removing.

Shaping the next issue (pin, hold, edit) changes only unsent articles: one that a digest
has reserved is frozen with that digest (its HTML and text are stored), so a change could
never reach its readers; each change is one transaction that checks `digest_id IS NULL`
on the row it changes, the same lock a digest's build takes, so a build sees the article
either before or after the change, never half of it.

What an import reads, and why nothing else is read:
* Only regular files. The type is checked with stat before the file is opened, because
  opening a FIFO blocks and a device such as /dev/zero never ends; the open itself is
  non-blocking, so a path swapped for a FIFO after the check cannot hang it either, and the
  opened file is checked again (fstat) before a byte is read.
* At most MAX_FILE_BYTES of it. The size is checked before reading, and the read asks for
  one byte more than the cap at most, so a file that grows meanwhile (or that reports a size
  of 0, as /proc files do) is refused without ever holding more than that in memory.
* In a folder, nothing outside it. A symlink is followed only when its target (resolved)
  is inside the folder; one that leaves it is reported as skipped and never opened. Linked
  folders are never entered: whatever they hold inside the folder is walked under its own
  name. The file opened must still be the one that was checked (same device and inode).
* Each file once. A file reached twice (a link to another file of the folder, or a path
  named twice) is read under its own name, and the other paths say which file they repeat.

About 435 lines: the import of files and the editor's per-article commands share one
store; the file import is the piece to move out next.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
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
    squash,
)
from mailer.themes import Themes

MAX_FILE_BYTES = 20 * 1024 * 1024
# An editor's summary stands in for the lead (about digest.lead_chars): room for a few
# sentences, not a second article.
MAX_SUMMARY_CHARS = 1000
LINK_LEAVES = "symlink leaves the folder"
# Not on every platform; where it is missing there are no FIFOs to block on either.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_KINDS = {
    stat.S_ISDIR: "folder",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
    stat.S_ISFIFO: "FIFO",
    stat.S_ISSOCK: "socket",
}


@dataclass
class FileReport:
    path: str
    added: int = 0
    duplicates: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Candidate:
    """A path found for import: to be read, or only reported (skip or error set)."""

    path: Path
    skip: str = ""
    error: str = ""
    # (st_dev, st_ino) when it was found: the file opened must still be this one.
    identity: tuple[int, int] | None = None


def collect_files(paths: list[str]) -> list[Candidate]:
    """Files named directly, plus the .txt files in named folders (sorted, recursive)."""
    found: list[Candidate] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found.extend(_folder_files(p))
        elif p.exists():  # a link named on the command line is followed: the user chose it
            found.append(Candidate(p))
        else:
            raise InputError(f"{raw}: no such file or folder")
    return _once_each(found)


def _folder_files(root: Path) -> list[Candidate]:
    inside = root.resolve()
    found: list[Candidate] = []

    def unreadable(exc: OSError) -> None:
        found.append(Candidate(Path(exc.filename), error=f"cannot read folder: {exc.strerror or exc}"))

    # followlinks=False: a linked folder is listed in `folders` but not entered.
    for here, folders, files in os.walk(root, onerror=unreadable):
        for name in folders:
            link = Path(here, name)
            if link.is_symlink() and (reason := _link_problem(link, inside)):
                found.append(Candidate(link, skip=reason))
        for name in files:
            if name.endswith(".txt"):
                path = Path(here, name)
                found.append(Candidate(path, skip=_link_problem(path, inside) if path.is_symlink() else ""))
    return sorted(found, key=lambda c: c.path)


def _link_problem(link: Path, inside: Path) -> str:
    """Why a link found in a folder is not followed ("" when it may be)."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError):  # a loop: RuntimeError before Python 3.13
        return "symlink loop"
    if not target.is_relative_to(inside):
        return f"{LINK_LEAVES} (to {target})"
    return "" if target.exists() else "broken symlink"


def _once_each(found: list[Candidate]) -> list[Candidate]:
    """Mark every path after the first that reaches the same file; own names go first."""
    first: dict[tuple[int, int], Path] = {}
    for c in sorted(found, key=lambda c: c.path.is_symlink()):  # stable: keeps the order otherwise
        if c.skip or c.error:
            continue
        try:
            st = c.path.stat()
        except OSError:
            continue  # reported when it is read
        c.identity = (st.st_dev, st.st_ino)
        if c.identity in first:
            c.skip = "named twice" if first[c.identity] == c.path else f"same file as {first[c.identity]}"
        else:
            first[c.identity] = c.path
    return found


def read_regular_file(path: Path, identity: tuple[int, int] | None = None) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, else an InputError saying why
    (see the module docstring for why each check is where it is)."""
    _check_regular(os.stat(path))
    fd = os.open(path, os.O_RDONLY | _NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        _check_regular(st)
        if identity is not None and (st.st_dev, st.st_ino) != identity:
            raise InputError("the file was replaced while being imported")
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(_too_large())
    return data


def _check_regular(st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS.items() if test(st.st_mode)), "special file")
        raise InputError(f"not a regular file (a {kind})")
    if st.st_size > MAX_FILE_BYTES:
        raise InputError(_too_large())


def _too_large() -> str:
    megabytes, rest = divmod(MAX_FILE_BYTES, 1024 * 1024)
    return f"file is larger than {f'{megabytes} MB' if not rest else f'{MAX_FILE_BYTES} bytes'}"


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
