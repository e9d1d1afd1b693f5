"""The Flask app: the public and editor blueprints and the rules every request passes.

In order, for every request:
1. a body over MAX_BODY_BYTES is refused (413) before any view runs (the providers'
   webhooks, mailer.web.webhooks, have a cap of their own);
2. an editor's page needs access.require_editor (loopback only, else the password, else
   404); public pages and unknown URLs (404/405 from routing) pass;
3. a state-changing POST from another site is refused (403), except RFC 8058 one-click
   and the webhooks (a provider's servers, proven by signature);
4. GET and HEAD run inside Database.read_only, so no page a reader or the editor looks
   at ever waits for the write lock, and none can write.
Errors are one-line pages (web_error.html), never a traceback.

The configuration is read per request. `mailer serve` reloads it while running
(mailer.service), so the app holds the process's ConfigInForce, never a Config of its own:
every part of the app, the blueprints and the access rules included, is given a
RequestConfig, which answers from the Config in force when the request began (taken once,
on first use, and kept in flask.g), so a request never mixes two configs and the next one
sees a reload. (One exception, outside this package's reach today: mailer.web.public builds
its Themes once, so an article page names a renamed theme by its old name until a restart.)
The web pages' templates come from the folder the config in force names
(digest.templates), and Jinja checks them for changes (auto_reload), so a reload that
moves the folder, or an edited template, shows on the next page.

Creating the app starts its unsubscribe outbox applier, which first replays whatever an
earlier process recorded but did not apply (mailer.web.outbox).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, g, has_app_context, render_template, request
from jinja2 import BaseLoader, Environment
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from mailer.config import Config, ConfigInForce, Settings
from mailer.db import Database
from mailer.errors import database_problem, is_dbapi_error
from mailer.notices import NoticeSender
from mailer.render import template_environment
from mailer.tokens import Tokens, load_secret
from mailer.unsubscribe_outbox import Busy, Outbox, outbox_folder
from mailer.web import MAX_BODY_BYTES, access, archive, editor, public, subscribe, webhooks
from mailer.web import metrics as metrics_page
from mailer.web.subscription import InvalidLink, Subscriptions

CROSS_SITE = "This form was sent from another web site, so nothing was changed."
SAFE_METHODS = ("GET", "HEAD")
# Blueprints anyone may reach; every other page is the editor's (mailer.web.access).
PUBLIC_BLUEPRINTS = frozenset({"public", "subscribe", "archive", webhooks.NAME})


class RequestConfig(Config):
    """The Config in force for the request being served (see the module docstring).

    A Config whose settings, path and root are looked up on every use: the snapshot in
    flask.g, taken from the ConfigInForce on the request's first read; outside a request
    (while the app is built), the one in force. It copies nothing, so there is no copy to
    go stale."""

    def __init__(self, in_force: ConfigInForce) -> None:  # Config.__init__ would copy: not called
        self._in_force = in_force

    def snapshot(self) -> Config:
        if not has_app_context():
            return self._in_force.current
        if "mailer_config" not in g:
            g.mailer_config = self._in_force.current
        cfg: Config = g.mailer_config
        return cfg

    @property  # type: ignore[override]
    def settings(self) -> Settings:
        return self.snapshot().settings

    @property  # type: ignore[override]
    def path(self) -> Path | None:
        return self.snapshot().path

    @property  # type: ignore[override]
    def root(self) -> Path:
        return self.snapshot().root


class TemplatesInForce(BaseLoader):
    """The web pages' templates from the folder `digest.templates` names in the config in
    force; a compiled template is stale once its file changed or the folder is another."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def _folder(self) -> Path:
        return self.cfg.resolve(self.cfg.digest.templates)

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool]]:
        folder = self._folder()
        source, filename, uptodate = template_environment(self.cfg).loader.get_source(  # type: ignore[union-attr]
            environment, template
        )

        def fresh() -> bool:
            return self._folder() == folder and (uptodate is None or uptodate())

        return source, filename, fresh


