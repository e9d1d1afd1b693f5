"""The web app over real HTTP: waitress on loopback, a real SQLite file, digests really sent
to an aiosmtpd server, and the unsubscribe links taken from what subscribers received."""

from __future__ import annotations

import base64
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time
from sqlalchemy import func, select

from mailer import campaign, render
from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.catcher import MailCatcher, list_messages, save
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Article, Delivery, Digest, Subscriber, utcnow
from mailer.scheduler import Schedule
from mailer.subscribers import SubscriberStore, set_status
from mailer.web import MAX_BODY_BYTES
from tests.conftest import SEEDS
from tests.smtp_server import SmtpServer, free_port
from tests.web_server import (
    FORM,
    ONE_CLICK,
    Reply,
    WebServer,
    statuses,
    unsubscribe_paths,
    unsubscribe_url,
    write_test_config,
)

ADA = "ada@example.org"
BOB = "bob@example.org"
HOSTILE = "<script>alert(1)</script>"
NOT_VALID = "This unsubscribe link is not valid. Nothing was changed."


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_test_config(tmp_path, smtp_server.port, database_url)


@pytest.fixture
def serve(
    tmp_path: Path, smtp_server: SmtpServer, db: Database, cfg: Config
) -> Iterator[Callable[..., WebServer]]:
    """Start the app on a real server: with the test config, another Config, or overrides
    (written next to the test config, so the database and the secret key are the same)."""
    servers: list[WebServer] = []

    def start(config: Config | None = None, **sections: dict[str, object]) -> WebServer:
        if config is None:
            config = (
                load_config(str(write_test_config(tmp_path, smtp_server.port, **sections)))
                if sections
                else cfg
            )
        server = WebServer(db, config).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def web(serve: Callable[..., WebServer]) -> WebServer:
    return serve()


@pytest.fixture
def articles(db: Database, cfg: Config) -> list[Article]:
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    unsent = ArticleStore(db, cfg).list(unsent=True)
    assert 30 < len(unsent) <= cfg.digest.max_articles
    return unsent


@pytest.fixture
def readers(db: Database) -> list[str]:
    for email in (ADA, BOB):
        SubscriberStore(db).add(email, email.split("@")[0].title())
    return [ADA, BOB]


@pytest.fixture
def links(
    db: Database, cfg: Config, articles: list[Article], readers: list[str], smtp_server: SmtpServer
) -> dict[str, str]:
    """Send a real digest; {subscriber: path of the unsubscribe URL in their mail}."""
    campaign.send_now(db, cfg, utcnow())
    paths = unsubscribe_paths(smtp_server)
    assert sorted(paths) == sorted(readers)
    return paths


def rows(reply: Reply, selector: str) -> list[list[str]]:
    """The cell texts (th and td) of the table rows matched by `selector`; rows of header
    cells only are left out."""
    return [
        [c.text_content().strip() for c in tr.xpath("./th | ./td")]
        for tr in reply.doc().cssselect(selector)
        if tr.xpath("./td")
    ]


def state(db: Database) -> tuple[int, int, list[int]]:
    """(digests, deliveries, unsent article ids): everything a preview must not touch."""
    with db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(Digest)) or 0,
            s.scalar(select(func.count()).select_from(Delivery)) or 0,
            sorted(s.scalars(select(Article.id).where(Article.digest_id.is_(None)))),
        )


def as_preview(cfg: Config, message_part: str, subscriber_url: str) -> str:
    """A part of a received mail with the subscriber's own unsubscribe and preferences URLs
    swapped for the preview's, and MIME's CRLF line ends back to plain newlines."""
    body = message_part.replace("\r\n", "\n")
    assert subscriber_url in body
    base = cfg.digest.base_url
    own_preferences = re.compile(re.escape(base) + r"/preferences/\d+\.[A-Za-z0-9_-]{43}")
    assert own_preferences.search(body)
    body = own_preferences.sub(base + render.PREVIEW_PREFERENCES, body)
    return body.replace(subscriber_url, base + render.PREVIEW_UNSUBSCRIBE)


