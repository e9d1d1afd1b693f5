"""Resubscribing needs the fresh, hour-long token of the unsubscribe confirmation page (an
old mail is not enough), and a state-changing POST sent by another site is refused with
403, except RFC 8058 one-click unsubscribe. Real HTTP, real SQLite, real sent mail."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy import select

from mailer.config import Config
from mailer.db import Database
from mailer.models import Subscriber, utcnow
from mailer.subscribers import new_nonce
from mailer.tokens import RESUBSCRIBE_MAX_AGE, Tokens, load_secret
from tests.smtp_server import SmtpServer
from tests.web_server import ONE_CLICK, Reply, WebServer, mail_links, statuses, write_test_config

ADA = "ada@example.org"
BOB = "bob@example.org"
CROSS_SITE = "This form was sent from another web site, so nothing was changed."
# What browsers send with a form that a page of another site submits to us.
FROM_ANOTHER_SITE = [
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Sec-Fetch-Site": "same-site", "Origin": "https://evil.news.example.org"},
    {"Origin": "https://evil.example"},  # a browser too old for Sec-Fetch-Site
    {"Origin": "null"},  # a page that asked for no referrer, or a sandboxed frame
]


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_test_config(tmp_path, smtp_server.port, database_url)


@pytest.fixture
def links(db: Database, cfg: Config, smtp_server: SmtpServer) -> dict[str, str]:
    return mail_links(db, cfg, smtp_server, [ADA, BOB])


@pytest.fixture
def web(db: Database, cfg: Config) -> Iterator[WebServer]:
    server = WebServer(db, cfg).start()
    yield server
    server.close()


def confirmation(web: WebServer, link: str) -> Reply:
    done = web.post(link, ONE_CLICK)
    assert done.status == 200 and "You are unsubscribed" in done.body
    return done


def again_action(done: Reply) -> str:
    (form,) = done.doc().cssselect("form")
    return str(form.get("action"))


def test_an_old_mail_cannot_resubscribe_its_reader(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    confirmation(web, links[ADA])

    # The token from the mail, on the resubscribe URL, as a stranger holding it would try.
    reply = web.post(links[ADA].replace("/unsubscribe/", "/resubscribe/"), b"")

    assert reply.status == 400 and "Nothing was changed" in reply.body
    assert statuses(db) == {ADA: "unsubscribed", BOB: "active"}


def test_the_confirmation_page_offers_a_fresh_token_that_is_not_the_mails(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    action = again_action(confirmation(web, links[ADA]))
    mail_token = links[ADA].rsplit("/", 1)[1]

    assert action.startswith("/resubscribe/") and mail_token not in action
    assert web.post(action, b"").status == 200
    assert statuses(db) == {ADA: "active", BOB: "active"}


def test_a_resubscribe_token_expires_after_the_hour(
    web: WebServer, db: Database, cfg: Config, links: dict[str, str]
) -> None:
    confirmation(web, links[ADA])
    with db.reader() as s:
        ada = s.scalars(select(Subscriber).where(Subscriber.email == ADA)).one()
    with freeze_time(utcnow() - timedelta(seconds=RESUBSCRIBE_MAX_AGE + 60)):
        stale = Tokens(load_secret(cfg.var_dir)).resubscribe(ada.id, ada.token_nonce)

    reply = web.post(f"/resubscribe/{stale}", b"")

    assert reply.status == 400 and "has expired" in reply.body
    assert statuses(db)[ADA] == "unsubscribed"


def test_a_resubscribe_token_works_only_for_its_reader_and_their_current_nonce(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    ada_action = again_action(confirmation(web, links[ADA]))
    bob_action = again_action(confirmation(web, links[BOB]))
    ada_id, bob_id = (Tokens.resubscribe_id(a.rsplit("/", 1)[1]) for a in (ada_action, bob_action))
    swapped = bob_action.replace(f"/resubscribe/{bob_id}.", f"/resubscribe/{ada_id}.")

    assert web.post(swapped, b"").status == 400
    with db.session() as s:  # the editor revokes Ada's links
        s.scalars(select(Subscriber).where(Subscriber.email == ADA)).one().token_nonce = new_nonce()
    assert web.post(ada_action, b"").status == 400
    assert statuses(db) == {ADA: "unsubscribed", BOB: "unsubscribed"}


def test_a_post_from_another_site_is_refused_with_403(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    action = again_action(confirmation(web, links[ADA]))

    for headers in FROM_ANOTHER_SITE:
        for reply in (web.post(action, b"", headers), web.post(links[BOB], b"", headers)):
            assert reply.status == 403, (headers, reply.request)
            assert CROSS_SITE in reply.body and "Traceback" not in reply.body
    assert statuses(db) == {ADA: "unsubscribed", BOB: "active"}

    own = {"Sec-Fetch-Site": "same-origin", "Origin": web.base}
    assert web.post(action, b"", own).status == 200
    assert statuses(db) == {ADA: "active", BOB: "active"}


def test_one_click_unsubscribe_is_honoured_from_anywhere(
    web: WebServer, db: Database, links: dict[str, str]
) -> None:
    # RFC 8058: the mailbox provider's server POSTs List-Unsubscribe=One-Click, usually with
    # no Origin at all; whatever it sends, an unsubscribe only does what the reader asked.
    for headers, email in (({}, ADA), (FROM_ANOTHER_SITE[0], BOB)):
        assert web.post(links[email], ONE_CLICK, headers).status == 200
    assert statuses(db) == {ADA: "unsubscribed", BOB: "unsubscribed"}
