"""Lists of people in and out: reading an import file, writing `subscribers export`.

An import file is one of
- a CSV export of Mailchimp ("Email Address", "First Name", "Last Name", ...), listmonk
  (email, name, attributes, status, ...), Substack ("Email", ...), Buttondown (email,
  notes, metadata, ...) or mailer's own `subscribers export`;
- any such file separated by semicolons or tabs instead of commas (the delimiter is
  detected with csv.Sniffer on the first lines);
- a plain list without a header: one address per line (optionally a name after it).

Invariants:
- Header names match case-insensitively, ignoring spaces, "-" and "_" ("Email Address",
  "email_address", "E-Mail" are all the email column); columns not listed here are ignored.
- A person's name is the name column when it is filled, else first and last name joined.
- A `status` column is honoured, so people who left stay gone: listmonk's blocklisted or
  disabled and mailer's unsubscribed import as unsubscribed, bounced or Mailchimp's
  cleaned as bounced; without the column everyone is active; a value not listed here is
  a bad row. The dates (created_at, status_changed_at) are kept from mailer's own export
  only; other services' date columns are ignored.
- Every problem is one line naming the file and line, and the column for a cell:
  `people.csv:7: missing email (column 'Email Address')`. The whole file is read and checked
  before the caller stores anything (the import is all-or-nothing).
- What `write_csv` writes, `read_people` reads back to the same people, statuses and dates.
"""

from __future__ import annotations

import _csv
import csv
import io
import itertools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from mailer.errors import InputError
from mailer.models import Subscriber
from mailer.subscribers import Person, clean_name, normalise_email

DELIMITERS = ",;\t"
SNIFF_CHARS = 64 * 1024

# Normalised header name (lower case, no spaces, "-" or "_") -> the field it holds.
ALIASES = {
    "email": "email",
    "emailaddress": "email",
    "subscriberemail": "email",
    "name": "name",
    "fullname": "name",
    "displayname": "name",
    "firstname": "first",
    "fname": "first",
    "givenname": "first",
    "lastname": "last",
    "lname": "last",
    "surname": "last",
    "familyname": "last",
    "status": "status",
}

# A status column's values (case-insensitive) -> mailer's status.
STATUS_VALUES = {
    "active": "active",
    "subscribed": "active",
    "enabled": "active",
    "unsubscribed": "unsubscribed",
    "disabled": "unsubscribed",
    "blocklisted": "unsubscribed",
    "bounced": "bounced",
    "cleaned": "bounced",
    "complained": "complained",  # mailer's own export: they reported spam
}

EXPORT_COLUMNS = ("email", "name", "status", "created_at", "status_changed_at", "bounce_count")
DATE_COLUMNS = ("created_at", "status_changed_at")
# After EXPORT_COLUMNS, so an older export still reads as mailer's own: a web sign-up's
# consent record (when and from where it was asked for and confirmed) and its themes.
CONSENT_COLUMNS = ("signup_at", "signup_ip", "confirmed_at", "confirm_ip", "themes")


# (line, cells), or (line, why csv could not parse the record).
Row = tuple[int, list[str] | str]


@dataclass
class ReadResult:
    people: list[Person] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _key(header: str) -> str:
    return re.sub(r"[\s_\-]+", "", header.strip().lower())


def _delimiter(text: str) -> str:
    """The delimiter of the first lines (comma when they have none: a one-column list)."""
    sample = text[:SNIFF_CHARS]
    if len(text) > SNIFF_CHARS and "\n" in sample:
        sample = sample[: sample.rindex("\n")]
    try:
        return csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