def bounce(db: Database, email: str) -> None:
    """What delivery does after a permanent failure: the subscriber is `bounced`."""
    with db.session() as s:
        set_status(s, s.scalars(select(Subscriber).where(Subscriber.email == email)).one(), "bounced")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def assert_clean_error(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.request, reply.body[:300])
    assert "Traceback" not in reply.body, reply.request
    assert 'File "' not in reply.body, reply.request


# ---------------------------------------------------------------- dashboard


def test_dashboard_shows_the_next_send_time_in_the_configured_zone(serve: Callable[..., WebServer]) -> None:
    web = serve(schedule={"cron": "30 7 * * wed", "timezone": "Asia/Kolkata"})
    zone = ZoneInfo("Asia/Kolkata")
    now = datetime.now(zone)
    at = datetime.combine(now.date() + timedelta(days=(2 - now.weekday()) % 7), time(7, 30), zone)
    if at <= now:
        at += timedelta(days=7)

    page = web.get("/")

    assert page.status == 200
    shown = page.doc().cssselect("#next-send strong")[0].text_content()
    # 07:30 IST is 02:00 UTC: a page showing the UTC time (or the server's) fails here.
    assert shown == at.strftime("%a %d %b %Y %H:%M %Z")
    assert shown.endswith("07:30 IST")


def test_dashboard_counts_unsent_articles_per_theme_in_theme_order(
    web: WebServer, db: Database, cfg: Config, articles: list[Article]
) -> None:
    per_theme = Counter(a.theme for a in articles)
    expected = [[t.name, t.slug, str(per_theme.get(t.slug, 0))] for t in cfg.themes]
    assert len([row for row in expected if row[2] != "0"]) > 3

    assert rows(web.get("/"), "#unsent tr") == expected
    ArticleStore(db, cfg).add("A late one about robots", "Humanoid robots walk.", theme="robotics")
    after = {slug: n for _name, slug, n in rows(web.get("/"), "#unsent tr")}
    assert after["robotics"] == str(per_theme["robotics"] + 1)


def test_dashboard_counts_subscribers_by_status(web: WebServer, db: Database) -> None:
    store = SubscriberStore(db)
    for email in (ADA, BOB, "cy@example.org", "dee@example.org", "eve@example.org"):
        store.add(email)
    store.unsubscribe("cy@example.org")
    bounce(db, "dee@example.org")

    counts = dict(rows(web.get("/"), "#subscribers tr"))  # type: ignore[arg-type]

    assert counts == {"pending": "0", "active": "3", "unsubscribed": "1", "bounced": "1", "complained": "0"}


def test_dashboard_lists_a_digest_once_it_is_sent(
    web: WebServer, db: Database, cfg: Config, articles: list[Article], readers: list[str]
) -> None:
    before = web.get("/").doc().cssselect("#recent")[0].text_content()
    assert "No digests yet." in before

    campaign.send_now(db, cfg, utcnow())

    (digest,) = digests.list_digests(db)
    page = web.get("/")
    issue, _slot, status, count, sent, pending, failed, bounced, complaints, subject = rows(
        page, "#recent tr"
    )[0]
    assert (issue, status, count, sent, pending, failed) == ("#1", "sent", str(len(articles)), "2", "0", "0")
    assert (bounced, complaints) == ("0", "0")
    assert subject == digest.subject and subject.startswith(cfg.digest.name + " #1: ")
    assert page.doc().cssselect("#recent a")[0].get("href") == f"/digests/{digest.id}"


# ---------------------------------------------------------------- preview


