"""The editor's pages: dashboard, preview, a test copy, past digests and the mail catcher.

Every route here is behind access.require_editor (registered in mailer.web.app for the
whole blueprint). The GETs run read-only and never wait for the write lock (mailer.web.app
wraps GET and HEAD in Database.read_only). Each view calls one function that gathers what
it shows or does what it asks. `cfg` is the app's RequestConfig, so every view reads the
config in force (mailer.web.app); nothing derived from it is kept between requests.

The one POST, the test copy (`/preview/test-copy`), is `digest send --to` from the
browser: both call mailer.delivery.send_test_copy (the address checked, the next digest
previewed and mailed), which changes no state and reads only in read-only transactions,
so it never waits for a send in progress either.
It mails the unsent digest to the address in the request, so a forged request would leak
it; two independent checks stop one:
* mailer.web.app refuses a POST that the browser marks as coming from another site or
  another origin (Sec-Fetch-Site, else Origin: access.cross_site): that check is
  same-origin, so it covers same-site forgery (a sibling subdomain) too;
* the form carries a signed token (itsdangerous, the service's secret key, a salt of its
  own, FORM_TOKEN_MAX_AGE), which only a page that can read ours holds. It covers the
  requests the first check lets through because they carry neither header: a browser
  older than Origin on form posts (Firefox before 70), or a proxy that strips them.
  It is not bound to a session: the editor is one role (loopback, or the one password),
  so there is nothing per person to bind it to.
The address is remembered in a cookie (TEST_COPY_COOKIE: HttpOnly, SameSite=Strict, on
/preview only) once a copy was sent to it: per browser, for the same reason (there are no
editor accounts to store it with).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, abort, render_template, request
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import func, select

from mailer import catcher, delivery
from mailer import digest as digests
from mailer.config import Config
from mailer.db import Database
from mailer.errors import InputError, MailerError, NotFound
from mailer.models import Article, Digest, utcnow
from mailer.render import PREVIEW_LINKS, with_links
from mailer.scheduler import Schedule
from mailer.subscribers import SubscriberStore
from mailer.themes import Themes
from mailer.web.public import MAX_ID

NOTHING_TO_PREVIEW = "Nothing to preview: no unsent articles."
TEST_COPY_COOKIE = "mailer_test_copy_to"
TEST_COPY_COOKIE_AGE = 365 * 24 * 3600
FORM_TOKEN_MAX_AGE = 12 * 3600  # seconds: a page left open over a working day still sends
FORM_TOKEN_SALT = "mailer.web.editor test copy form"
FORM_EXPIRED = (
    f"This form was out of date (a form works for {FORM_TOKEN_MAX_AGE // 3600} hours), so nothing "
    "was sent. It has been renewed: press Send again."
)


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


def blueprint(db: Database, cfg: Config, secret: bytes) -> Blueprint:
    bp = Blueprint("editor", __name__)
    form_tokens = URLSafeTimedSerializer(secret, salt=FORM_TOKEN_SALT)

    def mail_folder() -> Path:
        return cfg.resolve(cfg.catcher.folder)

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

    def test_copy_page(status: int = 200, **shown: Any) -> tuple[str, int]:
        shown.setdefault("address", request.cookies.get(TEST_COPY_COOKIE, ""))
        return render_template(
            "web_preview_test_copy.html", token=form_tokens.dumps("test copy"), **shown
        ), status

    @bp.get("/preview/test-copy")
    def test_copy_form() -> tuple[str, int]:
        return test_copy_page()

    @bp.post("/preview/test-copy")
    def test_copy() -> Response:
        address = request.form.get("to", "")
        try:
            form_tokens.loads(request.form.get("token", ""), max_age=FORM_TOKEN_MAX_AGE)
        except BadData:
            return Response(*test_copy_page(403, address=address, error=FORM_EXPIRED))
        try:
            sent = delivery.send_test_copy(db, cfg, address)
        except MailerError as exc:
            status = 400 if isinstance(exc, InputError) else 502
            return Response(*test_copy_page(status, address=address, error=str(exc)))
        resp = Response(*test_copy_page(address=sent.address, sent=sent))
        resp.set_cookie(
            TEST_COPY_COOKIE,
            sent.address,
            max_age=TEST_COPY_COOKIE_AGE,
            path="/preview",
            secure=request.is_secure,
            httponly=True,
            samesite="Strict",
        )
        return resp

    @bp.get("/digests")
    def digest_list() -> str:
        return render_template("web_digests.html", rows=digests.list_digests(db))

    @bp.get(f"/digests/<int(max={MAX_ID}):digest_id>")
    def digest_html(digest_id: int) -> Response:
        return html_page(with_links(stored_digest(db, digest_id).html, cfg.digest.base_url, PREVIEW_LINKS))

    @bp.get(f"/digests/<int(max={MAX_ID}):digest_id>.txt")
    def digest_text(digest_id: int) -> Response:
        return text_page(with_links(stored_digest(db, digest_id).text, cfg.digest.base_url, PREVIEW_LINKS))

    @bp.get("/mail")
    def mail_list() -> str:
        if not cfg.catcher.enabled:
            abort(404)
        return render_template("web_mail.html", messages=catcher.list_messages(mail_folder()))

    @bp.get("/mail/<name>")
    def mail_show(name: str) -> str:
        msg = caught(mail_folder(), cfg.catcher.enabled, name)
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
        part = caught(mail_folder(), cfg.catcher.enabled, name).get_body(("html",))
        if part is None:
            abort(404)
        resp = html_page(part.get_content())
        # Mail from outside is untrusted: no scripts, no same-origin access.
        resp.headers["Content-Security-Policy"] = (
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:"
        )
        return resp

    return bp
