"""The Flask app: the public and editor blueprints and the rules every request passes.

In order, for every request:
1. a body over MAX_BODY_BYTES is refused (413) before any view runs;
2. an editor's page needs access.require_editor (loopback only, else the password, else
   404); public pages and unknown URLs (404/405 from routing) pass;
3. a state-changing POST from another site is refused (403), except RFC 8058 one-click;
4. GET and HEAD run inside Database.read_only, so no page a reader or the editor looks
   at ever waits for the write lock, and none can write.
Errors are one-line pages (web_error.html), never a traceback.

Creating the app starts its unsubscribe outbox applier, which first replays whatever an
earlier process recorded but did not apply (mailer.web.outbox).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from flask import Flask, Response, abort, render_template, request
from werkzeug.exceptions import HTTPException

from mailer.config import Config
from mailer.db import Database
from mailer.digest import template_environment
from mailer.scheduler import Schedule
from mailer.tokens import Tokens, load_secret
from mailer.unsubscribe_outbox import Busy, Outbox, outbox_folder
from mailer.web import MAX_BODY_BYTES, access, editor, public
from mailer.web.subscription import InvalidLink, Subscriptions

CROSS_SITE = "This form was sent from another web site, so nothing was changed."
SAFE_METHODS = ("GET", "HEAD")


def create_app(db: Database, cfg: Config) -> Flask:
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = timedelta(0)
    app.jinja_loader = template_environment(cfg).loader  # type: ignore[assignment]
    _template_globals(app, cfg)
    outbox = Outbox(db, outbox_folder(cfg)).start()
    subscriptions = Subscriptions(db, Tokens(load_secret(cfg.var_dir)), outbox)
    app.register_blueprint(public.blueprint(db, cfg, subscriptions))
    app.register_blueprint(editor.blueprint(db, cfg))
    _request_rules(app, cfg)
    _error_pages(app)
    app.wsgi_app = _reads_never_wait(app.wsgi_app, db)  # type: ignore[method-assign]
    return app


def _template_globals(app: Flask, cfg: Config) -> None:
    zone = Schedule.of(cfg).zone

    def local(dt: Any) -> str:
        return dt.astimezone(zone).strftime("%a %d %b %Y %H:%M %Z") if dt else "-"

    app.jinja_env.filters["local"] = local

    @app.context_processor
    def _globals() -> dict[str, Any]:
        return {
            "newsletter": cfg.digest.name,
            "accent": cfg.digest.accent_color,
            "catcher_on": cfg.catcher.enabled,
            "language": cfg.digest.language,
        }


def _request_rules(app: Flask, cfg: Config) -> None:
    @app.before_request
    def _limit_body() -> None:
        # Werkzeug only enforces MAX_CONTENT_LENGTH when a view reads the body, and the
        # unsubscribe POST never does: refuse an oversized body before any view runs.
        if (request.content_length or 0) > MAX_BODY_BYTES:
            abort(413)

    @app.before_request
    def _guard_editor_pages() -> Response | None:
        if request.routing_exception is not None or request.blueprint == "public":
            return None
        return access.require_editor(cfg, request)

    @app.before_request
    def _same_site_posts() -> None:
        if request.method in SAFE_METHODS or not access.cross_site(cfg, request):
            return
        if request.endpoint == "public.unsubscribe" and access.one_click(request):
            return
        abort(403, CROSS_SITE)

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        # Same-origin, not no-referrer: our forms' POSTs must carry a real Origin (see access).
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return resp


def _error_pages(app: Flask) -> None:
    def page(code: int, message: str) -> tuple[str, int]:
        return render_template("web_error.html", code=code, message=message), code

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> tuple[str, int]:
        return page(exc.code or 500, exc.description or "")

    @app.errorhandler(InvalidLink)
    def _invalid_link(exc: InvalidLink) -> tuple[str, int]:
        return page(400, str(exc))

    @app.errorhandler(Busy)
    def _busy(exc: Busy) -> tuple[str, int, dict[str, str]]:
        return *page(503, str(exc)), {"Retry-After": "30"}

    @app.errorhandler(Exception)
    def _crash(exc: Exception) -> tuple[str, int]:
        app.logger.exception("request failed")
        return page(500, "Internal error")


def _reads_never_wait(wsgi_app: Callable[..., Iterable[bytes]], db: Database) -> Callable[..., Any]:
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in SAFE_METHODS:
            # Flask builds the whole response inside this call, so every query is covered.
            with db.read_only():
                return wsgi_app(environ, start_response)
        return wsgi_app(environ, start_response)

    return wsgi