def test_preview_is_exactly_the_html_and_text_a_subscriber_receives(
    web: WebServer,
    db: Database,
    cfg: Config,
    articles: list[Article],
    readers: list[str],
    smtp_server: SmtpServer,
) -> None:
    html = web.get("/preview")
    text = web.get("/preview.txt")
    assert html.headers.get_content_type() == "text/html"
    assert text.headers.get_content_type() == "text/plain"

    # Send for the very slot the preview announced, so the issue date is the same.
    slot = Schedule(cfg.schedule.cron, cfg.schedule.timezone).next_slots(utcnow(), 1)[0]
    campaign.send_now(db, cfg, slot.at)

    message = smtp_server.handler.to(ADA)[0].message
    url = unsubscribe_url(message)
    assert html.body == as_preview(cfg, message.get_body(("html",)).get_content(), url)
    assert text.body == as_preview(cfg, message.get_body(("plain",)).get_content(), url)


def test_preview_html_is_mail_ready_with_one_section_per_theme(
    serve: Callable[..., WebServer], cfg: Config, articles: list[Article]
) -> None:
    web = serve(digest={"language": "de"})

    doc = web.get("/preview").doc()

    assert doc.get("lang") == "de"
    tables = doc.cssselect("table")
    assert tables and all(t.get("role") == "presentation" for t in tables)
    assert not doc.cssselect('link[rel="stylesheet"], script')
    # CSS inlined: the rules of the <style> block sit on the elements themselves.
    items = doc.cssselect("td.item")
    assert len(items) == len(articles)
    assert all("padding:12px 32px" in (td.get("style") or "") for td in items)
    headings = doc.cssselect("td.sec")
    assert all("text-transform:uppercase" in (td.get("style") or "") for td in headings)
    present = {a.theme for a in articles}
    assert [h.text_content().strip() for h in headings] == [t.name for t in cfg.themes if t.slug in present]
    assert sorted(a.text_content() for a in doc.cssselect("h2.t a")) == sorted(a.title for a in articles)
    assert doc.cssselect(f'a[href="{cfg.digest.base_url}/unsubscribe/preview"]')


def test_preview_text_lists_every_section_and_title(
    web: WebServer, cfg: Config, articles: list[Article]
) -> None:
    text = web.get("/preview.txt").body

    headings = [t.name.upper() for t in cfg.themes if t.slug in {a.theme for a in articles}]
    positions = [text.index("\n" + h + "\n") for h in headings]
    assert positions == sorted(positions)
    flat = " ".join(text.split())  # long titles are wrapped at 72 columns
    assert all(" ".join(a.title.split()) in flat for a in articles)
    assert f"Unsubscribe: {cfg.digest.base_url}/unsubscribe/preview" in text


def test_previewing_changes_no_state(
    web: WebServer, db: Database, articles: list[Article], readers: list[str]
) -> None:
    before = state(db)
    assert before == (0, 0, sorted(a.id for a in articles))

    pages = [web.get(path) for path in ("/preview", "/preview.txt", "/preview", "/preview.txt")]

    assert [p.status for p in pages] == [200] * 4
    assert all("Issue #1" in p.body for p in pages)
    assert state(db) == before


def test_preview_with_nothing_unsent_says_so(web: WebServer) -> None:
    html = web.get("/preview")
    text = web.get("/preview.txt")

    assert html.status == 200 and "Nothing to preview: no unsent articles." in html.body
    assert text.status == 200 and text.body == "Nothing to preview: no unsent articles.\n"


# ---------------------------------------------------------------- article pages


def test_each_article_page_shows_its_title_and_paragraphs(web: WebServer, articles: list[Article]) -> None:
    for a in articles:
        page = web.get(f"/articles/{a.id}")
        assert page.status == 200
        (article,) = page.doc().cssselect("article")
        assert article.cssselect("h1")[0].text_content() == a.title
        paragraphs = [p.text_content() for p in article.cssselect("h1 ~ p")]
        assert paragraphs[: len(a.paragraphs)] == a.paragraphs


