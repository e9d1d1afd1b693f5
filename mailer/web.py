"""The web server: the editor's dashboard and preview, article pages, unsubscribe.

Public routes (article pages, unsubscribe) are safe to expose. The editor's pages are
served freely only on loopback; on any other address they need the password from
config (HTTP Basic), and without one they are not served at all.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask, Response, abort, render_template, request
from sqlalchemy import func, select
from werkzeug.exceptions import HTTPException

from mailer import catcher
from mailer import digest as digests
from mailer.articles import is_http_url
from mailer.config import Config
from mailer.db import Database
from mailer.digest import (
    PREVIEW_UNSUBSCRIBE,
    UNSUBSCRIBE_PLACEHOLDER,
    lead_of,
    template_environment,
)
from mailer.errors import NotFound
from mailer.models import Article, Subscriber, utcnow
from mailer.scheduler import Schedule
from mailer.subscribers import SubscriberStore, set_status
from mailer.themes import Themes
from mailer.tokens import Tokens, load_secret

MAX_BODY_BYTES = 16 * 1024
# The GET of an unsubscribe link (unsubscribe_page) is what a reader's click fetches: public.
PUBLIC_ENDPOINTS = {"article", "unsubscribe_page", "unsubscribe", "resubscribe", "health", "static"}
# Ids in URLs above SQLite's INTEGER range are no row (404), not an OverflowError (500).
MAX_ID = 2**63 - 1


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(db: Database, cfg: Config) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.jinja_loader = template_environment(cfg).loader  # type: ignore[assignment]
    themes = Themes(cfg.themes)
    tokens = Tokens(load_secret(cfg.var_dir))
    schedule = Schedule.of(cfg)
    catcher_folder = cfg.resolve(cfg.catcher.folder)
    editor_open = is_loopback(cfg.web.host)

    def local(dt: Any) -> str:
        return dt.astimezone(schedule.zone).strftime("%a %d %b %Y %H:%M %Z") if dt else "-"

    app.jinja_env.filters["local"] = local

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {
            "newsletter": cfg.digest.name,
            "accent": cfg.digest.accent_color,
            "catcher_on": cfg.catcher.enabled,
            "language": cfg.digest.language,
        }

    @app.before_request
    def _limit_body() -> None:
        # Werkzeug only enforces MAX_CONTENT_LENGTH when a view reads the body, and the
        # unsubscribe POST never does: refuse an oversized body before any view runs.
        if (request.content_length or 0) > MAX_BODY_BYTES:
            abort(413)

    @app.before_request
    def _guard_editor_pages() -> Response | None:
        if request.endpoint in PUBLIC_ENDPOINTS or editor_open:
            return None
        if not cfg.web.password:
            abort(404)
        auth = request.authorization
        given = (auth.password or "") if auth else ""
        if not hmac.compare_digest(given.encode(), cfg.web.password.encode()):
            return Response(
                "Authentication required\n",
                401,
                {"WWW-Authenticate": 'Basic realm="mailer editor"'},
            )
        return None

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[str, int]:
        return render_template("web_error.html", code=exc.code, message=exc.description), exc.code or 500

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> tuple[str, int]:
        app.logger.exception("request failed")
        return render_template("web_error.html", code=500, message="Internal error"), 500

    def html_page(body: str) -> Response:
        return Response(body, mimetype="text/html")

    def text_page(body: str) -> Response:
        return Response(body, mimetype="text/plain")

    # ------------------------------------------------------------ editor pages

    @app.get("/")
    def dashboard() -> str:
        now = utcnow()
        with db.session() as s:
            unsent = dict(
                s.execute(
                    select(Article.theme, func.count())
                    .where(Article.digest_id.is_(None))
                    .group_by(Article.theme)
                ).all()
            )
        per_theme = [(t.name, t.slug, unsent.get(t.slug, 0)) for t in themes.all]
        nxt = schedule.next_slots(now, 1)
        return render_template(
            "web_dashboard.html",
            next_send=nxt[0].at if nxt else None,
            per_theme=per_theme,
            unsent_total=sum(unsent.values()),
            counts=SubscriberStore(db).counts(),
            recent=digests.list_digests(db, limit=10),
            min_articles=cfg.digest.min_articles,
        )

    @app.get("/preview")
    def preview() -> Response:
        p = digests.preview(db, cfg)
        if p is None:
            return html_page(
                render_template("web_error.html", code=200, message="Nothing to preview: no unsent articles.")
            )
        return html_page(p.html)

    @app.get("/preview.txt")
    def preview_text() -> Response:
        p = digests.preview(db, cfg)
        return text_page(p.text if p else "Nothing to preview: no unsent articles.\n")

    @app.get("/digests")
    def digest_list() -> str:
        return render_template("web_digests.html", rows=digests.list_digests(db))

    def _stored(digest_id: int) -> Any:
        d = digests.get_digest(db, digest_id)
        if d is None or not d.html:
            abort(404)
        return d

    @app.get(f"/digests/<int(max={MAX_ID}):digest_id>")
    def digest_html(digest_id: int) -> Response:
        d = _stored(digest_id)
        return html_page(d.html.replace(UNSUBSCRIBE_PLACEHOLDER, cfg.digest.base_url + PREVIEW_UNSUBSCRIBE))

    @app.get(f"/digests/<int(max={MAX_ID}):digest_id>.txt")
    def digest_text(digest_id: int) -> Response:
        d = _stored(digest_id)
        return text_page(d.text.replace(UNSUBSCRIBE_PLACEHOLDER, cfg.digest.base_url + PREVIEW_UNSUBSCRIBE))

    @app.get("/mail")
    def mail_list() -> str:
        if not cfg.catcher.enabled:
            abort(404)
        return render_template("web_mail.html", messages=catcher.list_messages(catcher_folder))

    def _caught(name: str) -> Any:
        if not cfg.catcher.enabled:
            abort(404)
        try:
            return catcher.read_message(catcher_folder, name)
        except NotFound:
            abort(404)

    @app.get("/mail/<name>")
    def mail_show(name: str) -> str:
        msg = _caught(name)
        text = msg.get_body(("plain",))
        return render_template(
            "web_message.html",
            name=name,
            headers=list(msg.items()),
            text=text.get_content() if text is not None else "",
            has_html=msg.get_body(("html",)) is not None,
        )

    @app.get("/mail/<name>/html")
    def mail_html(name: str) -> Response:
        part = _caught(name).get_body(("html",))
        if part is None:
            abort(404)
        resp = html_page(part.get_content())
        # Mail from outside is untrusted: no scripts, no same-origin access.
        resp.headers["Content-Security-Policy"] = (
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        )
        return resp

    # ------------------------------------------------------------ public pages

    @app.get("/healthz")
    def health() -> Response:
        return text_page("ok\n")

    @app.get(f"/articles/<int(max={MAX_ID}):article_id>")
    def article(article_id: int) -> str:
        with db.session() as s:
            a = s.get(Article, article_id)
        if a is None:
            abort(404)
        return render_template(
            "web_article.html",
            a=a,
            theme=themes.name(a.theme),
            lead=lead_of(a.paragraphs, cfg.digest.lead_chars),
            original=a.url if a.url and is_http_url(a.url) else None,
        )

    def _subscriber(token: str) -> Subscriber:
        sub_id = Tokens.subscriber_id(token)
        with db.session() as s:
            sub = s.get(Subscriber, sub_id) if sub_id is not None else None
        if sub is None or not tokens.verify(token, sub.id, sub.token_nonce):
            abort(400, "This unsubscribe link is not valid. Nothing was changed.")
        return sub

    def _change(token: str, status: str, allowed: Callable[[str], bool]) -> Subscriber:
        sub = _subscriber(token)
        with db.session() as s:
            row = s.get(Subscriber, sub.id)
            if row is None:
                abort(400, "This unsubscribe link is not valid. Nothing was changed.")
            if allowed(row.status):
                set_status(s, row, status)
            return row

    @app.get("/unsubscribe/<token>")
    def unsubscribe_page(token: str) -> str:
        if token == PREVIEW_UNSUBSCRIBE.rsplit("/", 1)[1]:
            return render_template("web_unsubscribe.html", preview=True, sub=None, token=token, done=False)
        # A GET never unsubscribes (link scanners fetch URLs): it shows one button that POSTs.
        return render_template(
            "web_unsubscribe.html", preview=False, sub=_subscriber(token), token=token, done=False
        )

    @app.post("/unsubscribe/<token>")
    def unsubscribe(token: str) -> str:
        # RFC 8058 one-click: the POST itself unsubscribes, no cookie, no redirect, 200.
        # A bounced address that says stop is unsubscribed too: their word wins.
        sub = _change(token, "unsubscribed", lambda st: st != "unsubscribed")
        return render_template("web_unsubscribe.html", preview=False, sub=sub, token=token, done=True)

    @app.post("/resubscribe/<token>")
    def resubscribe(token: str) -> str:
        sub = _change(token, "active", lambda st: st == "unsubscribed")
        return render_template("web_resubscribed.html", sub=sub)

    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = timedelta(0)
    return app
