"""Who may see the editor's pages and unsent articles, over real HTTP with the service's
waitress settings: a request through a proxy, or any server whose base_url is public,
needs the password; the public only ever sees articles of sent digests."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from mailer import digest as digests
from mailer.articles import ArticleStore
from mailer.config import Config
from mailer.db import Database
from mailer.models import Article, utcnow
from mailer.subscribers import SubscriberStore
from tests.conftest import SEEDS
from tests.smtp_server import SmtpServer
from tests.web_server import Servers, WebServer, mail_links, statuses, write_test_config

ADA = "ada@example.org"
PASSWORD = "correct horse battery"
PUBLIC_BASE = "https://news.example.org"
EDITOR_PAGES = ["/", "/preview", "/preview.txt", "/digests", "/digests/1", "/digests/1.txt", "/mail"]
# What a reverse proxy adds (nginx with the usual proxy_set_header lines, Caddy by default).
PROXY_HEADERS = [
    {"X-Forwarded-For": "203.0.113.7"},
    {"X-Forwarded-Proto": "https"},
    {"X-Forwarded-Host": "news.example.org"},
    {"Forwarded": "for=203.0.113.7;proto=https"},
    {"X-Real-IP": "203.0.113.7"},
]


@pytest.fixture
def config_path(tmp_path: Path, smtp_server: SmtpServer, database_url: str) -> Path:
    return write_test_config(tmp_path, smtp_server.port, database_url)


@pytest.fixture
def serve(tmp_path: Path, smtp_server: SmtpServer, db: Database) -> Iterator[Callable[..., WebServer]]:
    servers = Servers(tmp_path, smtp_server.port, db)
    yield servers.start
    servers.close()


@pytest.fixture
def links(db: Database, cfg: Config, smtp_server: SmtpServer) -> dict[str, str]:
    return mail_links(db, cfg, smtp_server, [ADA])


def basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"editor:{password}".encode()).decode()}


def statuses_of(web: WebServer, paths: list[str], headers: dict[str, str] | None = None) -> dict[str, int]:
    return {path: web.get(path, headers=headers).status for path in paths}


def test_a_proxied_request_does_not_get_the_editor_pages_without_a_password(
    serve: Callable[..., WebServer], links: dict[str, str]
) -> None:
    web = serve(catcher={"enabled": True})
    assert statuses_of(web, EDITOR_PAGES) == dict.fromkeys(EDITOR_PAGES, 200)  # a local browser

    for headers in PROXY_HEADERS:
        assert statuses_of(web, EDITOR_PAGES, headers) == dict.fromkeys(EDITOR_PAGES, 404), headers


def test_a_proxied_request_needs_the_password(serve: Callable[..., WebServer], links: dict[str, str]) -> None:
    web = serve(catcher={"enabled": True}, web={"password": PASSWORD})

    for headers in PROXY_HEADERS:
        assert statuses_of(web, EDITOR_PAGES, headers) == dict.fromkeys(EDITOR_PAGES, 401), headers
        authorised = {**headers, **basic(PASSWORD)}
        assert statuses_of(web, EDITOR_PAGES, authorised) == dict.fromkeys(EDITOR_PAGES, 200), headers


def test_with_a_public_base_url_the_editor_pages_need_the_password_even_on_loopback(
    serve: Callable[..., WebServer], links: dict[str, str]
) -> None:
    closed = serve(catcher={"enabled": True}, digest={"base_url": PUBLIC_BASE})
    assert statuses_of(closed, EDITOR_PAGES) == dict.fromkeys(EDITOR_PAGES, 404)

    guarded = serve(catcher={"enabled": True}, digest={"base_url": PUBLIC_BASE}, web={"password": PASSWORD})
    assert statuses_of(guarded, EDITOR_PAGES) == dict.fromkeys(EDITOR_PAGES, 401)
    assert statuses_of(guarded, EDITOR_PAGES, basic(PASSWORD)) == dict.fromkeys(EDITOR_PAGES, 200)
    assert guarded.get(links[ADA]).status == 200  # the public pages stay public
    assert guarded.get("/healthz").status == 200


def test_a_foreign_host_name_does_not_get_the_editor_pages(
    serve: Callable[..., WebServer], links: dict[str, str]
) -> None:
    # A DNS-rebinding page: evil.example resolves to 127.0.0.1, the browser sends its name.
    web = serve(catcher={"enabled": True})
    host = {"Host": f"evil.example:{web.port}"}

    assert statuses_of(web, EDITOR_PAGES, host) == dict.fromkeys(EDITOR_PAGES, 404)
    assert web.get("/healthz", headers=host).status == 200


def unsent_articles(db: Database) -> tuple[int, int]:
    """(an article reserved by a digest that is not sent yet, a draft no digest has)."""
    with db.reader() as s:
        held = s.scalars(select(Article.id).where(Article.digest_id.is_not(None))).first()
        draft = s.scalars(select(Article.id).where(Article.digest_id.is_(None))).first()
    assert held is not None and draft is not None
    return held, draft


def test_articles_are_public_only_once_their_digest_was_sent(
    serve: Callable[..., WebServer], db: Database, cfg: Config
) -> None:
    ArticleStore(db, cfg).import_paths([str(SEEDS)])
    SubscriberStore(db).add(ADA)
    building = digests.build(db, cfg, digests.manual_slot(utcnow()))
    assert building is not None and building.status == "sending"
    ArticleStore(db, cfg).add("A draft for next week", "Not ready yet.")
    held, draft = unsent_articles(db)
    public = serve(digest={"base_url": PUBLIC_BASE})
    guarded = serve(digest={"base_url": PUBLIC_BASE}, web={"password": PASSWORD})
    local = serve()

    for web in (public, guarded):
        assert statuses_of(web, [f"/articles/{held}", f"/articles/{draft}"]) == {
            f"/articles/{held}": 404,
            f"/articles/{draft}": 404,
        }
    for path in (f"/articles/{held}", f"/articles/{draft}"):
        assert guarded.get(path, headers=basic(PASSWORD)).status == 200  # the editor's view
        assert local.get(path).status == 200  # the editor on this machine
        assert local.get(path, headers=PROXY_HEADERS[0]).status == 404

    with db.session() as s:
        s.get(Article, held).sent_at = utcnow()  # type: ignore[union-attr]
    assert public.get(f"/articles/{held}").status == 200
    assert public.get(f"/articles/{draft}").status == 404


def test_malformed_host_and_origin_headers_get_a_clean_refusal(
    serve: Callable[..., WebServer], db: Database, links: dict[str, str]
) -> None:
    web = serve()
    for host in ("[::1", "127.0.0.1:port", "", "127.0.0.1.evil.example"):
        assert web.get("/", headers={"Host": host}).status == 404, host
    for origin in ("http://[::1", "http://127.0.0.1:port", "file://", "null"):
        reply = web.post(links[ADA], b"", {"Origin": origin})
        assert reply.status == 403 and "Traceback" not in reply.body, origin
    assert statuses(db) == {ADA: "active"}