def _date(raw: str) -> datetime:
    value = datetime.fromisoformat(raw.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Columns:
    """Where each known field is in a row; `labels` names them for error messages."""

    def __init__(self, header: list[str] | None) -> None:
        self.index: dict[str, int] = {}
        self.labels: dict[str, str] = {}
        if header is None:  # a plain list: email, then perhaps a name
            self.index = {"email": 0, "name": 1}
            return
        # The dates only from mailer's own export: other services write theirs in formats
        # of their own, and a date is no reason to refuse an import.
        ours = [h.strip() for h in header[: len(EXPORT_COLUMNS)]] == list(EXPORT_COLUMNS)
        for i, raw in enumerate(header):
            what = raw.strip() if ours and raw.strip() in DATE_COLUMNS else ALIASES.get(_key(raw))
            if what is not None and what not in self.index:
                self.index[what] = i
                self.labels[what] = raw.strip()

    def cell(self, row: list[str], what: str) -> str:
        i = self.index.get(what)
        return row[i].strip() if i is not None and i < len(row) else ""

    def where(self, what: str) -> str:
        label = self.labels.get(what)
        return f" (column {label!r})" if label else ""


def read_people(path: Path) -> ReadResult:
    """Every person in the file, and one line per bad row; InputError when the file as a
    whole is unusable (unreadable, not UTF-8, empty, no email column)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    try:
        first = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{path}:1: {exc}") from None
    if first is None or not any(cell.strip() for cell in first):
        raise InputError(f"{path}: empty file (expected a header line such as email,name, or addresses)")
    columns = _Columns(first)
    rows: Iterator[Row] = _rows(reader)
    result = ReadResult()
    if "email" not in columns.index:
        if "@" not in first[0]:
            raise InputError(
                f"{path}:1: no email column in the header {first!r} (expected one named email, "
                "Email Address or E-mail, or a plain list of addresses)"
            )
        columns = _Columns(None)
        rows = itertools.chain([(1, first)], rows)
    seen: set[str] = set()
    for line, row in rows:
        if isinstance(row, str):  # a csv.Error, as text
            result.errors.append(f"{path}:{line}: {row}")
            continue
        if not any(cell.strip() for cell in row):
            continue
        try:
            person = _person(row, columns)
        except InputError as exc:
            result.errors.append(f"{path}:{line}: {exc}")
            continue
        if person.email.lower() in seen:
            result.errors.append(f"{path}:{line}: {person.email} appears twice in the file")
            continue
        seen.add(person.email.lower())
        result.people.append(person)
    return result


def _rows(reader: _csv.Reader) -> Iterator[Row]:
    """(line, row) for each record; (line, message) for a record csv cannot parse."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, str(exc)
            continue
        yield reader.line_num, row


def _person(row: list[str], columns: _Columns) -> Person:
    raw_email = columns.cell(row, "email")
    if not raw_email:
        raise InputError(f"missing email{columns.where('email')}")
    email = normalise_email(raw_email)
    name = columns.cell(row, "name") or " ".join(
        part for part in (columns.cell(row, "first"), columns.cell(row, "last")) if part
    )
    try:
        name = clean_name(name)
    except InputError as exc:
        raise InputError(f"{exc}{columns.where('name')}") from None
    raw_status = columns.cell(row, "status")
    status = STATUS_VALUES.get(raw_status.lower(), "") if raw_status else "active"
    if not status:
        known = ", ".join(STATUS_VALUES)
        raise InputError(f"unknown status {raw_status!r}{columns.where('status')} (one of: {known})")
    dates: dict[str, datetime | None] = {}
    for what in DATE_COLUMNS:
        raw = columns.cell(row, what)
        try:
            dates[what] = _date(raw) if raw else None
        except ValueError:
            raise InputError(f"not a date: {raw!r}{columns.where(what)}") from None
    return Person(email, name, status, dates["created_at"], dates["status_changed_at"])


# ---------------------------------------------------------------- export


def record(s: Subscriber) -> dict[str, Any]:
    """A subscriber as `subscribers list --json` and `export --format json` print them."""
    return {
        "id": s.id,
        "email": s.email,
        "name": s.name,
        "status": s.status,
        "created_at": s.created_at,
        "status_changed_at": s.status_changed_at,
        "bounce_count": s.bounce_count,
        "signup_at": s.signup_at,
        "signup_ip": s.signup_ip,
        "confirmed_at": s.confirmed_at,
        "confirm_ip": s.confirm_ip,
        "themes": [t for t in s.themes.split(",") if t],
    }


def write_csv(subscribers: Iterable[Subscriber], stream: TextIO) -> None:
    """mailer's export: a header line, then one row per person, dates in ISO 8601 (UTC)."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow((*EXPORT_COLUMNS, *CONSENT_COLUMNS))
    for s in subscribers:
        writer.writerow(
            [
                s.email,
                s.name,
                s.status,
                s.created_at.isoformat(),
                s.status_changed_at.isoformat(),
                s.bounce_count,
                s.signup_at.isoformat() if s.signup_at else "",
                s.signup_ip or "",
                s.confirmed_at.isoformat() if s.confirmed_at else "",
                s.confirm_ip or "",
                s.themes,
            ]
        )
