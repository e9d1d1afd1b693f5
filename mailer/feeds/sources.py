"""The list of feeds: `[[feeds.sources]]` in config.toml and `mailer feeds add`, one table.

Both kinds live in the `feeds` table, because polling state (validators, health, the
next poll, the items seen) is per feed whatever listed it. A config entry is matched to its
row by `listed_url` and synced (added, its name, theme and full-text flag updated, removed
when it leaves the file) before every poll and listing, so the file stays the truth for its
feeds; `feeds remove` refuses them and says to edit the file. `url` starts as the listed URL
and follows permanent redirects; `feeds remove` accepts either, or the id.
"""

from __future__ import annotations

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from mailer.config import Config
from mailer.db import Database
from mailer.errors import InputError, NotFound
from mailer.feeds.fetch import check_feed_url
from mailer.models import Feed, FeedOrigin, FeedStatus, utcnow
from mailer.settings import FeedSource

MAX_NAME_CHARS = 200


def sync_config(db: Database, cfg: Config) -> None:
    """Make the config's feeds rows: one transaction, so a poll sees the file whole."""
    listed = {source.url: source for source in cfg.feeds.sources}
    with db.session() as s:
        rows = {f.listed_url: f for f in s.scalars(select(Feed))}
        for url, source in listed.items():
            row = rows.get(url)
            if row is None:
                s.add(
                    _new_row(
                        url, source.name, source.theme or None, source.fetch_full_text, FeedOrigin.CONFIG
                    )
                )
            elif row.origin == FeedOrigin.CLI:
                continue  # added by hand first: the command line's settings stay
            else:
                _update(row, source)
        gone = [f.id for f in rows.values() if f.origin == FeedOrigin.CONFIG and f.listed_url not in listed]
        if gone:
            s.execute(delete(Feed).where(Feed.id.in_(gone)))


def _update(row: Feed, source: FeedSource) -> None:
    # A name the first poll gave stays until the file names the feed itself.
    if source.name:
        row.name = source.name
    row.theme = source.theme or None
    row.fetch_full_text = source.fetch_full_text


def _new_row(url: str, name: str, theme: str | None, full_text: bool, origin: str) -> Feed:
    return Feed(
        listed_url=url,
        url=url,
        name=name,
        theme=theme,
        fetch_full_text=full_text,
        origin=origin,
        status=FeedStatus.ACTIVE,
        created_at=utcnow(),
        last_error="",
        last_notes="",
        last_imported=0,
        items_imported=0,
        failures=0,
        next_poll_at=utcnow(),  # due at once
    )


def add(db: Database, cfg: Config, url: str, theme: str | None, name: str, full_text: bool) -> Feed:
    """A new feed, due at once. A feed that went away (410) and is added again is polled
    again, from scratch but with the items it had already shown still known."""
    url = check_feed_url(url)
    if theme is not None and theme not in cfg.theme_slugs:
        raise InputError(f"unknown theme {theme!r} (themes: {', '.join(cfg.theme_slugs)})")
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"--name is longer than {MAX_NAME_CHARS} characters")
    sync_config(db, cfg)
    with db.session() as s:
        row = _find(s, url)
        if row is not None and row.status != FeedStatus.GONE:
            where = "config.toml" if row.origin == FeedOrigin.CONFIG else f"feed #{row.id}"
            raise InputError(f"{url} is already listed ({where})")
        if row is not None:
            row.status, row.next_poll_at, row.failures = FeedStatus.ACTIVE, utcnow(), 0
            row.url, row.etag, row.last_modified = url, None, None
            row.theme, row.fetch_full_text = theme, full_text
            row.name = name or row.name
            return row
        row = _new_row(url, name, theme, full_text, FeedOrigin.CLI)
        s.add(row)
        s.flush()
        return row


def listed(db: Database, cfg: Config) -> list[Feed]:
    sync_config(db, cfg)
    with db.reader() as s:
        return list(s.scalars(select(Feed).order_by(Feed.id)))


def remove(db: Database, cfg: Config, which: str) -> Feed:
    """Forget a feed added with `feeds add` (by id, URL or listed URL). Its articles stay."""
    sync_config(db, cfg)
    with db.session() as s:
        row = s.get(Feed, int(which)) if which.isdigit() else _find(s, which.strip())
        if row is None:
            raise NotFound(f"no feed {which!r} (see mailer feeds list)")
        if row.origin == FeedOrigin.CONFIG:
            raise InputError(f"{row.listed_url} is listed in config.toml; remove it there")
        s.delete(row)
        return row


def _find(s: Session, url: str) -> Feed | None:
    return s.scalar(select(Feed).where(or_(Feed.listed_url == url, Feed.url == url)))
