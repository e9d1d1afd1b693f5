"""Polling feeds: claim, fetch and parse in parallel, store one feed per transaction.

Invariants, and why they hold:
* **One poller per feed at a time.** A feed is claimed before it is fetched with a
  compare-and-set (`UPDATE feeds SET claimed_until = … WHERE id = ? AND claimed_until is
  free`, then the row count), so the service's poll and a `feeds poll` never fetch one feed
  twice at once; a poller that dies leaves a claim that runs out after CLAIM_FOR.
* **One feed's trouble stays its own.** Fetches run in a bounded thread pool
  (`feeds.concurrency`), each with its own timeouts and size cap (mailer.feeds.fetch), so
  a slow or huge feed holds one worker for at most its total timeout and the others go on.
  Every outcome, error or not, is written to that feed's row only.
* **Each item once.** Every item a feed shows is recorded in `feed_items` by the hash of
  its key (guid, else link, else content), in the same transaction as the article it made,
  so an item is imported at most once per feed, even after its article is removed; across
  feeds and files, the article's unique body fingerprint stores a story once
  (ArticleStore.insert).
* **No flood from an archive.** Items older than `feeds.max_age_days` are recorded as
  seen but not imported; on a feed's first poll so are undated ones, whose age is unknown.
* **Polite.** The next poll is at least `feeds.interval_minutes` away, and further when the
  feed asks (Cache-Control max-age, Retry-After, <ttl>); failures back off, doubling.
  Only the main thread writes, one short transaction per feed (SQLite has one writer).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import insert, or_, select, update

from mailer.articles import ArticleStore, NewArticle
from mailer.config import Config
from mailer.db import Database
from mailer.feeds import sources
from mailer.feeds.fetch import Fetched, Limits, fetch, new_client
from mailer.feeds.fulltext import full_text
from mailer.feeds.parse import Item, ParsedFeed, parse_feed
from mailer.models import Feed, FeedItem, FeedStatus, utcnow
from mailer.parsing import ParsedArticle

log = logging.getLogger("mailer.feeds")

# Longer than any one feed's fetch can take (total timeout, plus its full-text pages).
CLAIM_FOR = timedelta(minutes=30)
# A feed's own wish (max-age, Retry-After, <ttl>) is honoured up to this.
MAX_WAIT = timedelta(days=7)
MAX_BACKOFF = timedelta(hours=24)
_CHUNK = 500  # keys per IN (…) query


@dataclass
class PollReport:
    """What one poll of one feed did: `feeds poll` prints it, --json in full."""

    id: int
    url: str
    name: str
    http_status: int | None = None
    imported: int = 0
    known: int = 0  # items seen on an earlier poll
    too_old: int = 0  # older than feeds.max_age_days (or undated, on the first poll)
    duplicates: int = 0  # the same text is already stored, from another feed or a file
    error: str = ""
    notes: list[str] = field(default_factory=list)
    next_poll_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Claimed:
    id: int
    url: str
    etag: str | None
    last_modified: str | None
    fetch_full_text: bool
    first_poll: bool


@dataclass
class _Outcome:
    feed: _Claimed
    fetched: Fetched
    parsed: ParsedFeed | None
    notes: list[str]


def limits_of(cfg: Config) -> Limits:
    f = cfg.feeds
    return Limits(
        connect_timeout=f.connect_timeout,
        read_timeout=f.read_timeout,
        total_timeout=max(2 * f.read_timeout, 60.0),
        max_bytes=int(f.max_megabytes * 1024 * 1024),
    )


def poll(db: Database, cfg: Config, *, due_only: bool, now: datetime | None = None) -> list[PollReport]:
    """Poll the active feeds (only those due, for the service), in parallel; a report per
    feed polled, in id order. Never raises for a feed's problem: it is in its report."""
    sources.sync_config(db, cfg)
    now = now or utcnow()  # after the sync: a feed it just added is due now
    claimed = _claim(db, due_only, now)
    if not claimed:
        return []
    limits = limits_of(cfg)
    reports = []
    workers = min(cfg.feeds.concurrency, len(claimed))
    with new_client(limits) as client, ThreadPoolExecutor(workers, thread_name_prefix="feed") as pool:
        futures = [pool.submit(_fetch, db, cfg, client, limits, feed, now) for feed in claimed]
        for future in as_completed(futures):
            reports.append(_store(db, cfg, future.result(), now))
    return sorted(reports, key=lambda r: r.id)


