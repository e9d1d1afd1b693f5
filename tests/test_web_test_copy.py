"""A test copy from the browser (/preview/test-copy): Debian's Chromium driven by Playwright,
against the app on a real waitress server, mailing a real SMTP server (aiosmtpd).

What `mailer digest send --to` does, from the editor's page: the copy arrives with the
[TEST] subject, the address is there again on the next visit, a form of another site or a
request without the form's token sends nothing, a bad address is one clear line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, Page, expect

from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import Article, Digest
from tests.smtp_server import SmtpServer
from tests.web_server import WebServer, write_test_config

PAGE = "/preview/test-copy"
EDITOR = "editor@example.org"
PASSWORD = "correct horse battery"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(15000)
    yield tab
    context.close()


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_test_config(tmp_path, smtp_server.port, database_url)


@pytest.fixture
def articles(db: Database, cfg: Config) -> list[Article]:
    ArticleStore(db, cfg).import_paths([str(Path(__file__).resolve().parent.parent / "seeds")])
    return ArticleStore(db, cfg).list(unsent=True)


@pytest.fixture
def web(db: Database, cfg: Config, articles: list[Article]) -> Iterator[WebServer]:
    server = WebServer(db, cfg).start()
    yield server
    server.close()


def unchanged(db: Database) -> tuple[int, int]:
    """(digests, unsent articles): a test copy changes neither."""
    with db.session() as s:
        return s.query(Digest).count(), s.query(Article).filter(Article.digest_id.is_(None)).count()


def send_from_the_page(page: Page, address: str) -> int:
    """Fill the form in and press the button; the status of the page that answers."""
    page.get_by_label("Send to").fill(address)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Send test copy").click()
    page.wait_for_load_state()
    return answer.value.status


def test_a_test_copy_arrives_and_the_address_is_remembered(
    page: Page, web: WebServer, db: Database, cfg: Config, smtp_server: SmtpServer
) -> None:
    before = unchanged(db)
    subject = digests.preview(db, cfg).subject  # type: ignore[union-attr]
    page.goto(web.base + PAGE)
    expect(page.get_by_role("heading", name="Send a test copy")).to_be_visible()
    expect(page.get_by_label("Send to")).to_have_value("")
    # The digest itself is on the page, as /preview shows it.
    expect(page.frame_locator("iframe").locator("td.sec#ai")).to_have_text("AI models and companies")

    assert send_from_the_page(page, f"  {EDITOR} ") == 200

    result = page.get_by_role("status")
    expect(result).to_contain_text(f"A test copy of “{subject}” was sent to {EDITOR}.")
    expect(result).to_contain_text(re.compile(r"The mail server answered: 250 "))
    [got] = smtp_server.received
    assert got.recipients == [EDITOR]
    assert got.message["Subject"] == f"[TEST] {subject}"
    assert got.message["To"] == EDITOR
    assert unchanged(db) == before

    # The next visit, in this browser: the address is there.
    page.goto(web.base + PAGE)
    expect(page.get_by_label("Send to")).to_have_value(EDITOR)
    # Another browser has not been told.
    other = page.context.browser.new_context()  # type: ignore[union-attr]
    try:
        fresh = other.new_page()
        fresh.goto(web.base + PAGE)
        expect(fresh.get_by_label("Send to")).to_have_value("")
    finally:
        other.close()


def test_an_invalid_address_is_one_clear_line_and_nothing_is_sent(
    page: Page, web: WebServer, db: Database, smtp_server: SmtpServer
) -> None:
    before = unchanged(db)
    page.goto(web.base + PAGE)

    # Chromium lets it through (it has an @), the server does not: no dot in the domain.
    assert send_from_the_page(page, "editor@example") == 400

    expect(page.get_by_role("alert")).to_have_text(
        re.compile(r"^\s*Not sent: invalid email 'editor@example': .*period\.\s*$")
    )
    expect(page.get_by_label("Send to")).to_have_value("editor@example")  # to correct it
    assert smtp_server.received == []
    assert unchanged(db) == before
    page.goto(web.base + PAGE)
    expect(page.get_by_label("Send to")).to_have_value("")  # never remembered


def test_the_relays_refusal_is_shown(page: Page, web: WebServer, smtp_server: SmtpServer) -> None:
    smtp_server.handler.rule = lambda stage, _addr: "550 5.1.1 no such mailbox" if stage == "RCPT" else None
    page.goto(web.base + PAGE)

    assert send_from_the_page(page, EDITOR) == 502

    expect(page.get_by_role("alert")).to_contain_text(f"Not sent: test copy to {EDITOR} not accepted: 550")
    expect(page.get_by_role("alert")).to_contain_text("no such mailbox")
    assert smtp_server.received == []


def test_a_form_on_another_site_sends_nothing(
    page: Page, web: WebServer, db: Database, smtp_server: SmtpServer
) -> None:
    # Even with a valid token (which another site could not read): Chromium says where the
    # POST comes from, and that is enough to refuse it.
    page.goto(web.base + PAGE)
    token = page.locator("input[name=token]").get_attribute("value")
    evil = "https://evil.example/free-preview"
    page.route(
        evil,
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{web.base}{PAGE}">'
            f'<input type="hidden" name="to" value="spy@evil.example">'
            f'<input type="hidden" name="token" value="{token}">'
            "<button>See the next issue first</button></form>",
        ),
    )

    page.goto(evil)
    page.get_by_role("button", name="See the next issue first").click()

    expect(page.get_by_role("heading", name="403")).to_be_visible()
    expect(page.get_by_text("sent from another web site, so nothing was changed")).to_be_visible()
    assert smtp_server.received == []


def test_a_post_without_the_forms_token_sends_nothing(
    page: Page, web: WebServer, smtp_server: SmtpServer
) -> None:
    # What the origin check cannot see (a browser that sends neither Sec-Fetch-Site nor
    # Origin): the token is missing or forged, so nothing is sent, and the form is renewed.
    bare = web.post(PAGE, urlencode({"to": EDITOR}).encode())
    forged = web.post(PAGE, urlencode({"to": EDITOR, "token": "InRlc3QgY29weSI.forged"}).encode())
    assert (bare.status, forged.status) == (403, 403)
    assert "This form was out of date" in bare.body and smtp_server.received == []

    # The same from our own page with its token taken out: refused, then sent with the new one.
    page.goto(web.base + PAGE)
    page.locator("input[name=token]").evaluate("input => input.value = ''")
    assert send_from_the_page(page, EDITOR) == 403
    expect(page.get_by_role("alert")).to_contain_text("nothing was sent")
    assert smtp_server.received == []
    with page.expect_response(lambda r: r.request.method == "POST") as again:
        page.get_by_role("button", name="Send test copy").click()
    assert again.value.status == 200
    assert [r.recipients for r in smtp_server.received] == [[EDITOR]]


def test_the_page_is_the_editors(tmp_path: Path, db: Database, smtp_server: SmtpServer) -> None:
    for password, status in (("", 404), (PASSWORD, 401)):
        cfg = load_config(
            str(write_test_config(tmp_path, smtp_server.port, web={"host": "0.0.0.0", "password": password}))
        )
        server = WebServer(db, cfg).start()
        try:
            assert server.get(PAGE).status == status
            assert server.post(PAGE, urlencode({"to": EDITOR}).encode()).status == status
        finally:
            server.close()
    assert smtp_server.received == []