def test_markup_in_articles_and_theme_names_is_shown_as_text_on_every_page(
    tmp_path: Path,
    smtp_server: SmtpServer,
    db: Database,
    serve: Callable[..., WebServer],
    articles: list[Article],
) -> None:
    path = write_test_config(tmp_path, smtp_server.port)
    theme_name = f"More <b>news</b> {HOSTILE}"
    path.write_text(path.read_text().replace('name = "More news"', f'name = "{theme_name}"'))
    cfg = load_config(str(path))
    title = f"Breaking {HOSTILE} <b>news</b>"
    body = f"First {HOSTILE} paragraph.\n\nSecond <b>bold</b> paragraph."
    article = ArticleStore(db, cfg).add(title, body, theme="other")
    SubscriberStore(db).add(ADA)
    web = serve(cfg)

    def assert_inert(page: Reply, *texts: str) -> None:
        assert page.status == 200
        assert HOSTILE not in page.body and "<b>" not in page.body
        doc = page.doc()
        assert not doc.xpath("//script | //b")
        shown = doc.text_content()
        for text in texts:
            assert text in shown

    assert_inert(
        web.get(f"/articles/{article.id}"),
        title,
        f"First {HOSTILE} paragraph.",
        "Second <b>bold</b> paragraph.",
        theme_name,
    )
    assert_inert(web.get("/preview"), title, f"First {HOSTILE} paragraph.", theme_name)
    assert_inert(web.get("/"), theme_name)
    campaign.send_now(db, cfg, utcnow())
    (digest,) = digests.list_digests(db)
    assert_inert(web.get(f"/digests/{digest.id}"), title, theme_name)


# ---------------------------------------------------------------- past digests


def test_past_digests_are_listed_and_each_shows_what_was_mailed(
    web: WebServer, db: Database, cfg: Config, links: dict[str, str], smtp_server: SmtpServer
) -> None:
    (digest,) = digests.list_digests(db)
    listing = web.get("/digests")
    assert rows(listing, "table tr")[0][0] == "#1"
    assert listing.doc().cssselect("table a")[0].get("href") == f"/digests/{digest.id}"

    html = web.get(f"/digests/{digest.id}")
    text = web.get(f"/digests/{digest.id}.txt")

    message = smtp_server.handler.to(BOB)[0].message
    url = unsubscribe_url(message)
    assert html.body == as_preview(cfg, message.get_body(("html",)).get_content(), url)
    assert text.body == as_preview(cfg, message.get_body(("plain",)).get_content(), url)
    assert text.headers.get_content_type() == "text/plain"
    assert render.UNSUBSCRIBE_PLACEHOLDER not in html.body + text.body
    assert_clean_error(web.get(f"/digests/{digest.id + 1}"), 404)


def test_a_skipped_slot_is_listed_but_has_no_page(web: WebServer, db: Database, cfg: Config) -> None:
    skipped = digests.build(db, cfg, digests.manual_slot(utcnow()))
    assert skipped is not None and skipped.status == "skipped"

    listing = rows(web.get("/digests"), "table tr")

    assert listing[0][0] == "-" and listing[0][2] == "skipped"
    assert listing[0][-1].startswith("skipped: 0 unsent article(s)")
    assert_clean_error(web.get(f"/digests/{skipped.id}"), 404)
    assert_clean_error(web.get(f"/digests/{skipped.id}.txt"), 404)


# ---------------------------------------------------------------- mail catcher