def _claim(db: Database, due_only: bool, now: datetime) -> list[_Claimed]:
    free = or_(Feed.claimed_until.is_(None), Feed.claimed_until <= now)
    columns = (Feed.id, Feed.url, Feed.etag, Feed.last_modified, Feed.fetch_full_text, Feed.last_polled_at)
    with db.session() as s:
        q = select(*columns).where(Feed.status == FeedStatus.ACTIVE, free).order_by(Feed.id)
        if due_only:
            q = q.where(Feed.next_poll_at <= now)
        claimed = []
        for f in s.execute(q).all():
            taken = s.execute(
                update(Feed).where(Feed.id == f.id, free).values(claimed_until=now + CLAIM_FOR),
                execution_options={"synchronize_session": False},  # no objects loaded to sync
            ).rowcount
            if taken == 1:
                claimed.append(
                    _Claimed(
                        f.id, f.url, f.etag, f.last_modified, f.fetch_full_text, f.last_polled_at is None
                    )
                )
        return claimed


def _fetch(
    db: Database, cfg: Config, client: httpx.Client, limits: Limits, feed: _Claimed, now: datetime
) -> _Outcome:
    """A worker's part: no writes (the main thread stores), only the full-text lookup reads."""
    fetched = fetch(client, feed.url, etag=feed.etag, last_modified=feed.last_modified, limits=limits)
    if not fetched.ok:
        return _Outcome(feed, fetched, None, [])
    parsed = parse_feed(fetched.body, fetched.url, fetched.content_type, now=now)
    # The body is parsed: only the items wait for the main thread (a poll of 200 feeds
    # would otherwise hold every body until the last is stored).
    fetched = replace(fetched, body=b"")
    notes: list[str] = []
    if feed.fetch_full_text and parsed.items:
        fresh = _unseen(db, feed.id, parsed.items)
        cutoff = now - timedelta(days=cfg.feeds.max_age_days)
        items = []
        for item in parsed.items:
            if item.key in fresh and item.link and (item.published or now) >= cutoff:
                paragraphs, problem = full_text(client, item.link, limits, item.title)
                if problem:
                    notes.append(f'item "{item.title}": full text: {problem}; its summary is used')
                item = replace(item, paragraphs=paragraphs or item.paragraphs)
            items.append(item)
        parsed = replace(parsed, items=items)
    return _Outcome(feed, fetched, parsed, notes)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _unseen(db: Database, feed_id: int, items: list[Item]) -> set[str]:
    """The keys of `items` this feed has never shown."""
    by_hash = {_key_hash(i.key): i.key for i in items}
    with db.reader() as s:
        seen = _seen_hashes(s, feed_id, by_hash)
    return {key for h, key in by_hash.items() if h not in seen}


def _seen_hashes(s: Any, feed_id: int, hashes: Iterable[str]) -> set[str]:
    hashes = list(hashes)
    seen: set[str] = set()
    for i in range(0, len(hashes), _CHUNK):
        chunk = hashes[i : i + _CHUNK]
        seen.update(
            s.scalars(
                select(FeedItem.key_hash).where(FeedItem.feed_id == feed_id, FeedItem.key_hash.in_(chunk))
            )
        )
    return seen


