"""The public archive ("Read online", issue 10) over real HTTP: waitress on loopback, SQLite
and PostgreSQL, digests really sent through an aiosmtpd server, and each subscriber's
unsubscribe link taken from the mail they received, so the pages can be searched for it.

- /archive lists the issues sent (only those), newest first; /archive/<n> is an issue as
  mailed, with public links where each reader had their own: no reader's token on it;
- every mail (HTML and text) opens with "View in browser", a link to its issue's page;
- /archive.atom is an Atom feed that feedparser reads cleanly, one entry per issue, with
  stable ids;
- web.archive = false: all three are 404 and the mail has no such link;
- an article's page names its source as readers know it, never the imported file.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import feedparser
import pytest

from mailer import campaign
from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config, ConfigInForce, load_config
from mailer.db import Database
from mailer.models import Article, utcnow
from mailer.subscribers import SubscriberStore
from tests.conftest import SEEDS, write_config
from tests.smtp_server import Received, SmtpServer
from tests.web_server import MAX_ARTICLES, Servers, WebServer, unsubscribe_url

READERS = ["ada@example.org", "bob@example.org", "cyd@example.org"]
STORY = "A second week of news, with a link to the site it came from"
STORY_URL = "https://www.example.net/2026/03/second-week"
SEED_FILE = re.compile(r"\d{3}_[0-9a-f]{16}\.txt")


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    # Every seed article fits in issue #1; issue #2 is a single article added afterwards.
    return write_config(
        tmp_path,
        smtp_server.port,
        database_url=database_url,
        digest={"max_articles": MAX_ARTICLES, "min_articles": 1},
    )


@pytest.fixture
def mails(db: Database, cfg: Config, smtp_server: SmtpServer) -> dict[int, list[Received]]:
    """Issues #1 and #2 really sent to READERS: {issue: the messages received}."""
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    for email in READERS:
        SubscriberStore(db).add(email)
    now = utcnow()
    campaign.send_now(db, cfg, now)
    first = list(smtp_server.received)
    ArticleStore(db, cfg).add(STORY, "What happened in the second week.\n\nAnd more.", url=STORY_URL)
    campaign.send_now(db, cfg, now + timedelta(minutes=1))
    second = smtp_server.received[len(first) :]
    assert len(first) == len(second) == len(READERS)
    return {1: first, 2: second}


@pytest.fixture
def servers(tmp_path: Path, smtp_server: SmtpServer, db: Database, cfg: Config) -> Iterator[Servers]:
    running = Servers(tmp_path, smtp_server.port, db)
    yield running
    running.close()


@pytest.fixture
def web(servers: Servers, db: Database, cfg: Config) -> WebServer:
    server = WebServer(db, cfg).start()
    servers.running.append(server)
    return server


def personal_links(mails: dict[int, list[Received]]) -> set[str]:
    """Every reader's unsubscribe URL, and the token in it, from the mails they received."""
    found = set()
    for received in (r for issue in mails.values() for r in issue):
        url = unsubscribe_url(received.message)
        token = urlsplit(url).path.rsplit("/", 1)[1]
        assert len(token) >= 16, url
        found |= {url, urlsplit(url).path, token}
    return found


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_the_archive_lists_the_issues_sent_newest_first_and_nothing_unsent(
    web: WebServer, db: Database, cfg: Config, mails: dict[int, list[Received]]
) -> None:
    # A third digest is built but not delivered yet: it is no issue of the archive.
    ArticleStore(db, cfg).add("Not sent yet", "Still being delivered.")
    building = digests.build(db, cfg, digests.manual_slot(utcnow() + timedelta(minutes=2)), manual=True)
    assert building is not None and building.issue_number == 3

    listing = web.get("/archive")

    assert listing.status == 200
    links = [(a.get("href"), a.text_content()) for a in listing.doc().cssselect("ul.issues a")]
    subjects = {r.issue: r.subject for r in digests.list_digests(db)}
    assert links == [("/archive/2", subjects[2]), ("/archive/1", subjects[1])]
    assert web.get("/archive/3").status == 404
    assert not personal_links(mails) & set(re.findall(r"[\w/:.%-]+", listing.body))


def test_an_issue_page_is_the_mail_with_public_links_and_no_readers_token(
    web: WebServer, db: Database, mails: dict[int, list[Received]]
) -> None:
    page = web.get("/archive/1")

    assert page.status == 200
    assert "script-src 'none'" in (page.headers["Content-Security-Policy"] or "")
    with db.reader() as s:
        titles = [a.title for a in s.query(Article).filter(Article.digest_id.is_not(None))]
    text = page.doc().text_content()
    assert titles and all(t in text for t in titles if t != STORY)
    assert STORY not in text  # it is in issue #2
    for secret in personal_links(mails):
        assert secret not in page.body, f"a reader's link on the public page: {secret}"
    assert "MAILER_" not in page.body  # no placeholder left either
    (unsubscribe,) = [a.get("href") for a in page.doc().cssselect("a") if a.text_content() == "Unsubscribe"]
    assert unsubscribe == f"{web.cfg.digest.base_url}/unsubscribe"
    explained = web.get(web.local(unsubscribe))
    assert explained.status == 200 and "link of your own" in explained.body
    bar = [a.get("href") for a in page.doc().cssselect("a")]
    assert "/archive" in bar and "/subscribe" in bar


