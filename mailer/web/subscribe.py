"""The reader's own pages: the sign-up form, the confirmation link's page, and the
preferences page (themes, name, unsubscribe, subscribe again) that every mail links to.

Views parse the request, call one function of mailer.signup, render. The form is plain
HTML that works embedded on another site (a cross-site POST is allowed here, see
mailer.web.app), so abuse is met by a honeypot field, the limits in mailer.signup (429),
and double opt-in itself: nothing reaches a reader who did not click the link.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request

from mailer import signup
from mailer.config import Config
from mailer.db import Database
from mailer.errors import InputError
from mailer.models import Subscriber, SubscriberStatus, utcnow
from mailer.notices import NoticeSender
from mailer.render import PREVIEW_PREFERENCES
from mailer.subscribers import by_preferences_token, save_preferences
from mailer.themes import Themes
from mailer.tokens import Tokens

HONEYPOT = "website"  # hidden from people; a bot that fills every field fills it
PREVIEW_TOKEN = PREVIEW_PREFERENCES.rsplit("/", 1)[1]
PREVIEW_MESSAGE = "This is the link from a preview or test copy; it does not belong to a reader."


def client_ip() -> str:
    return request.remote_addr or "unknown"


def blueprint(db: Database, cfg: Config, tokens: Tokens, sender: NoticeSender) -> Blueprint:
    bp = Blueprint("subscribe", __name__)

    def form_page(form: signup.Signup, error: str = "", code: int = 200) -> tuple[str, int]:
        themes = Themes(cfg.themes).all if len(cfg.themes) > 1 else []
        return render_template("web_subscribe.html", form=form, error=error, themes=themes, sent=False), code

    @bp.get("/subscribe")
    def subscribe_page() -> tuple[str, int]:
        return form_page(signup.Signup(email=request.args.get("email", "")[:320]))

    @bp.post("/subscribe")
    def subscribe() -> tuple[str, int]:
        form = signup.Signup(
            email=request.form.get("email", "")[:320],
            name=request.form.get("name", "")[:400],
            themes=tuple(request.form.getlist("themes")[:50]),
        )
        if request.form.get(HONEYPOT):
            return render_template("web_subscribe.html", sent=True), 200  # as if done
        try:
            signup.request(db, cfg, form, client_ip(), utcnow())
        except InputError as exc:
            return form_page(form, str(exc), 400)
        sender.wake()
        return render_template("web_subscribe.html", sent=True), 200

    @bp.get("/confirm/<token>")
    def confirm_page(token: str) -> str:
        sub = signup.check(db, cfg, tokens, token)
        active = sub.status == SubscriberStatus.ACTIVE
        return confirm_page_of(sub, token, done=False, active=active)

    @bp.post("/confirm/<token>")
    def confirm(token: str) -> str:
        sub = signup.check(db, cfg, tokens, token)
        done = signup.confirm(db, cfg, tokens, token, client_ip(), utcnow())
        sender.wake()  # a welcome issue (digest.welcome), if any
        return confirm_page_of(sub, token, done=done, active=True)

    def confirm_page_of(sub: Subscriber, token: str, done: bool, active: bool) -> str:
        return render_template(
            "web_confirm.html",
            email=sub.email,
            token=token,
            done=done,
            active=active,
            preferences_token=tokens.preferences(sub.id, sub.token_nonce),
        )

    def preferences_page(token: str, sub: Subscriber, saved: bool) -> str:
        return render_template(
            "web_preferences.html",
            sub=sub,
            token=token,
            unsubscribe_token=tokens.make(sub.id, sub.token_nonce),
            themes=Themes(cfg.themes).all if len(cfg.themes) > 1 else [],
            chosen=set(sub.themes.split(",")) if sub.themes else set(),
            saved=saved,
        )

    @bp.get("/preferences/<token>")
    def preferences(token: str) -> str:
        if token == PREVIEW_TOKEN:
            return render_template("web_error.html", code=200, message=PREVIEW_MESSAGE)
        return preferences_page(token, by_preferences_token(db, tokens, token), saved=False)

    @bp.post("/preferences/<token>")
    def save(token: str) -> str:
        # CSRF: the app refuses POSTs another site's page makes (mailer.web.access), and
        # the token in the path is the reader's secret.
        sub = save_preferences(
            db,
            tokens,
            token,
            request.form.getlist("themes")[:50],
            {t.slug for t in cfg.themes},
            request.form.get("name", "")[:400],
        )
        return preferences_page(token, sub, saved=True)

    @bp.errorhandler(InputError)
    def bad_input(exc: InputError) -> tuple[str, int]:
        return render_template("web_error.html", code=400, message=str(exc)), 400

    @bp.errorhandler(signup.TooMany)
    def too_many(exc: signup.TooMany) -> tuple[str, int, dict[str, str]]:
        message = "Too many sign-ups; nothing was sent. Please try again in an hour."
        return render_template("web_error.html", code=429, message=message), 429, {"Retry-After": "3600"}

    @bp.errorhandler(signup.BadLink)
    def bad_link(exc: signup.BadLink) -> tuple[str, int]:
        return render_template("web_error.html", code=400, message=str(exc)), 400

    return bp
