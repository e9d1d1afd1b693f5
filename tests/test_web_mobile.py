"""Every page on a phone (issue 10, "Pages that work on a phone"): in Debian's Chromium at a
375 px wide viewport, against the app on a real waitress server with a digest really sent,
articles, subscribers and a caught mail, no page scrolls sideways; every page of the site
links a favicon that answers as an image; and in dark mode every page has a dark
background with light text.

PAGES lists every page, public and the editor's; test_pages_cover_every_route fails when
the app gains a route that is not in it, so a new page cannot skip these checks. Pages of
blueprints that are not in every checkout yet (sign-up, archive) are checked when the app
has them.

The site is built once per database (module scope: sending a digest and starting Chromium
for each of some 25 pages would take minutes), on SQLite and on PostgreSQL like the
`database_url` fixture; pages that change state (unsubscribe, sign up) each use a reader
of their own, so the checks do not depend on their order.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page

from mailer import campaign
from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.catcher import save
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import utcnow
from mailer.subscribers import SubscriberStore
from tests.conftest import SEEDS, throwaway_database
from tests.smtp_server import SmtpServer, free_port
from tests.web_server import WebServer, unsubscribe_paths, write_test_config

PHONE = {"width": 375, "height": 740}
# Long unbroken words, the kind that push a page wider than a phone: addresses, URLs.
LONG_DOMAIN = "newsletter-readers-with-long-addresses.example.org"
READERS = [f"reader{i}-with-a-rather-long-mailbox-name@{LONG_DOMAIN}" for i in range(12)]
LONG_URL = "https://example.org/" + "a-path-that-goes-on-and-on-without-a-single-space-" * 3 + "end"
CONFIRM_LINK = re.compile(r"https?://[^/\s]+(/confirm/\S+)")


@dataclass
class Site:
    web: WebServer
    db: Database
    cfg: Config
    smtp: SmtpServer
    digest_id: int
    article_id: int
    caught: str  # the name of a caught mail in the catcher's folder
    links: dict[str, str]  # reader: path of their unsubscribe link
    endpoints: set[str]
    confirm: str = ""  # path of a sign-up confirmation link (when the app has sign-up)
    spare: Iterator[str] = field(default_factory=lambda: iter(()))  # readers no page used yet
    signups: Iterator[int] = field(default_factory=itertools.count)

    def url(self, path: str) -> str:
        return self.web.base + path


@dataclass(frozen=True)
class Shown:
    """A page: its name, the endpoints it shows, how to open it, what kind of document."""

    name: str
    endpoints: tuple[str, ...]
    open: Callable[[Page, Site], None]
    kind: str = "site"  # "site": our layout; "mail": a digest's own HTML; "text": text/plain


def goto(path: str | Callable[[Site], str]) -> Callable[[Page, Site], None]:
    def open_page(page: Page, site: Site) -> None:
        target = path(site) if callable(path) else path
        reply = page.goto(site.url(target))
        assert reply is not None and reply.status < 500, f"GET {target}: {reply and reply.status}"

    return open_page


def unsubscribed(page: Page, site: Site) -> None:
    page.goto(site.url(site.links[next(site.spare)]))
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()


def resubscribed(page: Page, site: Site) -> None:
    unsubscribed(page, site)
    page.get_by_role("button", name="Subscribe again").click()
    page.get_by_role("heading", name="Welcome back").wait_for()


def sent_test_copy(page: Page, site: Site) -> None:
    page.goto(site.url("/preview/test-copy"))
    page.fill("#to", READERS[0])
    page.get_by_role("button", name="Send test copy").click()
    page.locator("#result").wait_for()


def signed_up(page: Page, site: Site) -> None:
    page.goto(site.url("/subscribe"))
    page.fill("#email", f"signup{next(site.signups)}-from-the-mobile-test@{LONG_DOMAIN}")
    page.get_by_role("button", name="Subscribe").click()
    page.get_by_role("heading", name="Check your inbox").wait_for()


def confirmed(page: Page, site: Site) -> None:
    page.goto(site.url(site.confirm))
    button = page.get_by_role("button", name="Confirm")
    with page.expect_navigation():
        if button.count():
            button.click()
        else:  # confirmed by an earlier check: the same POST, which now changes nothing
            page.evaluate(
                "(action) => { const f = document.createElement('form'); f.method = 'post';"
                " f.action = action; document.body.append(f); f.submit(); }",
                site.confirm,
            )
    page.get_by_role("heading", name="You are confirmed").wait_for()


def preferences(page: Page, site: Site) -> None:
    confirmed(page, site)
    with page.expect_navigation():
        page.locator('a[href^="/preferences/"]').click()
    page.locator('form[action^="/preferences/"]').wait_for()


def preferences_saved(page: Page, site: Site) -> None:
    preferences(page, site)
    page.get_by_role("button", name="Save").click()
    page.get_by_role("status").wait_for()


PAGES = [
    # The editor's pages (open on loopback: mailer.web.access).
    Shown("dashboard", ("editor.dashboard_page",), goto("/")),
    Shown("preview", ("editor.preview",), goto("/preview"), "mail"),
    Shown("preview text", ("editor.preview_text",), goto("/preview.txt"), "text"),
    Shown("test copy form", ("editor.test_copy_form",), goto("/preview/test-copy")),
    Shown("test copy sent", ("editor.test_copy",), sent_test_copy),
    Shown("digest list", ("editor.digest_list",), goto("/digests")),
    Shown("digest", ("editor.digest_html",), goto(lambda s: f"/digests/{s.digest_id}"), "mail"),
    Shown("digest text", ("editor.digest_text",), goto(lambda s: f"/digests/{s.digest_id}.txt"), "text"),
    Shown("caught-mail list", ("editor.mail_list",), goto("/mail")),
    Shown("caught mail", ("editor.mail_show",), goto(lambda s: f"/mail/{s.caught}")),
    Shown("caught mail html", ("editor.mail_html",), goto(lambda s: f"/mail/{s.caught}/html"), "mail"),
    # Public pages.
    Shown("health check", ("public.health",), goto("/healthz"), "text"),
    Shown("liveness check", ("public.live",), goto("/livez"), "text"),
    Shown("article", ("public.article",), goto(lambda s: f"/articles/{s.article_id}")),
    Shown("unsubscribe help", ("public.unsubscribe_help",), goto("/unsubscribe")),
    Shown("unsubscribe", ("public.unsubscribe_page",), goto(lambda s: s.links[READERS[0]])),
    Shown("unsubscribe preview", ("public.unsubscribe_page",), goto("/unsubscribe/preview")),
    Shown("unsubscribed", ("public.unsubscribe",), unsubscribed),
    Shown("resubscribed", ("public.resubscribe",), resubscribed),
    Shown("not found", (), goto("/no-such-page")),
    # Pages of the sign-up and archive blueprints (when the app has them).
    Shown("sign-up form", ("subscribe.subscribe_page",), goto("/subscribe")),
    Shown("sign-up sent", ("subscribe.subscribe",), signed_up),
    Shown("confirm", ("subscribe.confirm_page",), goto(lambda s: s.confirm)),
    Shown("confirmed", ("subscribe.confirm",), confirmed),
    Shown("preferences", ("subscribe.preferences",), preferences),
    Shown("preferences saved", ("subscribe.save",), preferences_saved),
    Shown("archive", ("archive.issues",), goto("/archive")),
    Shown("archived issue", ("archive.issue",), goto("/archive/1"), "mail"),
]
# Routes that answer with something other than a page.
# No page to fit on a phone: a file, a feed, a POST, Prometheus' text.
NOT_PAGES = {"public.favicon", "archive.feed", "webhooks.receive", "metrics.scrape"}


# ---------------------------------------------------------------- the site


def wait_for_mail(smtp: SmtpServer, address: str) -> str:
    deadline = time.monotonic() + 10
    while not smtp.handler.to(address):
        assert time.monotonic() < deadline, f"no mail came for {address}"
        time.sleep(0.02)
    return str(smtp.handler.to(address)[0].message.get_body(("plain",)).get_content())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("mobile")
    with contextlib.ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for key in list(os.environ):  # as conftest's _clean_env, which is per test
            if key.upper().startswith("MAILER_"):
                mp.delenv(key)
        url = stack.enter_context(throwaway_database(request.param, folder))
        smtp = SmtpServer().start()
        stack.callback(smtp.stop)
        path = write_test_config(
            folder, smtp.port, database_url=url, catcher={"enabled": True, "port": free_port()}
        )
        cfg = load_config(str(path))
        db = Database(cfg.database_url)
        stack.callback(db.dispose)
        db.migrate()

        articles = ArticleStore(db, cfg)
        articles.import_paths([str(SEEDS)])
        long_one = articles.add(
            "An article whose title has a word like Donaudampfschifffahrtsgesellschaftskapitän",
            f"Read it at {LONG_URL} or at the address {READERS[0]}.\n\nA second paragraph.",
        )
        for email in READERS:
            SubscriberStore(db).add(email, "A reader with a name long enough to wrap")
        campaign.send_now(db, cfg, utcnow())
        links = unsubscribe_paths(smtp)
        assert sorted(links) == sorted(READERS)
        (sent,) = [d for d in digests.list_digests(db) if d.issue]
        for n in range(3):  # for the preview and the test copy: the seeds went out
            articles.add(f"Unsent article {n} about {LONG_URL}", f"Text number {n}, with {READERS[0]} in it.")
        # The catcher is not running here: what it would have stored, it is given.
        caught = save(cfg.resolve(cfg.catcher.folder), smtp.handler.to(READERS[0])[0].data).name

        web = WebServer(db, cfg).start()
        stack.callback(web.close)
        endpoints = {rule.endpoint for rule in web.app.url_map.iter_rules()}
        shown = Site(web, db, cfg, smtp, sent.id, long_one.id, caught, links, endpoints)
        shown.spare = iter(READERS[1:])
        if "subscribe.confirm_page" in endpoints:
            address = f"confirm-from-the-mobile-test@{LONG_DOMAIN}"
            reply = web.post("/subscribe", f"email={address}".encode())
            assert reply.status == 200, reply.body
            found = CONFIRM_LINK.search(wait_for_mail(smtp, address))
            assert found, "no confirmation link in the sign-up mail"
            shown.confirm = found.group(1)
        yield shown


@pytest.fixture
def phone(request: pytest.FixtureRequest, browser: Browser) -> Iterator[Page]:
    """A tab as on a phone: a 375 px wide screen, and a layout viewport as wide as the
    page's viewport meta tag says (980 px without one). Chromium lays out any text/plain
    document at 980 px on a phone, which no server can change, so those are checked in a
    375 px wide window, where its viewer wraps long lines."""
    text = "shown" in request.fixturenames and request.getfixturevalue("shown").kind == "text"
    context = browser.new_context(viewport=PHONE, is_mobile=not text, has_touch=True)
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    yield tab
    context.close()


def open_shown(page: Page, site: Site, shown: Shown) -> None:
    missing = [e for e in shown.endpoints if e not in site.endpoints]
    if missing:
        pytest.skip(f"this checkout's app has no {', '.join(missing)}")
    shown.open(page, site)
    page.wait_for_load_state("load")


@pytest.fixture(params=PAGES, ids=[p.name for p in PAGES])
def shown(request: pytest.FixtureRequest) -> Shown:
    param: Shown = request.param
    return param


# ---------------------------------------------------------------- colours


def rgba(css: str) -> tuple[float, float, float, float]:
    """A computed colour (rgb(...)/rgba(...)) as r, g, b in 0..255 and alpha in 0..1."""
    parts = [float(x) for x in re.findall(r"[\d.]+", css)]
    assert len(parts) in (3, 4), css
    return parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else 1.0


def luminance(css: str) -> float:
    """WCAG relative luminance: 0 black, 1 white."""

    def channel(c: float) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b, _a = rgba(css)
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


COLOURS = """() => {
  const body = getComputedStyle(document.body), root = getComputedStyle(document.documentElement);
  const painted = (c) => !/^rgba\\(.*, 0\\)$/.test(c) && c !== "transparent";
  let background = painted(body.backgroundColor) ? body.backgroundColor : root.backgroundColor;
  if (!painted(background)) {
    // Nothing painted: the canvas shows, dark when the page allows a dark scheme and the
    // reader prefers one.
    const schemes = root.colorScheme.split(" ");
    const dark = schemes.includes("dark")
      && (!schemes.includes("light") || matchMedia("(prefers-color-scheme: dark)").matches);
    background = dark ? "rgb(18, 18, 18)" : "rgb(255, 255, 255)";
  }
  return {background, text: body.color, scheme: root.colorScheme};
}"""


def page_colours(page: Page) -> dict[str, str]:
    colours: dict[str, str] = page.evaluate(COLOURS)
    return colours


# ---------------------------------------------------------------- the checks


def test_pages_cover_every_route(site: Site) -> None:
    covered = {e for p in PAGES for e in p.endpoints}
    routes = site.endpoints - NOT_PAGES - {"static"}
    missing = sorted(routes - covered)
    assert not missing, f"add these routes to PAGES in {Path(__file__).name}: {missing}"


def test_every_page_fits_a_375px_screen(site: Site, phone: Page, shown: Shown) -> None:
    open_shown(phone, site, shown)
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{shown.name} ({urlsplit(phone.url).path}) is {width}px wide at 375"


def test_every_page_links_a_favicon_that_is_an_image(site: Site, phone: Page, shown: Shown) -> None:
    open_shown(phone, site, shown)
    href = phone.evaluate(
        "() => { const l = document.querySelector('link[rel~=icon]'); return l ? l.href : null; }"
    )
    if shown.kind == "site":
        assert href, f"{shown.name} links no favicon"
    # A page that is a mail's own HTML, or text, gets the one browsers ask for by default.
    icon = phone.request.get(href or site.url("/favicon.ico"))
    assert icon.status == 200, f"{shown.name}: favicon {href}: {icon.status}"
    assert icon.headers["content-type"].startswith("image/"), f"{shown.name}: {icon.headers}"
    assert icon.body().lstrip().startswith(b"<svg"), f"{shown.name}: the favicon is not an SVG"


def test_every_page_is_dark_in_dark_mode(site: Site, phone: Page, shown: Shown) -> None:
    if shown.kind == "text":
        pytest.skip("text/plain is drawn by the browser's own viewer; there is nothing to style")
    phone.emulate_media(color_scheme="light")
    open_shown(phone, site, shown)
    light = page_colours(phone)
    assert luminance(light["background"]) > 0.5, f"{shown.name} in light mode: {light}"

    phone.emulate_media(color_scheme="dark")
    dark = page_colours(phone)
    assert luminance(dark["background"]) < 0.1, f"{shown.name} is not dark in dark mode: {dark}"
    assert luminance(dark["text"]) > 0.4, f"{shown.name}'s text is not light in dark mode: {dark}"


def test_a_favicon_is_served_where_browsers_look_for_it(site: Site, phone: Page) -> None:
    for path in ("/favicon.ico", "/favicon.svg"):
        icon = phone.request.get(site.url(path))
        assert icon.status == 200, path
        assert icon.headers["content-type"].startswith("image/svg+xml"), (path, icon.headers)
        assert site.cfg.digest.accent_color.encode() in icon.body(), "the favicon is in the accent colour"
