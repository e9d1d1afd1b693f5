"""Subscribers: add, CSV import, list, unsubscribe, forget."""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from mailer.db import Database
from mailer.errors import InputError, NotFound
from mailer.models import Delivery, Subscriber, utcnow
from mailer.parsing import clean_line

STATUSES = ("active", "unsubscribed", "bounced")
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
        """Columns email,name. All-or-nothing unless skip_invalid; every bad row is listed."""
        report = CsvReport()
        rows = list(self._read_csv(path, report))
        if report.errors and not skip_invalid:
            report.imported = False
            return report
        now = utcnow()
        with self.db.session() as s:
            # Existing people, unsubscribed ones included, stay as they are: an import must
            # never silently resubscribe someone who said stop.
            known = {e.lower() for e in s.scalars(select(Subscriber.email))}
            new = [
                {
                    "email": address,
                    "name": name,
                    "status": "active",
                    "token_nonce": new_nonce(),
                    "created_at": now,
                    "status_changed_at": now,
                    "bounce_count": 0,
                }
                for address, name in rows
                if address.lower() not in known
            ]
            # One executemany: a 100,000-row import holds the write lock for about a
            # second, not a minute (the service and other commands wait for it meanwhile).
            if new:
                s.execute(insert(Subscriber), new)
            report.added = len(new)
            report.existing = len(rows) - len(new)
        return report

    def _read_csv(self, path: Path, report: CsvReport) -> Iterator[tuple[str, str]]:
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise InputError(f"{path}:1: {exc}") from None
        if header is None:
            raise InputError(f"{path}: empty file (expected a header line: email,name)")
        columns = [h.strip().lower() for h in header]
        if "email" not in columns:
            raise InputError(f"{path}:1: no 'email' column in the header {header!r}")
        email_col = columns.index("email")
        name_col = columns.index("name") if "name" in columns else None
        seen: set[str] = set()
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                report.errors.append(f"{path}:{reader.line_num}: {exc}")
                continue
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            try:
                if len(row) <= email_col:
                    raise InputError("missing email column")
                address = normalise_email(row[email_col])
                name = clean_name(row[name_col] if name_col is not None and len(row) > name_col else "")
            except InputError as exc:
                report.errors.append(f"{path}:{line}: {exc}")
                continue
            if address.lower() in seen:
                report.errors.append(f"{path}:{line}: {address} appears twice in the file")
                continue
            seen.add(address.lower())
            yield address, name

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