def test_mail_pages_show_the_messages_the_catcher_received(
    serve: Callable[..., WebServer], db: Database, articles: list[Article], readers: list[str]
) -> None:
    port = free_port()
    web = serve(smtp={"port": port}, catcher={"enabled": True, "port": port})
    catcher = MailCatcher(web.cfg.catcher.host, port, web.cfg.resolve(web.cfg.catcher.folder))
    catcher.start()
    try:
        campaign.send_now(db, web.cfg, utcnow())
    finally:
        catcher.stop()
    (digest,) = digests.list_digests(db)

    listing = web.get("/mail")
    assert listing.doc().cssselect('header a[href="/mail"]')
    caught = rows(listing, "table tr")
    assert sorted(r[1] for r in caught) == ["Ada <ada@example.org>", "Bob <bob@example.org>"]
    assert {r[2] for r in caught} == {digest.subject}

    href = listing.doc().cssselect("table a")[0].get("href")
    shown = web.get(href)
    headers = dict(rows(shown, "div.card tr"))  # type: ignore[arg-type]
    assert headers["Subject"] == digest.subject
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert (
        f"Unsubscribe: {web.cfg.digest.base_url}/unsubscribe/"
        in shown.doc().cssselect("pre")[0].text_content()
    )
    (frame,) = shown.doc().cssselect("iframe")
    assert frame.get("src") == href + "/html" and frame.get("sandbox") is not None

    html = web.get(href + "/html")
    assert html.status == 200 and articles[0].title in html.doc().text_content()
    assert (html.headers["Content-Security-Policy"] or "").startswith("sandbox;")

    assert_clean_error(web.get("/mail/20990101T000000-" + "0" * 32 + ".eml"), 404)
    assert_clean_error(web.get("/mail/..%2Fconfig.toml"), 404)


def test_caught_mail_is_listed_newest_first_also_within_one_second(tmp_path: Path) -> None:
    subjects = [f"mail {i}" for i in range(20)]
    with freeze_time("2026-11-26 10:00:00.000001", tick=True):  # all 20 in the same second
        for subject in subjects:
            save(tmp_path, f"Subject: {subject}\r\n\r\nhello\r\n".encode())

    assert [m.subject for m in list_messages(tmp_path)] == subjects[::-1]
    assert {m.received for m in list_messages(tmp_path)} == {datetime(2026, 11, 26, 10, tzinfo=UTC)}


def test_mail_pages_are_404_when_the_catcher_is_off(web: WebServer, cfg: Config) -> None:
    assert not cfg.catcher.enabled
    name = save(
        cfg.resolve(cfg.catcher.folder), b"Subject: caught\r\nTo: a@example.org\r\n\r\nhello\r\n"
    ).name

    for path in ("/mail", f"/mail/{name}", f"/mail/{name}/html"):
        assert_clean_error(web.get(path), 404)
    assert not web.get("/").doc().cssselect('a[href="/mail"]')


# ---------------------------------------------------------------- unsubscribe


def test_one_click_post_unsubscribes_at_once(web: WebServer, db: Database, links: dict[str, str]) -> None:
    reply = web.post(links[ADA], ONE_CLICK)

    assert reply.status == 200
    assert reply.headers["Location"] is None and reply.headers["Set-Cookie"] is None
    assert "You are unsubscribed" in reply.body and ADA in reply.body
    assert statuses(db) == {ADA: "unsubscribed", BOB: "active"}


