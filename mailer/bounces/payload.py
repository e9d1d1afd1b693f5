"""What every webhook shares: `Refused`, and reading a provider's request without trusting
it (mailer.bounces.webhooks dispatches; mailer.bounces.sns and mailer.bounces.providers
check each provider's proof and map its events).

Invariants, and why they hold:

* **A bad request is one line, never a traceback.** Each reader here either returns a
  value of the type it names or raises `Refused` (400 for anything malformed) with a line
  that quotes at most a short prefix of what came: a body that is not JSON, a field that is
  missing, empty or of the wrong type, base64 that is not, a time that is not one.
* **A signed time is fresh, or the request is refused.** `fresh` refuses a timestamp older
  than `bounces.webhook_max_age_minutes` (a replay, or a clock that is wrong) or more than
  FUTURE_SKEW ahead (clocks disagree by a little, never by more). It is given only times
  the provider signs (SNS Timestamp, SendGrid's header, Mailgun's signature timestamp), so
  a forger cannot move one: the request is refused unless its signature matches too.
* **What an event merely describes is never refused.** The times an event says it
  happened at (`*_or_none`), a status code in free text (`enhanced_status`) and a
  diagnostic (`one_line`: one line, 500 characters at most) are read leniently: odd text
  gives None or "", not the refusal of events that are otherwise proven.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from mailer.config import Config

FUTURE_SKEW = timedelta(minutes=5)  # clocks disagree; a timestamp further ahead is refused

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class Refused(Exception):
    """The request is not taken: `status` is the HTTP answer, `reason` one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def json_body(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        raise Refused(400, "the body is not JSON") from None


def text_field(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Refused(400, f"missing or malformed field {name!r}")
    return value


def object_field(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise Refused(400, f"missing or malformed field {name!r}")
    return value


def objects_field(obj: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = obj.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise Refused(400, f"missing or malformed field {name!r}")
    return value


def base64_bytes(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"the {what} is not base64") from None


def iso_time(text: str, what: str) -> datetime:
    when = iso_time_or_none(text)
    if when is None:
        raise Refused(400, f"the {what} {text[:40]!r} is not an ISO 8601 time with a zone")
    return when


def iso_time_or_none(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else None


def unix_time(text: str, what: str) -> datetime:
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise Refused(400, f"the {what} {text[:40]!r} is not a Unix time")
    return datetime.fromtimestamp(int(text), UTC)


def unix_time_or_none(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def fresh(cfg: Config, when: datetime, now: datetime) -> None:
    age = now - when
    if age > timedelta(minutes=cfg.bounces.webhook_max_age_minutes):
        raise Refused(
            400,
            f"signed at {when:%Y-%m-%d %H:%M:%S} UTC, over bounces.webhook_max_age_minutes "
            f"({cfg.bounces.webhook_max_age_minutes}) ago: a replay, or a clock that is wrong",
        )
    if -age > FUTURE_SKEW:
        raise Refused(400, f"signed at {when:%Y-%m-%d %H:%M:%S} UTC, in the future: a clock is wrong")


def enhanced_status(*texts: object) -> str:
    """The first enhanced status code (5.1.1) in the provider's status field or its text."""
    for text in texts:
        if isinstance(text, str):
            found = _STATUS.search(text)
            if found:
                return found.group(1)
    return ""


def one_line(text: str) -> str:
    return " ".join(text.split())[:500]