def test_every_mail_opens_with_a_view_in_browser_link_to_its_issue(
    web: WebServer, mails: dict[int, list[Received]]
) -> None:
    for issue, received in mails.items():
        expected = f"{web.cfg.digest.base_url}/archive/{issue}"
        for r in received:
            text, html = parts(r.message)
            assert text.splitlines()[0] == f"View in browser: {expected}"
            (link,) = [a for a in re.findall(r'<a href="([^"]+)"[^>]*>View in browser</a>', html)]
            assert link == expected
            assert html.index("View in browser") < html.index(f"Issue #{issue}")
        page = web.get(web.local(expected))
        assert page.status == 200 and f"Issue #{issue}" in page.body


def test_the_atom_feed_has_one_entry_per_issue_with_stable_ids(
    web: WebServer, db: Database, mails: dict[int, list[Received]]
) -> None:
    first, second = web.get("/archive.atom"), web.get("/archive.atom")

    assert first.status == 200 and first.headers["Content-Type"].startswith("application/atom+xml")
    feeds = [feedparser.parse(reply.body) for reply in (first, second)]
    for feed in feeds:
        assert feed.bozo == 0, feed.get("bozo_exception")
        assert feed.version == "atom10"
    base = web.cfg.digest.base_url
    subjects = {r.issue: r.subject for r in digests.list_digests(db)}
    entries = feeds[0].entries
    assert [(e.id, e.title, e.link) for e in entries] == [
        (f"{base}/archive/{n}", subjects[n], f"{base}/archive/{n}") for n in (2, 1)
    ]
    assert [e.id for e in feeds[1].entries] == [e.id for e in entries]
    assert STORY in entries[0].content[0].value and STORY_URL in entries[0].content[0].value
    for secret in personal_links(mails):
        assert secret not in first.body


def test_archive_off_is_404_everywhere_and_the_mail_has_no_link(
    servers: Servers, db: Database, mails: dict[int, list[Received]]
) -> None:
    off = servers.start(web={"archive": False}, digest={"max_articles": MAX_ARTICLES, "min_articles": 1})

    for path in ("/archive", "/archive/1", "/archive.atom"):
        assert off.get(path).status == 404, path
    ArticleStore(db, off.cfg).add("One more", "For the preview.")
    preview = digests.preview(db, off.cfg)
    assert preview is not None
    assert "View in browser" not in preview.text and "View in browser" not in preview.html
    assert "/archive" not in preview.html


@pytest.mark.parametrize("path", ["/archive/99", "/archive/0", "/archive/abc", f"/archive/{2**64}"])
def test_an_unknown_issue_is_404(web: WebServer, mails: dict[int, list[Received]], path: str) -> None:
    assert web.get(path).status == 404


def test_an_article_page_names_its_source_never_the_imported_file(
    web: WebServer, db: Database, mails: dict[int, list[Received]]
) -> None:
    with db.reader() as s:
        articles = list(s.query(Article).order_by(Article.id))
    seeded = next(a for a in articles if SEED_FILE.fullmatch(a.source))
    teaser = next(a for a in articles if a.source == "South China Morning Post")
    linked = next(a for a in articles if a.title == STORY)

    for article, shown in ((seeded, None), (teaser, "South China Morning Post"), (linked, "example.net")):
        page = web.get(f"/articles/{article.id}")
        assert page.status == 200
        doc = page.doc()
        assert not SEED_FILE.search(page.body) and ".txt" not in page.body
        sources = [el.text_content() for el in doc.cssselect(".source")]
        assert sources == ([shown] if shown else [])
        assert doc.cssselect("h1")[0].text_content() == article.title
        assert doc.cssselect("time"), "the date"
        hrefs = [a.get("href") for a in doc.cssselect("a")]
        assert "/subscribe" in hrefs
        issue = 2 if article is linked else 1
        assert f"/archive/{issue}" in hrefs
        assert (STORY_URL in hrefs) == (article is linked)


def test_the_archive_follows_a_reload(tmp_path: Path, smtp_server: SmtpServer, db: Database) -> None:
    """web.archive is read per request: the same app serves or hides it as the config says."""
    on = load_config(str(tmp_path / "config.toml"))
    in_force = ConfigInForce(on)
    server = WebServer(db, in_force).start()  # type: ignore[arg-type]
    try:
        assert server.get("/archive").status == 200
        off = write_config(tmp_path, smtp_server.port, web={"archive": False})
        in_force.replace(load_config(str(off)))
        assert server.get("/archive").status == 404
    finally:
        server.close()