def test_get_of_an_unsubscribe_link_only_shows_a_button_that_posts(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    pages = [web.get(links[ADA]) for _ in range(2)]

    assert [p.status for p in pages] == [200, 200]
    assert statuses(db) == {ADA: "active", BOB: "active"}
    (form,) = pages[0].doc().cssselect("form")
    assert form.get("method") == "post" and form.get("action") == links[ADA]
    assert len(form.cssselect("button")) == 1
    assert [(i.get("name"), i.get("value")) for i in form.cssselect("input")] == [
        ("List-Unsubscribe", "One-Click")
    ]


def test_resubscribe_from_the_confirmation_page(web: WebServer, db: Database, links: dict[str, str]) -> None:
    done = web.post(links[ADA], ONE_CLICK)
    assert statuses(db)[ADA] == "unsubscribed"
    (form,) = done.doc().cssselect("form")
    assert form.get("method") == "post"

    again = web.post(form.get("action"), b"")

    assert again.status == 200 and "Welcome back" in again.body
    assert statuses(db) == {ADA: "active", BOB: "active"}


def test_resubscribe_does_not_reactivate_a_bounced_address(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    again = resubscribe_action(web, links[ADA])
    bounce(db, ADA)

    reply = web.post(again, b"")

    assert reply.status == 200 and "Not changed" in reply.body
    assert statuses(db)[ADA] == "bounced"


def resubscribe_action(web: WebServer, link: str) -> str:
    """Unsubscribe with `link`; the confirmation page's "Subscribe again" form action."""
    done = web.post(link, ONE_CLICK)
    assert done.status == 200, done.body
    (form,) = done.doc().cssselect("form")
    action = form.get("action")
    assert form.get("method") == "post" and action.startswith("/resubscribe/")
    return action


def _flip_last(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def _other_id(token: str) -> str:
    sub_id, mac = token.split(".")
    return f"{int(sub_id) % 2 + 1}.{mac}"  # subscriber 1's signature on 2, and 2's on 1


BAD_TOKENS: dict[str, Callable[[str], str]] = {
    "tampered": _flip_last,
    "truncated": lambda t: t[:-1],
    "extended": lambda t: t + "A",
    "forged signature": lambda t: (
        t.split(".")[0] + "." + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()[:43]
    ),
    "another subscriber's id": _other_id,
    "no id": lambda t: t.split(".")[1],
    "garbage": lambda t: "not-a-token",
}


def test_a_bad_token_gets_400_and_changes_nothing(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    SubscriberStore(db).unsubscribe(BOB)  # so a forged resubscribe would show
    before = statuses(db)
    for kind, corrupt in BAD_TOKENS.items():
        for path in links.values():
            token = path.rsplit("/", 1)[1]
            bad = corrupt(token)
            assert bad != token
            for reply in (
                web.get(f"/unsubscribe/{bad}"),
                web.post(f"/unsubscribe/{bad}", ONE_CLICK),
            ):
                assert_clean_error(reply, 400)
                assert NOT_VALID in reply.body, kind
            # Resubscribing takes a fresh token from the confirmation page (tests/test_web_resubscribe.py).
            reply = web.post(f"/resubscribe/{bad}", b"")
            assert_clean_error(reply, 400)
            assert "Nothing was changed" in reply.body, kind
        assert statuses(db) == before == {ADA: "active", BOB: "unsubscribed"}, kind


def test_a_forgotten_subscribers_link_gets_400_even_when_their_id_is_reused(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    store = SubscriberStore(db)
    store.forget(BOB)
    newcomer, _ = store.add("cy@example.org")
    old_id = int(links[BOB].rsplit("/", 1)[1].split(".")[0])
    assert newcomer.id >= old_id  # SQLite may hand the freed id to the next row

    for reply in (web.get(links[BOB]), web.post(links[BOB], ONE_CLICK)):
        assert_clean_error(reply, 400)
        assert NOT_VALID in reply.body
    assert statuses(db) == {ADA: "active", "cy@example.org": "active"}


def test_the_preview_unsubscribe_link_belongs_to_nobody(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    page = web.get(render.PREVIEW_UNSUBSCRIBE)
    assert page.status == 200 and "does not belong to a subscriber" in page.body
    assert not page.doc().cssselect("form")

    assert_clean_error(web.post(render.PREVIEW_UNSUBSCRIBE, ONE_CLICK), 400)
    assert statuses(db) == {ADA: "active", BOB: "active"}


# ---------------------------------------------------------------- who may see what

EDITOR_PAGES = ["/", "/preview", "/preview.txt", "/digests", "/digests/1", "/digests/1.txt", "/mail"]
PASSWORD = "correct horse battery"


def test_editor_pages_are_open_on_loopback(serve: Callable[..., WebServer], links: dict[str, str]) -> None:
    web = serve(catcher={"enabled": True})
    assert {path: web.get(path).status for path in EDITOR_PAGES} == dict.fromkeys(EDITOR_PAGES, 200)


def test_editor_pages_do_not_exist_off_loopback_without_a_password(
    serve: Callable[..., WebServer], links: dict[str, str]
) -> None:
    web = serve(catcher={"enabled": True}, web={"host": "0.0.0.0"})
    for path in EDITOR_PAGES:
        assert_clean_error(web.get(path), 404)
        assert_clean_error(web.get(path, headers=basic("editor", "")), 404)


def test_editor_pages_need_the_password_off_loopback(
    serve: Callable[..., WebServer], links: dict[str, str]
) -> None:
    web = serve(catcher={"enabled": True}, web={"host": "0.0.0.0", "password": PASSWORD})
    for path in EDITOR_PAGES:
        refused = web.get(path)
        assert refused.status == 401, path
        assert refused.headers["WWW-Authenticate"] == 'Basic realm="mailer editor"'
        assert web.get(path, headers=basic("editor", PASSWORD + "x")).status == 401, path
        assert web.get(path, headers=basic("editor", PASSWORD)).status == 200, path


@pytest.mark.parametrize("password", ["", PASSWORD], ids=["no password", "password"])
def test_article_and_unsubscribe_pages_stay_public_off_loopback(
    serve: Callable[..., WebServer],
    db: Database,
    articles: list[Article],
    links: dict[str, str],
    password: str,
) -> None:
    web = serve(web={"host": "0.0.0.0", "password": password})

    assert web.get(f"/articles/{articles[0].id}").status == 200
    assert web.get("/healthz").status == 200
    page = web.get(links[ADA])  # what a reader's click on the link in the mail fetches
    assert page.status == 200 and page.doc().cssselect(f'form[action="{links[ADA]}"] button')
    again = resubscribe_action(web, links[ADA])
    assert statuses(db)[ADA] == "unsubscribed"
    assert web.post(again, b"").status == 200
    assert statuses(db)[ADA] == "active"


# ---------------------------------------------------------------- malformed requests


def test_a_body_over_the_limit_gets_413_and_changes_nothing(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    padded = ONE_CLICK + b"&pad=" + b"x" * MAX_BODY_BYTES

    assert_clean_error(web.post(links[ADA], padded), 413)
    chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(padded), padded)
    raw = web.raw(
        b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n%s" % (links[ADA].encode(), chunk)
    )
    assert raw.startswith(b"HTTP/1.1 413 ") and b"Traceback" not in raw
    assert statuses(db) == {ADA: "active", BOB: "active"}
    # The limit is the limit, not zero: a body of exactly that size is served.
    exact = ONE_CLICK + b"&pad=" + b"x" * (MAX_BODY_BYTES - len(ONE_CLICK) - 5)
    assert web.post(links[ADA], exact).status == 200
    assert statuses(db)[ADA] == "unsubscribed"


def test_a_garbage_request_line_gets_400(web: WebServer) -> None:
    answer = web.raw(b"\x16\x03\x01 GARBAGE \x00 nonsense\r\n\r\n")

    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.0 400 Bad Request", b"HTTP/1.1 400 Bad Request")
    assert b"Traceback" not in answer


BAD_PATHS = [
    "/articles/abc",
    "/articles/1.5",
    "/articles/-1",
    "/articles/0",
    "/articles/99999",
    "/articles/99999999999999999999999",
    "/digests/99999999999999999999999",
    "/digests/abc",
    "/no/such/page",
    "/unsubscribe/",
]


def test_unknown_and_non_integer_paths_get_404(web: WebServer, articles: list[Article]) -> None:
    assert web.get(f"/articles/{articles[0].id}").status == 200
    for path in BAD_PATHS:
        reply = web.get(path)
        assert_clean_error(reply, 404)
        assert reply.headers.get_content_type() == "text/html", path


WRONG_METHODS = [
    ("POST", "/"),
    ("DELETE", "/articles/1"),
    ("PUT", "/unsubscribe/1.abc"),
    ("GET", "/resubscribe/1.abc"),
    ("POST", "/preview"),
]


def test_a_wrong_method_gets_405(web: WebServer) -> None:
    for method, path in WRONG_METHODS:
        reply = web.request(method, path, body=ONE_CLICK if method != "GET" else None, headers=FORM)
        assert_clean_error(reply, 405)
        assert method not in (reply.headers["Allow"] or ""), path
