"""A reader's whole journey in real Chromium against the real web server, with mail
going through mailer's own built-in catcher: sign up, confirm from the mail, choose two
themes, receive an issue with only those, unsubscribe from that issue's own link."""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from mailer import campaign
from mailer.catcher import MailCatcher
from mailer.models import Subscriber, utcnow
from tests.smtp_server import free_port
from tests.web_server import running_site


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 375, "height": 800})
    yield context.new_page()
    context.close()


def caught(folder: Path, count: int) -> list[EmailMessage]:
    """The catcher's messages, oldest first, once there are `count` of them."""
    deadline = time.monotonic() + 15
    while len(files := sorted(folder.glob("*.eml"))) < count:
        assert time.monotonic() < deadline, f"{count} mail(s) expected in the catcher, {len(files)} came"
        time.sleep(0.05)
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]  # type: ignore[misc]


def path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_sign_up_confirm_choose_two_themes_get_only_them_then_unsubscribe(
    tmp_path: Path, page: Page, database_url: str
) -> None:
    inbox = tmp_path / "caught"
    port = free_port()
    catcher = MailCatcher("127.0.0.1", port, inbox)
    catcher.start()
    try:
        with running_site(tmp_path, port, database_url) as (server, db):
            cfg = server.cfg
            names = {t.slug: t.name for t in cfg.themes}
            page.goto(f"{server.base}/subscribe")
            page.get_by_label("Email address").fill("ada@example.com")
            page.get_by_label("Name").fill("Ada")
            page.get_by_role("button", name="Subscribe").click()
            expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()

            [confirmation] = caught(inbox, 1)
            link = re.search(r"https?://\S+/confirm/\S+", confirmation.get_content()).group(0)
            page.goto(server.base + path_of(link))
            page.get_by_role("button", name="Confirm").click()
            expect(page.get_by_role("heading", name="You are confirmed")).to_be_visible()

            page.get_by_role("link", name="Choose your themes").click()
            page.get_by_label(names["ai"]).check()
            page.get_by_label(names["policy"]).check()
            page.get_by_role("button", name="Save").click()
            expect(page.get_by_role("status")).to_contain_text("Saved")

            campaign.send_now(db, cfg, utcnow())
            issue = caught(inbox, 2)[1]
            text = issue.get_body(("plain",)).get_content()
            contents = text.replace("\r\n", "\n").split("In this issue:\n", 1)[1].split("\n\n", 1)[0]
            sections = [re.sub(r" \(\d+\)$", "", line.removeprefix("- ")) for line in contents.splitlines()]
            assert sections == [n for n in sections if n in (names["ai"], names["policy"])] and sections

            # The issue links to the reader's own preferences page, which shows their choice.
            preferences = re.search(r"Your preferences: (\S+)", text).group(1)
            page.goto(server.base + path_of(preferences))
            expect(page.get_by_label(names["ai"])).to_be_checked()
            expect(page.get_by_label(names["policy"])).to_be_checked()

            unsubscribe = issue["List-Unsubscribe"].strip("<>")
            page.goto(server.base + path_of(unsubscribe))
            page.get_by_role("button", name="Unsubscribe").click()
            expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
            with db.reader() as s:
                assert s.scalar(select(Subscriber.status)) == "unsubscribed"
    finally:
        catcher.stop()
