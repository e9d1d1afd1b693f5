"""The editor's pages: dashboard, preview, past digests and the mail catcher.

Every route here is behind access.require_editor (registered in mailer.web.app for the
whole blueprint), and all of them are GETs, so they run read-only and never wait for the
write lock (mailer.web.app wraps GET and HEAD in Database.read_only). Each view calls one
function that gathers what it shows.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, render_template
from sqlalchemy import func, select

from mailer import catcher
from mailer import digest as digests
from mailer.config import Config
from mailer.db import Database
from mailer.digest import PREVIEW_UNSUBSCRIBE, UNSUBSCRIBE_PLACEHOLDER
from mailer.errors import NotFound
from mailer.models import Article, Digest, utcnow
from mailer.scheduler import Schedule
from mailer.subscribers import SubscriberStore
from mailer.themes import Themes
from mailer.web.public import MAX_ID

NOTHING_TO_PREVIEW = "Nothing to preview: no unsent articles."


def dashboard(db: Database, cfg: Config, now: datetime) -> dict[str, Any]:
    """What the dashboard shows; read-only, so it never waits for a writer."""
    with db.read_only():
        with db.reader() as s:
            unsent = dict(
                s.execute(
                    select(Article.theme, func.count())
                    .where(Article.digest_id.is_(None))
                    .group_by(Article.theme)
                ).all()
            )
        counts = SubscriberStore(db).counts()
        recent = digests.list_digests(db, limit=10)
    nxt = Schedule.of(cfg).next_slots(now, 1)
    return {
        "next_send": nxt[0].at if nxt else None,
        "per_theme": [(t.name, t.slug, unsent.get(t.slug, 0)) for t in Themes(cfg.themes).all],
        "unsent_total": sum(unsent.values()),
        "counts": counts,
        "recent": recent,
        "min_articles": cfg.digest.min_articles,
    }


def stored_digest(db: Database, digest_id: int) -> Digest:
    """A sent (or sending) digest as stored; 404 for none or a skipped slot."""
    d = digests.get_digest(db, digest_id)
    if d is None or not d.html:
        abort(404)
    return d


def caught(folder: Path, enabled: bool, name: str) -> Any:
    if not enabled:
        abort(404)
    try:
        return catcher.read_message(folder, name)
    except NotFound:
        abort(404)


def blueprint(db: Database, cfg: Config) -> Blueprint:
    bp = Blueprint("editor", __name__)
    mail_folder = cfg.resolve(cfg.catcher.folder)
    preview_link = cfg.digest.base_url + PREVIEW_UNSUBSCRIBE

    def html_page(body: str) -> Response:
        return Response(body, mimetype="text/html")

    def text_page(body: str) -> Response:
        return Response(body, mimetype="text/plain")

    @bp.get("/")
    def dashboard_page() -> str:
        return render_template("web_dashboard.html", **dashboard(db, cfg, utcnow()))

    @bp.get("/preview")
    def preview() -> Response:
        p = digests.preview(db, cfg)
        if p is None:
            return html_page(render_template("web_error.html", code=200, message=NOTHING_TO_PREVIEW))
        return html_page(p.html)

    @bp.get("/preview.txt")
    def preview_text() -> Response:
        p = digests.preview(db, cfg)
        return text_page(p.text if p else NOTHING_TO_PREVIEW + "\n")

    @bp.get("/digests")
    def digest_list() -> str:
        return render_template("web_digests.html", rows=digests.list_digests(db))

    @bp.get(f"/digests/<int(max={MAX_ID}):digest_id>")
    def digest_html(digest_id: int) -> Response:
        return html_page(stored_digest(db, digest_id).html.replace(UNSUBSCRIBE_PLACEHOLDER, preview_link))

    @bp.get(f"/digests/<int(max={MAX_ID}):digest_id>.txt")
    def digest_text(digest_id: int) -> Response:
        return text_page(stored_digest(db, digest_id).text.replace(UNSUBSCRIBE_PLACEHOLDER, preview_link))

    @bp.get("/mail")
    def mail_list() -> str:
        if not cfg.catcher.enabled:
            abort(404)
        return render_template("web_mail.html", messages=catcher.list_messages(mail_folder))

    @bp.get("/mail/<name>")
    def mail_show(name: str) -> str:
        msg = caught(mail_folder, cfg.catcher.enabled, name)
        text = msg.get_body(("plain",))
        return render_template(
            "web_message.html",
            name=name,
            headers=list(msg.items()),
            text=text.get_content() if text is not None else "",
            has_html=msg.get_body(("html",)) is not None,
        )

    @bp.get("/mail/<name>/html")
    def mail_html(name: str) -> Response:
        part = caught(mail_folder, cfg.catcher.enabled, name).get_body(("html",))
        if part is None:
            abort(404)
        resp = html_page(part.get_content())
        # Mail from outside is untrusted: no scripts, no same-origin access.
        resp.headers["Content-Security-Policy"] = (
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        )
        return resp

    return bp
