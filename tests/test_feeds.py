"""Feeds polled for real: a real HTTP server on loopback (tests/feed_server.py) serving
feeds, the real poller, a real database (SQLite and PostgreSQL), and the CLI as an editor
types it. What is fetched and parsed in detail is in test_feed_fetch and test_feed_parse;
here, what a poll does with it: what is imported, once, and what each feed's row says."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from xml.sax.saxutils import escape

import pytest
from sqlalchemy import func, select

from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.errors import InputError
from mailer.feeds import poll, sources
from mailer.models import Article, Feed, FeedItem, utcnow
from tests.conftest import write_config
from tests.feed_server import FeedServer, Route

NOW = utcnow()
STORY = (
    "The committee voted on Tuesday to open an inquiry into the chip export rules. "
    "Members said the rules had been drafted in a hurry and needed a second look."
)


def rss(*items: tuple[str, str, str | None, datetime | None, str], ttl: int | None = None) -> bytes:
    """An RSS 2.0 document; each item is (guid, title, link, published, description)."""
    parts = []
    for guid, title, link, published, description in items:
        parts.append(
            "<item>"
            f"<guid isPermaLink='false'>{escape(guid)}</guid><title>{escape(title)}</title>"
            + (f"<link>{escape(link)}</link>" if link else "")
            + (f"<pubDate>{format_datetime(published)}</pubDate>" if published else "")
            + f"<description>{escape(description)}</description></item>"
        )
    channel_ttl = f"<ttl>{ttl}</ttl>" if ttl is not None else ""
    return (
        "<?xml version='1.0' encoding='utf-8'?><rss version='2.0'><channel>"
        f"<title>The Wire</title><link>https://wire.example/</link>{channel_ttl}{''.join(parts)}"
        "</channel></rss>"
    ).encode()


def item(n: int, age: timedelta = timedelta(hours=1), text: str = "") -> tuple[str, str, str, datetime, str]:
    return (
        f"wire-{n}",
        f"Story number {n} about chips",
        f"https://wire.example/{n}",
        NOW - age,
        text or f"Paragraph {n} of a story about chips and the people who make them.",
    )


@pytest.fixture
def feeds() -> Iterator[FeedServer]:
    with FeedServer() as server:
        yield server


def add(db: Database, cfg: Config, url: str, **kw: object) -> Feed:
    return sources.add(db, cfg, url, kw.get("theme"), str(kw.get("name", "")), bool(kw.get("full_text")))  # type: ignore[arg-type]


def feed_row(db: Database, feed_id: int) -> Feed:
    with db.reader() as s:
        row = s.get(Feed, feed_id)
        assert row is not None
        return row


def titles(db: Database) -> list[str]:
    with db.reader() as s:
        return sorted(s.scalars(select(Article.title)))


# ---------------------------------------------------------------- what a poll imports


def test_first_poll_imports_only_recent_items_and_names_the_feed(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    url = feeds.route("/wire.xml", body=rss(item(1), item(2, timedelta(days=3)), item(3, timedelta(days=30))))
    feed = add(db, cfg, url)

    [report] = poll.poll(db, cfg, due_only=False)

    assert (report.imported, report.too_old, report.known, report.error) == (2, 1, 0, "")
    assert titles(db) == ["Story number 1 about chips", "Story number 2 about chips"]
    row = feed_row(db, feed.id)
    assert (row.name, row.last_status, row.items_imported, row.last_imported) == ("The Wire", 200, 2, 2)
    with db.reader() as s:
        article = s.scalar(select(Article).where(Article.title == "Story number 1 about chips"))
        assert article is not None
        assert (article.url, article.source) == ("https://wire.example/1", "The Wire")
        assert article.published_at == (NOW - timedelta(hours=1)).replace(microsecond=0)


def test_second_poll_is_conditional_and_a_304_imports_nothing(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    url = feeds.route(
        "/wire.xml", body=rss(item(1)), etag='"v1"', last_modified="Wed, 25 Nov 2026 10:00:00 GMT"
    )
    add(db, cfg, url)
    poll.poll(db, cfg, due_only=False)

    [report] = poll.poll(db, cfg, due_only=False)

    second = feeds.requests("/wire.xml")[1].headers
    assert second["if-none-match"] == '"v1"'
    assert second["if-modified-since"] == "Wed, 25 Nov 2026 10:00:00 GMT"
    assert (report.http_status, report.imported, report.error) == (304, 0, "")
    assert titles(db) == ["Story number 1 about chips"]


def test_an_item_is_imported_once_even_after_its_article_is_removed(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    url = feeds.route("/wire.xml", body=rss(item(1)))
    add(db, cfg, url)
    poll.poll(db, cfg, due_only=False)
    feeds.route("/wire.xml", body=rss(item(2), item(1)))
    [report] = poll.poll(db, cfg, due_only=False)
    assert (report.imported, report.known) == (1, 1)

    store = ArticleStore(db, cfg)
    store.remove(next(a.id for a in store.list() if a.title.startswith("Story number 1")))
    [report] = poll.poll(db, cfg, due_only=False)

    assert (report.imported, report.known) == (0, 2)
    assert titles(db) == ["Story number 2 about chips"]


def test_the_same_story_from_two_feeds_and_a_file_is_stored_once(
    db: Database, cfg: Config, feeds: FeedServer, tmp_path: Path
) -> None:
    (tmp_path / "story.txt").write_text(f"Inquiry into chip export rules\n\n{STORY}\n", encoding="utf-8")
    ArticleStore(db, cfg).import_paths([str(tmp_path / "story.txt")])
    one = feeds.route("/one.xml", body=rss(("a", "Inquiry opened", "https://one.example/a", NOW, STORY)))
    two = feeds.route("/two.xml", body=rss(("b", "Chip rules inquiry", "https://two.example/b", NOW, STORY)))
    add(db, cfg, one)
    add(db, cfg, two)

    reports = poll.poll(db, cfg, due_only=False)

    assert [(r.imported, r.duplicates) for r in reports] == [(0, 1), (0, 1)]
    with db.reader() as s:
        assert s.scalar(select(func.count()).select_from(Article)) == 1
        assert s.scalar(select(func.count()).select_from(FeedItem)) == 2


def test_undated_items_are_the_archive_on_the_first_poll_and_news_afterwards(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    undated = ("u1", "An undated story", "https://wire.example/u1", None, "Text of the undated story here.")
    url = feeds.route("/wire.xml", body=rss(undated))
    add(db, cfg, url)
    [first] = poll.poll(db, cfg, due_only=False)
    feeds.route(
        "/wire.xml",
        body=rss(("u2", "Another undated", "https://wire.example/u2", None, "More text."), undated),
    )
    [second] = poll.poll(db, cfg, due_only=False)

    assert (first.imported, first.too_old) == (0, 1)
    assert (second.imported, second.known) == (1, 1)
    assert titles(db) == ["Another undated"]


def test_a_feed_theme_applies_to_every_item(db: Database, cfg: Config, feeds: FeedServer) -> None:
    url = feeds.route("/wire.xml", body=rss(item(1), item(2)))
    add(db, cfg, url, theme="policy")
    poll.poll(db, cfg, due_only=False)
    with db.reader() as s:
        assert set(s.scalars(select(Article.theme))) == {"policy"}


def test_the_digest_orders_articles_by_publication_date(db: Database, cfg: Config, feeds: FeedServer) -> None:
    newer, older = item(1, timedelta(hours=1)), item(2, timedelta(days=2))
    url = feeds.route("/wire.xml", body=rss(newer, older))
    add(db, cfg, url, theme="chips")
    poll.poll(db, cfg, due_only=False)

    preview = digests.preview(db, cfg)

    assert preview.text.index("Story number 2") < preview.text.index("Story number 1")


# ---------------------------------------------------------------- each feed's health


def test_a_permanent_redirect_moves_the_stored_url(db: Database, cfg: Config, feeds: FeedServer) -> None:
    new = feeds.route("/new.xml", body=rss(item(1)))
    old = feeds.route("/old.xml", status=301, headers={"Location": new})
    feed = add(db, cfg, old)

    [report] = poll.poll(db, cfg, due_only=False)

    row = feed_row(db, feed.id)
    assert (row.url, row.listed_url, report.imported) == (new, old, 1)
    assert report.notes == [f"moved permanently to {new}"]
    poll.poll(db, cfg, due_only=False)
    assert len(feeds.requests("/old.xml")) == 1 and len(feeds.requests("/new.xml")) == 2


def test_410_gone_disables_the_feed(db: Database, cfg: Config, feeds: FeedServer) -> None:
    feed = add(db, cfg, feeds.route("/gone.xml", status=410))

    [report] = poll.poll(db, cfg, due_only=False)

    assert report.error.startswith("410 Gone")
    row = feed_row(db, feed.id)
    assert (row.status, row.next_poll_at) == ("gone", None)
    assert poll.poll(db, cfg, due_only=False) == []
    assert len(feeds.requests("/gone.xml")) == 1


def test_failures_back_off_doubling_and_a_success_resets_them(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    feed = add(db, cfg, feeds.route("/wire.xml", status=500))
    hour = timedelta(minutes=cfg.feeds.interval_minutes)
    now = utcnow()
    waits = []
    for n in range(3):
        [report] = poll.poll(db, cfg, due_only=False, now=now + timedelta(days=n))
        waits.append(feed_row(db, feed.id).next_poll_at - (now + timedelta(days=n)))  # type: ignore[operator]
    assert report.error == "HTTP 500 Internal Server Error"
    assert waits == [hour, 2 * hour, 4 * hour]

    feeds.route("/wire.xml", body=rss(item(1)))
    poll.poll(db, cfg, due_only=False, now=now + timedelta(days=3))
    row = feed_row(db, feed.id)
    assert (row.failures, row.last_error, row.next_poll_at - (now + timedelta(days=3))) == (0, "", hour)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("route", "wait"),
    [
        pytest.param({"headers": {"Cache-Control": "max-age=7200"}}, timedelta(hours=2), id="max-age"),
        pytest.param(
            {"status": 429, "headers": {"Retry-After": "10800"}}, timedelta(hours=3), id="retry-after"
        ),
        pytest.param({"ttl": 240}, timedelta(hours=4), id="ttl"),
        pytest.param(
            {"headers": {"Cache-Control": "max-age=60"}}, timedelta(hours=1), id="shorter-than-interval"
        ),
    ],
)
def test_a_feed_is_never_polled_sooner_than_it_asks(
    db: Database, cfg: Config, feeds: FeedServer, route: dict[str, object], wait: timedelta
) -> None:
    fields = {k: v for k, v in route.items() if k != "ttl"}  # the parameters are shared: no pop
    url = feeds.route("/wire.xml", Route(body=rss(item(1), ttl=route.get("ttl")), **fields))  # type: ignore[arg-type]
    feed = add(db, cfg, url)
    now = utcnow()

    poll.poll(db, cfg, due_only=True, now=now)

    assert feed_row(db, feed.id).next_poll_at == (now + wait).replace(microsecond=now.microsecond)
    assert poll.poll(db, cfg, due_only=True, now=now + wait - timedelta(seconds=1)) == []
    assert len(poll.poll(db, cfg, due_only=True, now=now + wait)) == 1


def test_an_html_page_and_malformed_xml_each_get_one_line_and_the_rest_goes_on(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    page = add(
        db,
        cfg,
        feeds.route(
            "/page",
            body=b"<!doctype html><html><body><p>Hi</p></body></html>",
            headers={"Content-Type": "text/html"},
        ),
    )
    broken_body = rss(item(1), item(2)).replace(b"</channel></rss>", b"<item><title>Cut & off")
    broken = add(db, cfg, feeds.route("/broken.xml", body=broken_body))
    good = add(db, cfg, feeds.route("/good.xml", body=rss(item(3))))

    reports = {r.id: r for r in poll.poll(db, cfg, due_only=False)}

    assert reports[page.id].error.startswith("not a feed")
    assert reports[broken.id].error.startswith("malformed XML") and reports[broken.id].imported == 2
    assert (reports[good.id].error, reports[good.id].imported) == ("", 1)
    assert feed_row(db, page.id).failures == 1 and feed_row(db, broken.id).failures == 0

    # The broken feed is fetched whole again (no 304 hides it) and its problem stays listed.
    feeds.route("/broken.xml", body=broken_body, etag='"b1"')
    for _ in range(2):
        reports = {r.id: r for r in poll.poll(db, cfg, due_only=False)}
    assert reports[broken.id].http_status == 200
    assert feed_row(db, broken.id).last_error.startswith("malformed XML")
    assert "if-none-match" not in feeds.requests("/broken.xml")[-1].headers


def test_a_slow_feed_does_not_hold_up_the_others(
    db: Database, tmp_path: Path, smtp_server: object, database_url: str, feeds: FeedServer
) -> None:
    gate = threading.Event()
    slow = feeds.route("/slow.xml", body=rss(item(1)), wait_for=gate)
    fast = [feeds.route(f"/fast{n}.xml", body=rss(item(10 + n))) for n in range(4)]
    cfg = load_config(str(write_config(tmp_path, database_url=database_url, feeds={"concurrency": 2})))
    for url in (slow, *fast):
        add(db, cfg, url)
    done: list[list[poll.PollReport]] = []
    poller = threading.Thread(target=lambda: done.append(poll.poll(db, cfg, due_only=False)))
    poller.start()
    try:
        # Every fast feed is stored while the slow one is still waiting for its answer.
        deadline = utcnow() + timedelta(seconds=20)
        while len(titles(db)) < 4:
            assert utcnow() < deadline, titles(db)
            gate.wait(0.05)
        assert not done
    finally:
        gate.set()
        poller.join(30)
    assert [r.imported for r in done[0]] == [1, 1, 1, 1, 1]


# ---------------------------------------------------------------- the list of feeds


def test_config_feeds_are_synced_and_only_removed_from_the_file(
    db: Database, tmp_path: Path, database_url: str, feeds: FeedServer
) -> None:
    url = feeds.route("/wire.xml", body=rss(item(1)))
    path = write_config(tmp_path, database_url=database_url)
    text = path.read_text()
    path.write_text(text + f'\n[[feeds.sources]]\nurl = "{url}"\nname = "Wire"\ntheme = "chips"\n')
    cfg = load_config(str(path))

    [row] = sources.listed(db, cfg)
    assert (row.url, row.name, row.theme, row.origin) == (url, "Wire", "chips", "config")
    with pytest.raises(InputError, match=r"listed in config\.toml; remove it there"):
        sources.remove(db, cfg, url)

    path.write_text(text)
    assert sources.listed(db, load_config(str(path))) == []


def test_full_text_is_extracted_from_each_new_items_page(
    db: Database, cfg: Config, feeds: FeedServer
) -> None:
    page = (
        b"<html><body><nav>Home | World | Sport</nav><article><h1>Story number 1 about chips</h1>"
        b"<p>The whole first paragraph of the article, much longer than the summary in the feed.</p>"
        b"<p>A second paragraph that only the page has, with the details the summary left out.</p>"
        b"</article><footer>Copyright 2026 The Wire</footer></body></html>"
    )
    link = feeds.route("/story/1", body=page, headers={"Content-Type": "text/html; charset=utf-8"})
    url = feeds.route(
        "/wire.xml", body=rss(("w1", "Story number 1 about chips", link, NOW, "Short summary."))
    )
    add(db, cfg, url, full_text=True)

    poll.poll(db, cfg, due_only=False)

    with db.reader() as s:
        [article] = s.scalars(select(Article))
        assert article.paragraphs == [
            "The whole first paragraph of the article, much longer than the summary in the feed.",
            "A second paragraph that only the page has, with the details the summary left out.",
        ]
