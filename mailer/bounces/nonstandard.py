"""The bounces that are neither DSN nor ARF: the old Exim, qmail, Yahoo, Exchange and
plain-text formats real MTAs still send. flufl.bounce says who failed and whether for good;
the notification's own text gives each one's status and diagnostic. mailer.bounces.dsn
calls this only for a message with no delivery-status or feedback-report part, and makes
the Reports.

What holds, and why:
* **Who failed is flufl.bounce's word alone**, never a guess made here: `failures` maps each
  address its detectors find (a plain address, mailer.bounces.mime.plain_address) to
  whether it failed for good; one it finds both temporary and permanent is permanent. No
  address found: not a bounce (ordinary mail, auto-replies).
* **flufl.bounce is given what it can take.** Found by fuzzing it with the samples: its
  detectors call .lower() on header values, which fails on the email.header.Header that
  compat32 returns for a header with raw 8-bit bytes (so the message is read with
  mime.POLICY, which returns a str); its Yale detector takes getaddresses(From)[0], which
  fails when there is no From (so it is given "From: <>"). Either failure stopped every
  detector after it. It re-raises whatever one of its detectors raises: `failures` turns
  that, and only that, into Unreadable (the exception's type name); the caller makes it a
  problem line.
* **Bounded.** flufl.bounce runs some 60 patterns over every line of every text part, which
  takes minutes for 10 MB of short lines, so it reads the first FLUFL_BYTES of the message
  (cut at a line end): a bounce says who failed at its top. The text read for a diagnostic
  is at most _WINDOW_CHARS after the address.
* **Status and diagnostic come from the paragraph after the address** (where MTAs quote
  the SMTP reply), up to its end or the next failed address: an enhanced code ("5.1.1")
  not part of a longer dotted number (an IP address), else a reply code ("550" gives
  "5.0.0"), else "". The text is the text/plain parts, else the HTML ones as text.
* **The returned message's Message-ID**, when there is no returned part to read it from,
  is the first Message-ID header line quoted in the notification.

flufl.bounce's own logging is quieted where it is imported, here (see below).
"""

from __future__ import annotations

import email
import html
import logging
import re
from email.message import Message
from email.utils import getaddresses

from flufl.bounce import all_failures

from mailer.bounces.mime import POLICY, plain_address

FLUFL_BYTES = 64 * 1024

# In free text: an enhanced code that is not part of a longer dotted number (an IP address).
_STATUS_IN_TEXT = re.compile(r"(?<![\d.])([45]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
# A bare SMTP reply code: "said: 550 Unknown user", "550-'5.2.2 ...".
_REPLY_IN_TEXT = re.compile(r"(?<![\w.:/#-])([45])\d\d(?=[\s-])")
_MESSAGE_ID_LINE = re.compile(r"^message-id:[ \t]*(<[^<>\s]{1,248}>)", re.IGNORECASE | re.MULTILINE)
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n")
_TAG = re.compile(r"<[^>]*>")
# How much text after a failed address is read for its diagnostic and status.
_WINDOW_CHARS = 1000

# flufl.bounce logs every detector it runs at INFO and a traceback at ERROR before it
# re-raises; what it did is told here, once, by the Report or the problem line.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


class Unreadable(Exception):
    """flufl.bounce raised; the argument is the type name of what it raised."""


def failures(data: bytes) -> dict[str, bool]:
    """address -> whether it failed for good, as flufl.bounce reads the top of `data`;
    permanent wins over temporary. Unreadable when flufl.bounce raises."""
    head = data
    if len(head) > FLUFL_BYTES:
        head = head[: head.rfind(b"\n", 0, FLUFL_BYTES) + 1] or head[:FLUFL_BYTES]
    msg = email.message_from_bytes(head, policy=POLICY)
    if not getaddresses([str(msg.get("From", ""))]):
        # flufl.bounce 6.0's Yale detector takes getaddresses(From)[0], which raises for
        # an empty or missing From; the detectors after it would never run.
        del msg["From"]
        msg["From"] = "<>"
    try:
        temporary, permanent = all_failures(msg)
    except Exception as exc:  # flufl.bounce re-raises what one of its detectors raised
        raise Unreadable(type(exc).__name__) from exc
    failed: dict[str, bool] = {}  # address -> permanent; permanent wins over temporary
    for raw, is_permanent in [*((a, False) for a in temporary), *((a, True) for a in permanent)]:
        address = plain_address(raw.decode("ascii", "replace"))
        if address:
            failed[address] = failed.get(address, False) or is_permanent
    return failed


def notification_text(parts: list[Message]) -> str:
    """The human-readable text of a bounce: its text/plain parts, else its HTML as text."""
    texts = [_text_of(p) for p in parts if p.get_content_type() == "text/plain"]
    if not any(texts):
        texts = [
            html.unescape(_TAG.sub(" ", _text_of(p))) for p in parts if p.get_content_type() == "text/html"
        ]
    return "\n\n".join(texts).replace("\r\n", "\n")


def quoted_message_id(text: str) -> str | None:
    """The first Message-ID header line quoted in the notification's text."""
    quoted = _MESSAGE_ID_LINE.search(text)
    return quoted.group(1) if quoted else None


def _text_of(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    try:
        return raw.decode(part.get_content_charset() or "utf-8", "replace")
    except (LookupError, ValueError):  # a charset Python does not know ("unicode-1-1-utf-7")
        return raw.decode("utf-8", "replace")


def paragraph_after(text: str, address: str, others: list[str]) -> str:
    """What the notification says right after `address`: up to the end of its paragraph or
    the next failed address, whichever comes first."""
    found = re.search(re.escape(address), text, re.IGNORECASE)  # not .lower(): it can change lengths
    if found is None:
        return ""
    window = text[found.end() : found.end() + _WINDOW_CHARS].lstrip(">:] \t\n")
    end = _PARAGRAPH_END.search(window)
    window = window[: end.start()] if end else window
    cuts = [m.start() for m in (re.search(re.escape(o), window, re.IGNORECASE) for o in others) if m]
    return window[: min(cuts)] if cuts else window


def status_in_text(text: str) -> str:
    match = _STATUS_IN_TEXT.search(text)
    if match:
        return match.group(1)
    reply = _REPLY_IN_TEXT.search(text)
    return f"{reply.group(1)}.0.0" if reply else ""