def _store(db: Database, cfg: Config, outcome: _Outcome, now: datetime) -> PollReport:
    feed, fetched = outcome.feed, outcome.fetched
    report = PollReport(feed.id, feed.url, "", http_status=fetched.status, notes=list(outcome.notes))
    store = ArticleStore(db, cfg)
    with db.session() as s:
        row = s.get(Feed, feed.id)
        if row is None:  # removed while it was fetched
            report.error = "removed while it was being polled"
            return report
        row.claimed_until = None
        row.last_polled_at = now
        row.last_status = fetched.status
        if fetched.moved_to and fetched.moved_to != row.url:
            report.notes.append(f"moved permanently to {fetched.moved_to}")
            row.url = fetched.moved_to  # report.url stays the URL this poll asked
        failed = False
        if fetched.status == 410:
            row.status = FeedStatus.GONE
            report.error = "410 Gone: the publisher removed the feed; it is no longer polled"
        elif fetched.not_modified:
            row.etag = fetched.etag or row.etag
            row.last_modified = fetched.last_modified or row.last_modified
        elif fetched.ok and outcome.parsed is not None:
            parsed = outcome.parsed
            report.notes.extend(parsed.notes)
            report.error = parsed.problem
            # A document that held nothing usable is a failure (an HTML page, garbage);
            # malformed XML that still gave items is not: what parsed is imported.
            failed = bool(parsed.problem) and not parsed.items
            # Validators only for a document read without a problem: a broken one is fetched
            # whole again, so its problem stays in `feeds list` until the publisher fixes it
            # (a 304 would clear it while the document stays broken).
            row.etag, row.last_modified = (
                (None, None) if parsed.problem else (fetched.etag, fetched.last_modified)
            )
            if not row.name:
                row.name = parsed.title[: sources.MAX_NAME_CHARS] or _host(row.url)
            _import(s, store, row, parsed.items, report, now, cfg.feeds.max_age_days, feed.first_poll)
        else:
            failed = True
            report.error = fetched.error or f"HTTP {fetched.status}"
        row.failures = row.failures + 1 if failed else 0
        row.last_error = report.error[:1000]
        row.last_notes = "\n".join(report.notes)
        row.last_imported = report.imported
        row.items_imported += report.imported
        if row.status == FeedStatus.ACTIVE:
            row.next_poll_at = now + _delay(cfg, row.failures, fetched, outcome.parsed)
        else:
            row.next_poll_at = None
        report.name, report.next_poll_at = row.name, row.next_poll_at
    _log(report)
    return report


def _import(
    s: Any,
    store: ArticleStore,
    row: Feed,
    items: list[Item],
    report: PollReport,
    now: datetime,
    days: int,
    first: bool,
) -> None:
    cutoff = now - timedelta(days=days)
    seen = _seen_hashes(s, row.id, (_key_hash(i.key) for i in items))
    fresh: list[tuple[str, Item | None]] = []  # (key hash, the item to import or None)
    for item in items:
        h = _key_hash(item.key)
        if h in seen:
            report.known += 1
            continue
        seen.add(h)
        if (item.published is None and first) or (item.published is not None and item.published < cutoff):
            report.too_old += 1
            fresh.append((h, None))
        else:
            fresh.append((h, item))
    new = [
        NewArticle(
            ParsedArticle(i.title, i.paragraphs),
            source=row.name or _host(row.url),
            url=i.link,
            theme=row.theme,
            published_at=i.published,
            author=i.author,
            fingerprint_of=i.body or f"{i.title}\n{i.link or ''}",
        )
        for _, i in fresh
        if i is not None
    ]
    ids = iter(store.insert_many(s, new))
    records = []
    for h, i in fresh:
        article_id = next(ids) if i is not None else None
        if i is not None:
            report.imported += article_id is not None
            report.duplicates += article_id is None
        records.append({"feed_id": row.id, "key_hash": h, "article_id": article_id, "seen_at": now})
    if records:
        s.execute(insert(FeedItem), records)
    if report.too_old and first:
        report.notes.append(
            f"first poll: {report.too_old} item(s) older than {days} day(s) or undated taken as the archive"
        )


def _delay(cfg: Config, failures: int, fetched: Fetched, parsed: ParsedFeed | None) -> timedelta:
    interval = timedelta(minutes=cfg.feeds.interval_minutes)
    if failures:
        interval = min(interval * 2 ** min(failures - 1, 10), max(MAX_BACKOFF, interval))
    wishes = [w for w in (fetched.wait, parsed.ttl if parsed else None) if w is not None]
    return max([interval, *(min(w, MAX_WAIT) for w in wishes)])


def _host(url: str) -> str:
    return (httpx.URL(url).host or url).removeprefix("www.")


def _log(report: PollReport) -> None:
    """One line per problem (the service's log is where an editor finds them), and one
    INFO line per feed polled."""
    where = f"feed {report.url}"
    if report.error:
        log.warning("%s: %s", where, report.error)
    for note in report.notes:
        log.warning("%s: %s", where, note)
    log.info(
        "%s: HTTP %s, %d imported, %d known, %d too old, %d duplicate(s)",
        where,
        report.http_status,
        report.imported,
        report.known,
        report.too_old,
        report.duplicates,
    )
