"""The public sign-up, with double opt-in: ask, confirm, purge, and the limits on abuse.

Invariants, and why they hold:
* Nobody gets a digest before confirming: a sign-up makes a `pending` reader (a digest's
  audience is its active readers), and only `confirm` with a valid, unexpired confirm
  token for that reader's current nonce makes them active (Subscriber.confirm).
* The form never tells anyone who is subscribed: `request` answers the same for a new
  address, a pending one, an active one (mailed "you are already subscribed" instead) and
  one that left (mailed a new confirmation; it stays unsubscribed until confirmed). Only
  bad input and the limits answer differently.
* The limits hold for every instance together: they count rows in the database (the
  IP's sign-ups in the last hour; the address's notices in the last hour), checked and
  written in one serialised transaction, and a request over a limit mails nothing.
* Consent is on record: the time and IP of the latest sign-up and of the confirmation.
* A confirmation needs a POST: a GET of the link only shows the button (`check`), since
  mail scanners fetch every link.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from mailer.config import Config
from mailer.db import Database, serialise
from mailer.errors import MailerError
from mailer.models import Notice, SignupRequest, Subscriber, SubscriberStatus, theme_key
from mailer.notices import ALREADY, CONFIRM, WELCOME
from mailer.subscribers import clean_name, new_nonce, normalise_email
from mailer.tokens import Tokens

BAD_LINK = (
    "This confirmation link is not valid or has expired. Nothing was changed; sign up again to get a new one."
)
HOUR = timedelta(hours=1)


class TooMany(MailerError):
    """Over a sign-up limit: nothing was mailed (HTTP 429)."""


class BadLink(MailerError):
    """A confirm token that is forged, revoked or expired (HTTP 400)."""


@dataclass(frozen=True)
class Signup:
    email: str
    name: str = ""
    themes: tuple[str, ...] = ()  # slugs; none: every theme


def request(db: Database, cfg: Config, form: Signup, ip: str | None, now: datetime) -> str:
    """Record a sign-up and queue the mail it calls for (returned: notices.CONFIRM or
    ALREADY). `ip` None: the editor asked (`subscribers add --confirm`), so no per-IP
    limit. InputError for a bad address or name, TooMany over a limit (nothing recorded,
    nothing mailed)."""
    email = normalise_email(form.email)
    name = clean_name(form.name)
    known = {t.slug for t in cfg.themes}
    themes = theme_key(t for t in form.themes if t in known)
    limits = cfg.signup
    with db.session() as s:
        serialise(s, "signup")  # one check-then-write at a time, across instances
        if ip is not None:
            recent = SignupRequest.at > now - HOUR
            from_ip = s.scalar(select(func.count()).where(SignupRequest.ip == ip, recent))
            if (from_ip or 0) >= limits.per_ip_per_hour:
                raise TooMany(f"too many sign-ups from {ip} in the last hour")
        sub = s.scalar(select(Subscriber).where(func.lower(Subscriber.email) == email.lower()))
        if sub is not None:
            mailed = s.scalar(
                select(func.count()).where(Notice.subscriber_id == sub.id, Notice.created_at > now - HOUR)
            )
            if (mailed or 0) >= limits.per_address_per_hour:
                raise TooMany("a confirmation was mailed to this address less than an hour ago")
        if ip is not None:
            s.add(SignupRequest(ip=ip, at=now))
        kind = CONFIRM
        if sub is None:
            sub = Subscriber(
                email=email,
                name=name,
                status=SubscriberStatus.PENDING,
                token_nonce=new_nonce(),
                created_at=now,
                status_changed_at=now,
                themes=themes,
            )
            s.add(sub)
        elif sub.status == SubscriberStatus.ACTIVE:
            kind = ALREADY  # nothing changes: preferences are where themes change
        else:  # pending again, or left before: a new confirmation, same record
            if sub.status == SubscriberStatus.PENDING:
                sub.name = name
            sub.themes = themes
        if kind == CONFIRM:
            sub.signup_at, sub.signup_ip = now, ip
        s.flush()
        s.add(Notice(subscriber_id=sub.id, kind=kind, created_at=now))
    return kind


def check(db: Database, cfg: Config, tokens: Tokens, token: str) -> Subscriber:
    """The reader a confirm token belongs to (for the page with the button); BadLink."""
    sub_id = Tokens.timed_id(token)
    with db.reader() as s:
        sub = s.get(Subscriber, sub_id) if sub_id is not None else None
    max_age = int(timedelta(days=cfg.signup.confirm_days).total_seconds())
    if sub is None or not tokens.verify_confirm(token, sub.id, sub.token_nonce, max_age):
        raise BadLink(BAD_LINK)
    return sub


def confirm(db: Database, cfg: Config, tokens: Tokens, token: str, ip: str, now: datetime) -> bool:
    """Double opt-in's second step: the reader is active. False when they already were
    (a second click changes nothing); BadLink for a bad token."""
    sub = check(db, cfg, tokens, token)
    with db.session() as s:
        row = s.get(Subscriber, sub.id)
        if row is None or row.token_nonce != sub.token_nonce:
            raise BadLink(BAD_LINK)  # forgotten or revoked a moment ago
        confirmed = row.confirm(ip, now)
        if confirmed and cfg.digest.welcome == "latest":
            s.add(Notice(subscriber_id=row.id, kind=WELCOME, created_at=now))
        return confirmed


def purge(db: Database, cfg: Config, now: datetime) -> int:
    """Forget sign-ups never confirmed within signup.confirm_days (their notices go with
    them), and the per-IP counts older than an hour; how many readers were forgotten."""
    with db.session() as s:
        n = s.execute(
            delete(Subscriber)
            .where(
                Subscriber.status == SubscriberStatus.PENDING,
                Subscriber.signup_at < now - timedelta(days=cfg.signup.confirm_days),
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        s.execute(delete(SignupRequest).where(SignupRequest.at < now - HOUR))
    return int(n or 0)
