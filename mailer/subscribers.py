"""Subscribers: add, import, list, unsubscribe, forget.

Invariants: an address is stored once, whatever its case (the database refuses a second
row); an import adds new people only and never changes one who is already there (an
unsubscribed person stays unsubscribed); it is all-or-nothing unless told to skip bad rows.
The file formats an import reads live in mailer.subscriber_io.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from mailer.db import Database
from mailer.errors import InputError, NotFound
from mailer.models import Delivery, Subscriber, SubscriberStatus, theme_key, utcnow
from mailer.parsing import clean_line
from mailer.tokens import Tokens

BAD_PREFERENCES_LINK = "This preferences link is not valid. Nothing was changed."
STATUSES = tuple(s.value for s in SubscriberStatus)  # plain strings: click shows enum names
MAX_NAME_CHARS = 200


def normalise_email(raw: str) -> str:
    """Syntax check only (no DNS): the normalised address, or InputError with the reason.

    Addresses are kept in their ASCII form (IDNA domain) because a non-ASCII local part
    needs SMTPUTF8, which many relays do not offer."""
    try:
        result = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=False)
        return result.ascii_email or result.normalized
    except EmailNotValidError as exc:
        raise InputError(f"invalid email {raw.strip()!r}: {exc}") from None


def clean_name(raw: str) -> str:
    # A name ends up in the To header: line breaks of any kind (a quoted CSV field can
    # hold them) become spaces, then clean_line drops control characters.
    name = clean_line(" ".join((raw or "").splitlines()))
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"name is longer than {MAX_NAME_CHARS} characters")
    return name


def lookup_key(raw: str) -> str:
    """The stored form of an address typed by a person (IDNA domain, as `add` stores it);
    the input as given when it is not a valid address, so the look-up just finds nothing."""
    try:
        return normalise_email(raw)
    except InputError:
        return raw.strip()


def new_nonce() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Person:
    """One person to import; the dates are None when the file does not carry them."""

    email: str
    name: str
    status: str = "active"
    created_at: datetime | None = None
    status_changed_at: datetime | None = None


@dataclass
class CsvReport:
    added: int = 0
    existing: int = 0
    errors: list[str] = field(default_factory=list)
    imported: bool = True


def set_status(s: Session, sub: Subscriber, status: str) -> None:
    """Change a subscriber's status. Leaving `active` takes effect at once, even for a
    digest being delivered right now: their queued and retrying deliveries are skipped
    (delivery re-checks each row just before sending it)."""
    if sub.status != status:
        sub.status = status
        sub.status_changed_at = utcnow()
    if status != "active":
        s.execute(
            update(Delivery)
            .where(Delivery.subscriber_id == sub.id, Delivery.status.in_(("queued", "retry")))
            .values(status="skipped", last_reply=status, updated_at=utcnow())
        )


def by_preferences_token(db: Database, tokens: Tokens, token: str) -> Subscriber:
    """The reader a preferences link belongs to; InputError (400) when forged or revoked."""
    sub_id = Tokens.subscriber_id(token)
    with db.reader() as s:
        sub = s.get(Subscriber, sub_id) if sub_id is not None else None
    if sub is None or not tokens.verify_preferences(token, sub.id, sub.token_nonce):
        raise InputError(BAD_PREFERENCES_LINK)
    return sub


def save_preferences(
    db: Database, tokens: Tokens, token: str, themes: Iterable[str], known: set[str], name: str
) -> Subscriber:
    """A reader's own choice of themes (of those in `known`; none: all) and name, from
    their preferences page. Takes effect from the next digest built."""
    sub = by_preferences_token(db, tokens, token)
    clean = clean_name(name)
    with db.session() as s:
        row = s.get(Subscriber, sub.id)
        if row is None or row.token_nonce != sub.token_nonce:
            raise InputError(BAD_PREFERENCES_LINK)  # forgotten or revoked a moment ago
        row.themes = theme_key(t for t in themes if t in known)
        row.name = clean
        return row


class SubscriberStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @staticmethod
    def _find(s: Session, email: str) -> Subscriber | None:
        return s.scalar(select(Subscriber).where(func.lower(Subscriber.email) == email.lower()))

    def add(self, email: str, name: str = "") -> tuple[Subscriber, bool]:
        """(subscriber, created). An existing address is returned unchanged."""
        address = normalise_email(email)
        clean = clean_name(name)
        with self.db.session() as s:
            existing = self._find(s, address)
            if existing is not None:
                return existing, False
            sub = Subscriber(email=address, name=clean, status="active", token_nonce=new_nonce())
            s.add(sub)
            s.flush()
            return sub, True

    def import_csv(self, path: Path, skip_invalid: bool = False) -> CsvReport:
        """A list of people in any format mailer.subscriber_io reads. All-or-nothing unless
        skip_invalid; every bad row is listed."""
        from mailer.subscriber_io import read_people  # it builds on this module

        read = read_people(path)
        report = CsvReport(errors=read.errors)
        if report.errors and not skip_invalid:
            report.imported = False
            return report
        report.added, report.existing = self.import_people(read.people)
        return report

    def import_people(self, people: list[Person]) -> tuple[int, int]:
        """(added, already there). New people get the status and dates they come with."""
        now = utcnow()
        with self.db.session() as s:
            # Existing people, unsubscribed ones included, stay as they are: an import must
            # never silently resubscribe someone who said stop.
            known = {e.lower() for e in s.scalars(select(Subscriber.email))}
            new = [
                {
                    "email": p.email,
                    "name": p.name,
                    "status": p.status,
                    "token_nonce": new_nonce(),
                    "created_at": p.created_at or now,
                    "status_changed_at": p.status_changed_at or p.created_at or now,
                    "bounce_count": 0,
                }
                for p in people
                if p.email.lower() not in known
            ]
            # One executemany: a 100,000-row import holds the write lock for about a
            # second, not a minute (the service and other commands wait for it meanwhile).
            if new:
                s.execute(insert(Subscriber), new)
        return len(new), len(people) - len(new)

    def get(self, email: str) -> Subscriber:
        """The subscriber with this address (as a person types it); NotFound if none."""
        with self.db.session() as s:
            sub = self._find(s, lookup_key(email))
            if sub is None:
                raise NotFound(f"no subscriber {email.strip()!r}")
            return sub

    def list(self, status: str | None = None) -> list[Subscriber]:
        if status is not None and status not in STATUSES:
            raise InputError(f"unknown status {status!r} (one of: {', '.join(STATUSES)})")
        q = select(Subscriber).order_by(Subscriber.id)
        if status:
            q = q.where(Subscriber.status == status)
        with self.db.session() as s:
            return list(s.scalars(q))

    def counts(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status))
            counts = {status: 0 for status in STATUSES}
            counts.update({status: n for status, n in rows})
            return counts

    def unsubscribe(self, email: str) -> Subscriber:
        with self.db.session() as s:
            sub = self._find(s, lookup_key(email))
            if sub is None:
                raise NotFound(f"no subscriber {email.strip()!r}")
            set_status(s, sub, "unsubscribed")
            return sub

    def forget(self, email: str) -> None:
        """Erase the person: their row and (by cascade) their delivery records."""
        with self.db.session() as s:
            sub = self._find(s, lookup_key(email))
            if sub is None:
                raise NotFound(f"no subscriber {email.strip()!r}")
            s.delete(sub)
