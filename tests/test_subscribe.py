"""The public sign-up with double opt-in, over real HTTP (waitress on loopback), with the
confirmation mail received by a real SMTP server, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from click.testing import CliRunner
from freezegun import freeze_time
from sqlalchemy import select

from mailer import delivery, signup
from mailer import digest as digests
from mailer.cli import cli
from mailer.db import Database
from mailer.models import Delivery, Notice, Subscriber, utcnow
from mailer.subscribers import SubscriberStore
from mailer.tokens import Tokens, load_secret
from tests.smtp_server import SmtpServer
from tests.web_server import FORM, WebServer, running_site

LIMITS = {"per_ip_per_hour": 3}
CONFIRM_LINK = re.compile(r"http://127\.0\.0\.1:8080(/confirm/\S+)")


@pytest.fixture
def site(tmp_path, smtp_server: SmtpServer, database_url: str) -> Iterator[tuple[WebServer, Database]]:
    with running_site(tmp_path, smtp_server.port, database_url, signup=LIMITS) as running:
        yield running


def sign_up(server: WebServer, **fields: str | list[str]):
    body = urlencode({"email": "ada@example.com", **fields}, doseq=True).encode()
    return server.post("/subscribe", body, FORM)


def wait_for_mail(smtp_server: SmtpServer, count: int = 1) -> None:
    deadline = time.monotonic() + 10
    while len(smtp_server.received) < count:
        assert time.monotonic() < deadline, f"{count} mail(s) expected, {len(smtp_server.received)} came"
        time.sleep(0.02)


def reader(db: Database, email: str = "ada@example.com") -> Subscriber:
    with db.reader() as s:
        sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
    assert sub is not None
    return sub


def test_a_signup_is_pending_until_the_link_is_opened_and_its_button_pressed(site, smtp_server) -> None:
    server, db = site
    page = sign_up(server, name="Ada")
    assert page.status == 200 and "Check your inbox" in page.body
    sub = reader(db)
    assert (sub.status, sub.signup_ip, sub.confirmed_at) == ("pending", "127.0.0.1", None)
    wait_for_mail(smtp_server)
    mail = smtp_server.received[0].message
    assert mail["To"] == "ada@example.com" and "Confirm your subscription" in mail["Subject"]
    path = CONFIRM_LINK.search(mail.get_content()).group(1)
    # A GET (what a mail scanner does) shows the button and confirms nobody.
    shown = server.get(path)
    assert shown.status == 200 and shown.doc().xpath("//form[@method='post']/@action") == [path]
    assert reader(db).status == "pending"
    confirmed = server.post(path, b"", FORM)
    assert confirmed.status == 200 and "You are confirmed" in confirmed.body
    sub = reader(db)
    assert sub.status == "active" and sub.confirm_ip == "127.0.0.1" and sub.confirmed_at is not None
    # The link stays valid after use: a second press says so and changes nothing.
    again = server.post(path, b"", FORM)
    assert again.status == 200 and "already receives" in again.body
    assert reader(db).confirmed_at == sub.confirmed_at


def test_an_active_reader_gets_the_same_page_and_a_mail_with_nothing_to_confirm(site, smtp_server) -> None:
    server, db = site
    SubscriberStore(db).add("ada@example.com")
    new = sign_up(server, email="zoe@example.com")
    known = sign_up(server)
    assert new.status == known.status == 200 and new.body == known.body  # tells no one who is subscribed
    wait_for_mail(smtp_server, 2)
    mail = next(r.message for r in smtp_server.received if r.recipients == ["ada@example.com"])
    assert "already subscribed" in mail.get_content() and "/confirm/" not in mail.get_content()
    assert reader(db).status == "active"


def test_a_reader_who_left_gets_a_new_confirmation_and_stays_unsubscribed_until_then(
    site, smtp_server
) -> None:
    server, db = site
    SubscriberStore(db).add("ada@example.com")
    with db.session() as s:
        s.scalar(select(Subscriber)).status = "unsubscribed"
    sign_up(server)
    wait_for_mail(smtp_server)
    assert reader(db).status == "unsubscribed"
    path = CONFIRM_LINK.search(smtp_server.received[0].message.get_content()).group(1)
    server.post(path, b"", FORM)
    assert reader(db).status == "active"


def test_what_a_visitor_types_as_their_name_never_reaches_the_mail(site, smtp_server) -> None:
    server, _db = site
    sign_up(server, name="Cheap pills at spam.example")
    wait_for_mail(smtp_server)
    assert b"spam.example" not in smtp_server.received[0].data


def test_forged_and_expired_links_get_400_and_change_nothing(site, smtp_server) -> None:
    server, db = site
    sign_up(server)
    sub = reader(db)
    tokens = Tokens(load_secret(server.cfg.var_dir))
    with freeze_time(utcnow() - timedelta(days=server.cfg.signup.confirm_days, minutes=1)):
        expired = tokens.confirm(sub.id, sub.token_nonce)
    forged = tokens.confirm(sub.id, "0" * 32)
    unsubscribe_token = tokens.make(sub.id, sub.token_nonce)  # another purpose's token
    for token in (expired, forged, unsubscribe_token, f"{sub.id}.nonsense-token-value"):
        for reply in (server.get(f"/confirm/{token}"), server.post(f"/confirm/{token}", b"", FORM)):
            assert reply.status == 400, (token, reply.request)
    assert reader(db).status == "pending"


def test_a_malformed_address_is_shown_next_to_its_field_and_nothing_is_recorded(site, smtp_server) -> None:
    server, db = site
    page = sign_up(server, email="ada@@example")
    assert page.status == 400
    error = page.doc().get_element_by_id("email-error").text_content()
    assert "invalid email 'ada@@example'" in error
    assert page.doc().get_element_by_id("email").get("value") == "ada@@example"
    with db.reader() as s:
        assert s.scalars(select(Subscriber)).all() == []


def test_the_honeypot_mails_nothing_and_records_nobody(site, smtp_server) -> None:
    server, db = site
    page = sign_up(server, website="http://spam.example")
    assert page.status == 200 and "Check your inbox" in page.body
    time.sleep(0.5)
    assert smtp_server.received == []
    with db.reader() as s:
        assert s.scalars(select(Subscriber)).all() == []


def test_a_flood_from_one_ip_gets_429_and_mails_nothing_more(site, smtp_server) -> None:
    server, db = site
    replies = [sign_up(server, email=f"reader{i}@example.com").status for i in range(5)]
    assert replies == [200, 200, 200, 429, 429]  # signup.per_ip_per_hour = 3
    wait_for_mail(smtp_server, 3)
    time.sleep(0.5)
    assert len(smtp_server.received) == 3
    with db.reader() as s:
        assert len(s.scalars(select(Subscriber)).all()) == 3


def test_one_confirmation_per_address_per_hour(site, smtp_server) -> None:
    server, db = site
    assert sign_up(server).status == 200
    assert sign_up(server).status == 429
    wait_for_mail(smtp_server)
    with db.reader() as s:
        assert len(s.scalars(select(Notice)).all()) == 1


def test_the_form_works_from_another_site(site, smtp_server) -> None:
    server, db = site
    headers = {**FORM, "Origin": "https://blog.example", "Sec-Fetch-Site": "cross-site"}
    body = urlencode({"email": "ada@example.com"}).encode()
    assert server.post("/subscribe", body, headers).status == 200
    assert reader(db).status == "pending"


def test_a_pending_reader_gets_no_digest_and_is_forgotten_after_the_expiry(site, smtp_server) -> None:
    server, db = site
    SubscriberStore(db).add("zoe@example.com")
    sign_up(server)
    digest = digests.build(db, server.cfg, digests.manual_slot(utcnow()))
    with db.reader() as s:
        audience = s.scalars(select(Delivery.subscriber_id).where(Delivery.digest_id == digest.id)).all()
    assert audience == [reader(db, "zoe@example.com").id]
    assert signup.purge(db, server.cfg, utcnow()) == 0
    later = utcnow() + timedelta(days=server.cfg.signup.confirm_days, minutes=1)
    assert signup.purge(db, server.cfg, later) == 1
    with db.reader() as s:
        assert [sub.email for sub in s.scalars(select(Subscriber))] == ["zoe@example.com"]
        assert s.scalars(select(Notice)).all() == []


# ---------------------------------------------------------------- the editor's side


def mailer_cli(server: WebServer, *args: str):
    return CliRunner().invoke(cli, ["--config", str(server.cfg.path), *args])


def test_subscribers_show_prints_the_consent_record_and_the_export_keeps_it(site, smtp_server) -> None:
    server, db = site
    sign_up(server, themes=["ai", "cyber", "no-such-theme"])
    wait_for_mail(smtp_server)
    path = CONFIRM_LINK.search(smtp_server.received[0].message.get_content()).group(1)
    server.post(path, b"", FORM)
    sub = reader(db)

    shown = mailer_cli(server, "subscribers", "show", "ADA@example.com", "--json")
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.stdout)
    assert record["status"] == "active" and record["themes"] == ["ai", "cyber"]
    assert (record["signup_ip"], record["confirm_ip"]) == ("127.0.0.1", "127.0.0.1")
    assert record["signup_at"] == sub.signup_at.isoformat()
    assert record["confirmed_at"] == sub.confirmed_at.isoformat()
    text = mailer_cli(server, "subscribers", "show", "ada@example.com")
    assert text.exit_code == 0 and re.search(
        r"^confirmed: +\S+ \S+ \S+ from 127\.0\.0\.1$", text.stdout, re.M
    )

    export = mailer_cli(server, "subscribers", "export")
    header, row = export.stdout.splitlines()
    assert header.endswith(",signup_at,signup_ip,confirmed_at,confirm_ip,themes")
    consent = f'{sub.signup_at.isoformat()},127.0.0.1,{sub.confirmed_at.isoformat()},127.0.0.1,"ai,cyber"'
    assert row.endswith(f",{consent}")


def test_subscribers_add_confirm_mails_the_same_confirmation_and_adds_a_pending_reader(
    site, smtp_server
) -> None:
    server, db = site
    added = mailer_cli(server, "subscribers", "add", "--confirm", "Ada@Example.com", "--name", "Ada")
    assert added.exit_code == 0, added.output
    assert added.stdout == "a confirmation mailed to Ada@example.com\n"
    sub = reader(db, "Ada@example.com")
    assert (sub.status, sub.signup_ip) == ("pending", None)
    assert len(smtp_server.received) == 1  # sent by the command itself
    path = CONFIRM_LINK.search(smtp_server.received[0].message.get_content()).group(1)
    server.post(path, b"", FORM)
    assert reader(db, "Ada@example.com").status == "active"
    shown = mailer_cli(server, "subscribers", "show", "ada@example.com")
    assert re.search(r"^signed up: +.+ \(by the editor\)$", shown.stdout, re.M)


def test_subscribers_show_of_nobody_is_one_line_and_exit_1(site) -> None:
    server, _db = site
    result = mailer_cli(server, "subscribers", "show", "nobody@example.com")
    assert (result.exit_code, result.output) == (1, "error: no subscriber 'nobody@example.com'\n")


# ---------------------------------------------------------------- preferences


def preferences_path(server: WebServer, db: Database, email: str = "ada@example.com") -> str:
    sub = reader(db, email)
    return f"/preferences/{Tokens(load_secret(server.cfg.var_dir)).preferences(sub.id, sub.token_nonce)}"


def test_a_reader_chooses_themes_and_name_on_their_preferences_page(site) -> None:
    server, db = site
    SubscriberStore(db).add("ada@example.com", "Ada")
    path = preferences_path(server, db)
    page = server.get(path)
    assert page.status == 200
    assert page.doc().xpath("//input[@name='themes' and @checked]") == []  # all themes
    body = urlencode({"name": "Ada L.", "themes": ["policy", "ai", "no-such-theme"]}, doseq=True).encode()
    saved = server.post(path, body, FORM)
    assert saved.status == 200 and "Saved" in saved.body
    assert sorted(saved.doc().xpath("//input[@name='themes' and @checked]/@value")) == ["ai", "policy"]
    sub = reader(db)
    assert (sub.themes, sub.name, sub.status) == ("ai,policy", "Ada L.", "active")
    # Its unsubscribe button is the reader's own one-click unsubscribe.
    [action] = saved.doc().xpath("//form[.//button[text()='Unsubscribe']]/@action")
    assert server.post(action).status == 200 and reader(db).status == "unsubscribed"


def test_a_forged_preferences_link_or_another_sites_post_changes_nothing(site) -> None:
    server, db = site
    SubscriberStore(db).add("ada@example.com")
    sub = reader(db)
    tokens = Tokens(load_secret(server.cfg.var_dir))
    body = urlencode({"themes": "ai"}).encode()
    for token in (tokens.make(sub.id, sub.token_nonce), f"{sub.id}.{'A' * 43}", "nonsense"):
        assert server.get(f"/preferences/{token}").status in (400, 404)
        assert server.post(f"/preferences/{token}", body, FORM).status in (400, 404)
    cross_site = {**FORM, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    assert server.post(preferences_path(server, db), body, cross_site).status == 403
    assert reader(db).themes == ""


def test_a_reader_who_left_can_subscribe_again_from_preferences_through_a_confirmation(
    site, smtp_server
) -> None:
    server, db = site
    SubscriberStore(db).add("ada@example.com")
    SubscriberStore(db).unsubscribe("ada@example.com")
    page = server.get(preferences_path(server, db))
    [form] = page.doc().xpath("//form[.//button[text()='Subscribe again']]")
    fields = {i.get("name"): i.get("value") for i in form.xpath(".//input")}
    assert server.post(form.get("action"), urlencode(fields).encode(), FORM).status == 200
    wait_for_mail(smtp_server)
    assert reader(db).status == "unsubscribed"  # until they confirm
    path = CONFIRM_LINK.search(smtp_server.received[0].message.get_content()).group(1)
    server.post(path, b"", FORM)
    assert reader(db).status == "active"


def test_with_welcome_latest_a_confirmed_reader_is_mailed_the_latest_issue(
    tmp_path, smtp_server, database_url
) -> None:
    with running_site(
        tmp_path, smtp_server.port, database_url, signup=LIMITS, digest={"welcome": "latest"}
    ) as (
        server,
        db,
    ):
        SubscriberStore(db).add("zoe@example.com")
        d = digests.build(db, server.cfg, digests.manual_slot(utcnow()))
        delivery.deliver(db, server.cfg, d.id)
        [issue] = smtp_server.received
        sign_up(server)
        wait_for_mail(smtp_server, 2)
        path = CONFIRM_LINK.search(smtp_server.received[1].message.get_content()).group(1)
        server.post(path, b"", FORM)
        wait_for_mail(smtp_server, 3)
        welcome = smtp_server.received[2].message
        assert welcome["To"] == "ada@example.com" and welcome["Subject"] == issue.message["Subject"]
        assert welcome["Message-ID"] != issue.message["Message-ID"]
        sub = reader(db)
        own = f"/unsubscribe/{Tokens(load_secret(server.cfg.var_dir)).make(sub.id, sub.token_nonce)}"
        assert own in welcome["List-Unsubscribe"]
        # A second press confirms nothing new, so no second welcome.
        server.post(path, b"", FORM)
        time.sleep(0.5)
        assert len(smtp_server.received) == 3


def test_the_unsubscribe_page_links_to_the_readers_preferences(site) -> None:
    server, db = site
    SubscriberStore(db).add("ada@example.com")
    sub = reader(db)
    tokens = Tokens(load_secret(server.cfg.var_dir))
    page = server.get(f"/unsubscribe/{tokens.make(sub.id, sub.token_nonce)}")
    [link] = page.doc().xpath("//a[contains(@href, '/preferences/')]/@href")
    assert link == preferences_path(server, db)
    assert server.get(link).status == 200