def create_app(db: Database, config: Config | ConfigInForce) -> Flask:
    """The app; `config` is the ConfigInForce of a service that reloads it, or a Config."""
    cfg = RequestConfig(config if isinstance(config, ConfigInForce) else ConfigInForce(config))
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = timedelta(0)
    app.jinja_loader = TemplatesInForce(cfg)  # type: ignore[assignment]
    app.jinja_env.auto_reload = True
    _template_globals(app, cfg)
    # The secret key and the outbox live in var/ next to the config file, which a reload
    # cannot move (it reads the same file).
    outbox = Outbox(db, outbox_folder(cfg)).start()
    secret = load_secret(cfg.var_dir)
    subscriptions = Subscriptions(db, Tokens(secret), outbox)
    app.register_blueprint(public.blueprint(db, cfg, subscriptions))
    app.register_blueprint(archive.blueprint(db, cfg))
    # Sign-up confirmations go out from this process as soon as they are asked for.
    sender = NoticeSender(db, cfg).start()
    app.extensions["mailer.notices"] = sender  # closed with the server (close_app)
    app.register_blueprint(subscribe.blueprint(db, cfg, Tokens(secret), sender))
    app.register_blueprint(editor.blueprint(db, cfg, secret))
    app.register_blueprint(webhooks.blueprint(db, cfg, Tokens(secret)))
    app.register_blueprint(metrics_page.blueprint(db))  # an editor's page: not in PUBLIC_BLUEPRINTS
    _request_rules(app, cfg)
    _error_pages(app, db)
    app.wsgi_app = _reads_never_wait(app.wsgi_app, db)  # type: ignore[method-assign]
    return app


def close_app(app: Flask) -> None:
    """Stop what create_app started besides the app itself (the notice sender, the
    webhooks' HTTP client)."""
    sender = app.extensions.get("mailer.notices")
    if sender is not None:
        sender.close()
    hooks = app.extensions.get("mailer.webhooks")  # the SNS certificate client, once used
    if hooks is not None:
        hooks.close()


def _template_globals(app: Flask, cfg: Config) -> None:
    def local(dt: Any) -> str:
        return dt.astimezone(cfg.zone).strftime("%a %d %b %Y %H:%M %Z") if dt else "-"

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
        if request.blueprint == webhooks.NAME:
            return  # its view reads at most webhooks.MAX_BODY_BYTES and logs a refusal
        if (request.content_length or 0) > MAX_BODY_BYTES:
            abort(413)

    @app.before_request
    def _guard_editor_pages() -> Response | None:
        if request.routing_exception is not None or request.blueprint in PUBLIC_BLUEPRINTS:
            return None
        return access.require_editor(cfg, request)

    @app.before_request
    def _same_site_posts() -> None:
        if request.method in SAFE_METHODS or not access.cross_site(cfg, request):
            return
        if request.endpoint == "public.unsubscribe" and access.one_click(request):
            return
        if request.endpoint == "subscribe.subscribe":
            return  # the sign-up form may be embedded on another site (mailer.web.subscribe)
        if request.blueprint == webhooks.NAME:
            return  # a provider's servers, not a browser (mailer.web.webhooks)
        abort(403, CROSS_SITE)

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        # Same-origin, not no-referrer: our forms' POSTs must carry a real Origin (see access).
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return resp


def _error_pages(app: Flask, db: Database) -> None:
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
    def _crash(exc: Exception) -> tuple[str, int] | tuple[str, int, dict[str, str]]:
        if isinstance(exc, SQLAlchemyError) or is_dbapi_error(exc):
            # The database is down or restarting: one line, and the reader is asked to
            # come back (the pool reconnects once it is up again).
            app.logger.error("%s %s: %s", request.method, request.path, database_problem(exc, db.url))
            return *page(503, "The database is unavailable; try again in a moment."), {"Retry-After": "30"}
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
