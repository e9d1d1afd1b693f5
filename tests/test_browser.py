"""The web pages in a real browser: Debian's Chromium driven by Playwright, against the
app on a real waitress server, with a digest really sent to an aiosmtpd server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, expect

from mailer import campaign
from mailer.articles import ArticleStore
from mailer.config import Config
from mailer.db import Database
from mailer.models import Article, utcnow
from mailer.scheduler import Schedule
from mailer.subscribers import SubscriberStore
from tests.conftest import SEEDS
from tests.smtp_server import SmtpServer
from tests.web_server import WebServer, statuses, unsubscribe_url, write_test_config

ADA = "ada@example.org"
BOB = "bob@example.org"


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(5000)
    yield tab
    context.close()


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_test_config(tmp_path, smtp_server.port, database_url)


@pytest.fixture
def web(db: Database, cfg: Config) -> Iterator[WebServer]:
    server = WebServer(db, cfg).start()
    yield server
    server.close()


@pytest.fixture
def articles(db: Database, cfg: Config) -> list[Article]:
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    return ArticleStore(db, cfg).list(unsent=True)


def test_dashboard_and_preview_render_in_chromium(
    page: Page, web: WebServer, db: Database, cfg: Config, articles: list[Article], tmp_path: Path
) -> None:
    hostile = ArticleStore(db, cfg).add("Quiet <script>alert(1)</script> <b>title</b>", "Nothing to see.")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    page.goto(web.base + "/")
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    slot = Schedule(cfg.schedule.cron, cfg.schedule.timezone).next_slots(utcnow(), 1)[0]
    local = slot.at.astimezone(ZoneInfo(cfg.schedule.timezone))
    expect(page.locator("#next-send strong")).to_have_text(local.strftime("%a %d %b %Y %H:%M %Z"))
    expect(page.locator("#unsent")).to_contain_text("AI models and companies")

    page.get_by_role("link", name="Preview the next digest").click()
    page.wait_for_url(web.base + "/preview")
    shot = tmp_path / "preview.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 50_000

    present = {a.theme for a in [*articles, hostile]}
    names = [t.name for t in cfg.themes if t.slug in present]
    headings = page.locator("td.sec")
    expect(headings).to_have_count(len(names))
    for i, name in enumerate(names):
        expect(headings.nth(i)).to_be_visible()
        # The inlined style is applied: the heading is rendered in capitals.
        assert headings.nth(i).inner_text() == name.upper()
    expect(page.get_by_text(hostile.title, exact=True)).to_be_visible()
    unsubscribe = page.get_by_role("link", name="Unsubscribe", exact=True)
    expect(unsubscribe).to_be_visible()
    expect(unsubscribe).to_have_attribute("href", cfg.digest.base_url + "/unsubscribe/preview")
    assert dialogs == []  # the <script> in the title stayed text


def test_unsubscribe_and_subscribe_again_by_clicking_in_chromium(
    page: Page,
    web: WebServer,
    db: Database,
    cfg: Config,
    articles: list[Article],
    smtp_server: SmtpServer,
) -> None:
    for email in (ADA, BOB):
        SubscriberStore(db).add(email)
    campaign.send_now(db, cfg, utcnow())
    url = web.local(unsubscribe_url(smtp_server.handler.to(ADA)[0].message))

    page.goto(url)
    expect(page.get_by_role("heading", name=f"Unsubscribe from {cfg.digest.name}?")).to_be_visible()
    expect(page.get_by_role("button")).to_have_count(1)
    assert statuses(db) == {ADA: "active", BOB: "active"}

    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    expect(page.get_by_text(f"{ADA} will receive no more mail")).to_be_visible()
    assert page.url == url
    assert statuses(db) == {ADA: "unsubscribed", BOB: "active"}

    page.get_by_role("button", name="Subscribe again").click()
    expect(page.get_by_role("heading", name="Welcome back")).to_be_visible()
    assert statuses(db) == {ADA: "active", BOB: "active"}


def test_a_form_on_another_site_cannot_resubscribe_a_reader_in_chromium(
    page: Page,
    web: WebServer,
    db: Database,
    cfg: Config,
    articles: list[Article],
    smtp_server: SmtpServer,
) -> None:
    SubscriberStore(db).add(ADA)
    campaign.send_now(db, cfg, utcnow())
    page.goto(web.local(unsubscribe_url(smtp_server.handler.to(ADA)[0].message)))
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    again = web.base + str(page.locator("form").get_attribute("action"))
    # A page of another site that learned the button's URL (Playwright serves it as that
    # site; Chromium itself decides what the POST from it says about its origin).
    evil = "https://evil.example/prize"
    page.route(
        evil,
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{again}"><button>Claim your prize</button></form>',
        ),
    )

    page.goto(evil)
    page.get_by_role("button", name="Claim your prize").click()

    expect(page.get_by_role("heading", name="403")).to_be_visible()
    expect(page.get_by_text("sent from another web site, so nothing was changed")).to_be_visible()
    assert statuses(db) == {ADA: "unsubscribed"}
