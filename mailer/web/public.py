"""The public pages: health check, articles of sent digests, unsubscribe and resubscribe.
(The archive of sent issues is mailer.web.archive.)

These are reachable by anyone wherever the server listens. An article page shows an
article only once its digest was sent (Article.sent_at); drafts, held and reserved ones
are the editor's (mailer.web.access) and 404 to everyone else, so sequential ids reveal
nothing unsent. It names the source as readers know it (mailer.articles.source_name), never
the file an article was imported from. A GET never changes anything (link scanners fetch
URLs): the unsubscribe page shows one button that POSTs; /unsubscribe without a token is
where the archive's copy of an issue links instead of a reader's own page.

/healthz runs mailer.metrics.health's checks (database, scheduler, relay back-off): 200
"ok" when all pass, 503 naming the failed ones when not, as text or, asked for JSON
(Accept: application/json, or ?format=json), as an object; which check failed is public,
its detail (a database or relay error) only the editor's. /livez only says the process
serves (a liveness probe: a database outage must not fail it, since restarting mailer
would not fix the database).
"""

from __future__ import annotations

import json

from flask import Blueprint, Response, abort, current_app, render_template, request
from werkzeug.datastructures import MIMEAccept

from mailer import archive, metrics
from mailer.articles import is_http_url, source_name
from mailer.config import Config
from mailer.db import Database
from mailer.models import Article, utcnow
from mailer.render import PREVIEW_UNSUBSCRIBE, lead_of
from mailer.themes import Themes
from mailer.web import access
from mailer.web.subscription import Subscriptions

MAX_ID = 2**63 - 1  # ids above SQLite's INTEGER range are no row (404), not an OverflowError
PREVIEW_TOKEN = PREVIEW_UNSUBSCRIBE.rsplit("/", 1)[1]
FAVICON_MAX_AGE = 24 * 3600  # seconds


def readable_article(db: Database, article_id: int, editor: bool) -> Article | None:
    """The article if this reader may see it: sent, or the editor is asking."""
    with db.reader() as s:
        a = s.get(Article, article_id)
    return a if a is not None and (a.is_sent or editor) else None


def _wants_json(accept: MIMEAccept) -> bool:
    """The client prefers JSON to plain text (`Accept: application/json`)."""
    return accept.best_match(["text/plain", "application/json"], default="text/plain") == "application/json"


def blueprint(db: Database, cfg: Config, subscriptions: Subscriptions) -> Blueprint:
    bp = Blueprint("public", __name__)

    @bp.get("/healthz")
    def health() -> Response:
        report = metrics.health(db, current_app.extensions.get(metrics.HEALTH_KEY), utcnow())
        details = access.is_editor(cfg, request)
        status = 200 if report.ok else 503
        if request.args.get("format") == "json" or _wants_json(request.accept_mimetypes):
            body = json.dumps(report.as_json(details=details), indent=2) + "\n"
            return Response(body, status, mimetype="application/json")
        return Response(report.as_text(details=details), status, mimetype="text/plain")

    @bp.get("/livez")
    def live() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @bp.get("/favicon.svg")
    @bp.get("/favicon.ico")  # where browsers look on a page that links none (a mail's own HTML)
    def favicon() -> Response:
        # In the accent colour; templates/favicon.svg, so a templates folder may replace it.
        icon = Response(render_template("favicon.svg"), mimetype="image/svg+xml")
        icon.cache_control.public = True
        icon.cache_control.max_age = FAVICON_MAX_AGE
        return icon

    @bp.get(f"/articles/<int(max={MAX_ID}):article_id>")
    def article(article_id: int) -> str:
        a = readable_article(db, article_id, access.is_editor(cfg, request))
        if a is None:
            abort(404)
        return render_template(
            "web_article.html",
            a=a,
            theme=Themes(cfg.themes).name(a.theme),  # per request: the config may be reloaded
            lead=lead_of(a.paragraphs, cfg.digest.lead_chars),
            original=a.url if a.url and is_http_url(a.url) else None,
            source=source_name(a.source, a.url),
            date=a.published_at or a.sent_at,
            # Back to the issue that carried it, in the archive (when there is one).
            archive=cfg.web.archive,
            issue=archive.issue_of_article(db, a.digest_id) if cfg.web.archive else None,
        )

    @bp.get("/unsubscribe")
    def unsubscribe_help() -> str:
        return render_template("web_unsubscribe.html", preview=False, public=True, done=False)

    @bp.get("/unsubscribe/<token>")
    def unsubscribe_page(token: str) -> str:
        if token == PREVIEW_TOKEN:
            return render_template("web_unsubscribe.html", preview=True, token=token, done=False)
        sub = subscriptions.claim(token)
        preferences = subscriptions.tokens.preferences(sub.id, sub.token_nonce)
        return render_template(
            "web_unsubscribe.html", preview=False, sub=sub, token=token, done=False, preferences=preferences
        )

    @bp.post("/unsubscribe/<token>")
    def unsubscribe(token: str) -> str:
        # RFC 8058 one-click: the POST itself unsubscribes, no cookie, no redirect, 200.
        done = subscriptions.unsubscribe(token)
        return render_template("web_unsubscribe.html", preview=False, done=True, result=done)

    @bp.post("/resubscribe/<token>")
    def resubscribe(token: str) -> str:
        return render_template("web_resubscribed.html", sub=subscriptions.resubscribe(token))

    return bp
