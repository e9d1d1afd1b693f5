"""Reading an incoming report's MIME structure without raising: what mailer.bounces.dsn
(DSNs, ARF complaints) and mailer.bounces.nonstandard (flufl.bounce) share.

What holds, and why:
* **Headers read as they came, and never raise.** POLICY is compat32, whose headers stay
  the strings they were, so a malformed one cannot raise when read (the default policy
  parses a header when it is first read, and that parser has raised on odd input). One
  change: a header with raw 8-bit bytes reads as a str (the bytes as UTF-8, anything else
  replaced), never as the email.header.Header compat32 returns, which flufl.bounce's
  detectors cannot take (they call .lower() on it). `header_line` gives one clean line,
  "" when absent.
* **A returned message is never looked into.** `walk_parts` goes depth first through
  multipart parts only, never inside message/* parts: the original a bounce returns may
  itself be a DSN or a report. It is iterative, as the nesting depth is the sender's choice.
* **Bodies decode as UTF-8.** `decoded_text` undoes the transfer encoding and reads the
  bytes as UTF-8 (a report's fields are ASCII or, RFC 6533, UTF-8), replacing what is not:
  compat32's own decoding by the charset parameter raises on one Python cannot use.
* **An address is one plain address or nothing.** `plain_address` takes angle brackets off
  and refuses anything with a space, a list separator or quoting, or longer than
  MAX_ADDRESS_CHARS (RFC 5321's 254); `message_id_of` refuses a Message-ID with a space or
  over MAX_MESSAGE_ID_CHARS (noise, and event_id, which holds one, is stored in 500
  characters). Neither guesses at what a malformed value meant.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.message import Message
from email.parser import HeaderParser
from email.policy import Compat32
from email.utils import getaddresses

from mailer.parsing import clean_line

# RFC 5321 caps an address at 254; a Message-ID longer than this is noise (and event_id,
# which holds one, is stored in 500 characters).
MAX_ADDRESS_CHARS = 254
MAX_MESSAGE_ID_CHARS = 250

_BLOCK_GAP = re.compile(r"\r?\n[ \t]*\r?\n")


class _Policy(Compat32):
    """compat32, except that a header with raw 8-bit bytes reads as a str (the bytes as
    UTF-8, anything else replaced), never as an email.header.Header."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        if not isinstance(value, str):  # set by code, not parsed: compat32's own handling
            return str(super().header_fetch_parse(name, value))
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


POLICY = _Policy()


def walk_parts(msg: Message) -> Iterator[Message]:
    """`msg` and its parts, depth first, without looking inside message/* parts (a returned
    message may itself be a report). Iterative: the nesting depth is the sender's choice."""
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            stack.extend(reversed([p for p in part.get_payload() if isinstance(p, Message)]))


def field_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status or feedback-report part, first block first."""
    if not part.is_multipart():  # a body compat32 did not split (a truncated message)
        return _parse_blocks(decoded_text(part))
    blocks = []
    for item in part.get_payload():
        if not isinstance(item, Message):
            continue
        blocks.append(item)
        # compat32 splits only message/delivery-status into blocks; any other message/*
        # type is one header block with the other blocks left as its body.
        rest = decoded_text(item) if not item.is_multipart() else ""
        if rest.strip():
            blocks.extend(_parse_blocks(rest))
    return blocks


def _parse_blocks(text: str) -> list[Message]:
    parser = HeaderParser(policy=POLICY)
    return [parser.parsestr(chunk.strip("\r\n") + "\n") for chunk in _BLOCK_GAP.split(text) if chunk.strip()]


def returned_headers(part: Message) -> Message:
    """The header of the returned message in a message/rfc822 or text/rfc822-headers part."""
    if part.is_multipart():
        payload = part.get_payload()
        if payload and isinstance(payload[0], Message):
            return payload[0]
        return Message(policy=POLICY)
    return HeaderParser(policy=POLICY).parsestr(decoded_text(part))


def decoded_text(part: Message) -> str:
    """A leaf part's body as text, its transfer encoding undone; UTF-8 is assumed, as a
    report's fields are ASCII or (RFC 6533) UTF-8. get_payload(decode=True) is used even
    for plain text: without it compat32 decodes 8-bit text by the charset parameter, and
    raises on one Python cannot use."""
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def header_line(msg: Message | None, name: str) -> str:
    """A header as one clean line; "" when absent."""
    value = msg.get(name) if msg is not None else None
    return "" if value is None else clean_line(str(value))


def header_lines(msg: Message, name: str) -> list[str]:
    return [clean_line(str(value)) for value in msg.get_all(name) or []]


def report_type(msg: Message) -> str:
    try:
        value = msg.get_param("report-type")
    except Exception:  # a Content-Type too broken to read params from: no report type
        return ""
    return value.strip().lower() if isinstance(value, str) else ""


def message_id_of(msg: Message) -> str | None:
    value = header_line(msg, "Message-ID")
    if not value or len(value) > MAX_MESSAGE_ID_CHARS or " " in value:
        return None
    return value


def plain_address(text: str) -> str:
    """`text` when it is one plain address (angle brackets removed), else ""."""
    address = text.strip().removeprefix("<").removesuffix(">").strip()
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or len(address) > MAX_ADDRESS_CHARS:
        return ""
    if any(ch.isspace() or ch in '<>,;"()[]\\' for ch in address):
        return ""
    return address


def addresses_in(value: str) -> list[str]:
    try:
        pairs = getaddresses([value])
    except Exception:  # getaddresses has raised on malformed input in some Python releases
        return []
    return [a for a in (plain_address(address) for _, address in pairs) if a]
