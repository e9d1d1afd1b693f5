"""One incoming mail to Reports: RFC 3464 DSNs, the non-standard bounces real MTAs still
send (read by flufl.bounce), and RFC 5965 ARF complaints.

    parsed = parse_mail(data, Source.IMAP, verp_token=token, received_at=utcnow())
    parsed.reports   # one per failed recipient, or one complaint
    parsed.problem   # "" or one line saying why there is no report

What holds, and why:
* **Never raises.** The message is read with compat32, whose headers stay the strings they
  were, so a malformed one cannot raise when read (the default policy parses a header when
  it is first read, and that parser has raised on odd input). flufl.bounce is called inside
  a try, as it re-raises whatever one of its detectors raises. A last guard in parse_mail
  turns anything else (a RecursionError from MIME nested thousands deep) into a problem line.
* **flufl.bounce is given what it can take.** Found by fuzzing it with the samples: its
  detectors call .lower() on header values, which fails on the email.header.Header that
  compat32 returns for a header with raw 8-bit bytes (so _Policy returns a str, the bytes
  read as UTF-8); its Yale detector takes getaddresses(From)[0], which fails when there is
  no From (so it is given "From: <>"). Either failure stopped every detector after it.
* **Bounded.** More than MAX_MESSAGE_BYTES is refused by its length, unread. flufl.bounce
  runs some 60 patterns over every line of every text part, which takes minutes for 10 MB
  of short lines, so it reads the first FLUFL_BYTES of the message: a bounce says who failed
  at its top. At most MAX_REPORTS recipients are reported from one message (mailer sends
  each reader a message of their own).
* **The kind of message is decided by its structure.** A message/feedback-report part makes
  it an ARF report; a message/delivery-status part (or RFC 6533's global one) a DSN; only a
  message with neither goes to flufl.bounce, whose detectors know the old Exim, qmail,
  Yahoo, Exchange and plain-text formats. Parts inside a returned message (message/rfc822,
  text/rfc822-headers) are never looked into: the original a bounce returns may itself be
  a DSN.
* **Who failed comes from fields or from flufl.bounce, never from guesses made here.** A DSN
  names each recipient: Original-Recipient (the address mailer sent to, before any
  forwarding) else Final-Recipient. An ARF report names its Original-Rcpt-To, else the
  original message's To. For any other message flufl.bounce alone decides who failed, and
  whether for good; this module only adds the status and diagnostic, read from the
  paragraph of the notification that follows the address (where MTAs quote the SMTP
  reply): an enhanced code ("5.1.1"), else a reply code ("550" gives "5.0.0"), else "".
* **Hard or soft: the status class decides when there is one** (the issue's rule: 5.x.x
  hard, 4.x.x soft), else the words: a DSN's Action (failed: hard, delayed: soft) or
  flufl.bounce's permanent or temporary. So a message a relay gave up on after days of 4xx
  ("Action: failed", "Status: 4.4.7") is soft: the address itself was never refused. A DSN
  recipient with no Status is reported with status "" and the kind its Action gives; one
  with neither Action nor Status is not guessed at (a problem line when nothing else in the
  DSN is usable). Delivered, relayed and expanded recipients make no report.
* **Not bounces** give no report and a problem starting with NOT_A_BOUNCE, so the mailbox
  poller leaves them where they are: ordinary mail and auto-replies (flufl.bounce finds no
  failure in them), a DSN of successful delivery only, an ARF report of another type than
  abuse (DMARC auth-failure reports are ARF too), a complaint sent as a plain forward (old
  Hotmail JMRP: not ARF, so not read), and the bounce of a bounce: when the returned
  message was itself automatic (a report, Auto-Submitted: auto-replied, or from the null
  sender), it was no digest of ours.
* **Ids.** verp_token is the caller's (from the address the bounce was sent to) and is
  copied, never read from the content. message_id is the returned message's Message-ID
  (from its part; in a non-standard bounce, the first Message-ID header line quoted in the
  notification). event_id is "<the report's own Message-ID>|<recipient>", or
  "sha256:<hex of the bytes>|<recipient>" when it has no usable Message-ID, so the same
  report received twice is the same event. occurred_at is the report's Date, unless that
  is missing, unreadable or later than received_at (a report is not written after it
  arrives: a clock is wrong), then received_at.
* **A complaint names one reader or none.** Several Original-Rcpt-To (a spam trap's report)
  name nobody in particular: the one the original was addressed To, else recipient None,
  left to the token or Message-ID. With no recipient, no Message-ID and no token there is
  no way to tell whose: a problem line.
"""

from __future__ import annotations

import email
import hashlib
import html
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import HeaderParser
from email.policy import Compat32
from email.utils import getaddresses, parsedate_to_datetime

from flufl.bounce import all_failures

from mailer.bounces.report import BounceKind, Report, Source
from mailer.parsing import clean_line

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
NOT_A_BOUNCE = "not a bounce or complaint"
MAX_DIAGNOSTIC_CHARS = 500
# RFC 5321 caps an address at 254; a Message-ID longer than this is noise (and event_id,
# which holds one, is stored in 500 characters).
MAX_ADDRESS_CHARS = 254
MAX_MESSAGE_ID_CHARS = 250
FLUFL_BYTES = 64 * 1024
MAX_REPORTS = 100

_DELIVERY_STATUS = frozenset({"message/delivery-status", "message/global-delivery-status"})
_FEEDBACK_REPORT = "message/feedback-report"
_ORIGINAL = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",  # not a registered type, but written by some MTAs
        "message/global-headers",
    }
)
_SUCCESS_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
# Status: 5.1.1, maybe with a comment after it ("5.0.0 (permanent failure)", Amazon SES).
_STATUS_FIELD = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# In free text: an enhanced code that is not part of a longer dotted number (an IP address).
_STATUS_IN_TEXT = re.compile(r"(?<![\d.])([45]\.\d{1,3}\.\d{1,3})(?!\.?\d)")
# A bare SMTP reply code: "said: 550 Unknown user", "550-'5.2.2 ...".
_REPLY_IN_TEXT = re.compile(r"(?<![\w.:/#-])([45])\d\d(?=[\s-])")
# A diagnostic type before the text (RFC 3464 2.3.6): "smtp; 550 5.1.1 ...".
_DIAGNOSTIC_TYPE = re.compile(r"^[A-Za-z][\w-]*\s*;\s*")
_MESSAGE_ID_LINE = re.compile(r"^message-id:[ \t]*(<[^<>\s]{1,248}>)", re.IGNORECASE | re.MULTILINE)
_BLOCK_GAP = re.compile(r"\r?\n[ \t]*\r?\n")
_PARAGRAPH_END = re.compile(r"\n[ \t]*\n")
_TAG = re.compile(r"<[^>]*>")
# How much text after a failed address is read for its diagnostic and status.
_WINDOW_CHARS = 1000

# flufl.bounce logs every detector it runs at INFO and a traceback at ERROR before it
# re-raises; what it did is told here, once, by the Report or the problem line.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)


class _Policy(Compat32):
    """compat32, except that a header with raw 8-bit bytes reads as a str (the bytes as
    UTF-8, anything else replaced), never as an email.header.Header."""

    def header_fetch_parse(self, name: str, value: str) -> str:
        if not isinstance(value, str):  # set by code, not parsed: compat32's own handling
            return str(super().header_fetch_parse(name, value))
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


_POLICY = _Policy()


@dataclass(frozen=True)
class Parsed:
    reports: list[Report]  # one per failed recipient (a DSN can name several), or one complaint
    problem: str = ""  # "" or one line when the message gives no report


def parse_mail(
    data: bytes, source: Source, verp_token: str | None = None, received_at: datetime | None = None
) -> Parsed:
    """The Reports one incoming mail makes; see the module docstring. Never raises."""
    if len(data) > MAX_MESSAGE_BYTES:
        limit = MAX_MESSAGE_BYTES // 1024 // 1024
        return Parsed([], f"message larger than {limit} MB ({len(data) / 1024 / 1024:.1f} MB): not read")
    try:
        return _Reader(data, source, verp_token, received_at).parse()
    except Exception as exc:  # the last guard of "never raises": bad input gets a line, not a crash
        return Parsed([], f"unreadable message ({type(exc).__name__})")


class _Reader:
    def __init__(self, data: bytes, source: Source, verp_token: str | None, received_at: datetime | None):
        self.data = data
        self.msg = email.message_from_bytes(data, policy=_POLICY)
        self.source = source
        self.verp_token = verp_token
        self.event_prefix = _message_id(self.msg) or f"sha256:{hashlib.sha256(data).hexdigest()}"
        self.occurred_at = _occurred_at(self.msg, received_at)

    def parse(self) -> Parsed:
        parts = list(_parts(self.msg))
        feedback = [p for p in parts if p.get_content_type() == _FEEDBACK_REPORT]
        statuses = [p for p in parts if p.get_content_type() in _DELIVERY_STATUS]
        original_part = next((p for p in parts if p.get_content_type() in _ORIGINAL), None)
        original = _headers_of(original_part) if original_part is not None else None
        if feedback or _report_type(self.msg) == "feedback-report":
            return self._complaint(feedback, original)
        if original is not None and _is_automatic(original):
            return Parsed([], f"{NOT_A_BOUNCE} (a bounce of a bounce)")
        message_id = _message_id(original) if original is not None else None
        if statuses:
            return self._dsn(statuses, message_id)
        return self._nonstandard(parts, message_id)

    def _dsn(self, parts: list[Message], message_id: str | None) -> Parsed:
        reports: dict[str, Report] = {}
        undecided: list[str] = []
        succeeded = False
        for part in parts:
            for block in _blocks(part):
                recipient = _recipient(block)
                action = _action(_header(block, "Action"))
                status = _status(_header(block, "Status"))
                if not (recipient or action or status):
                    continue  # the per-message block (Reporting-MTA, Arrival-Date)
                if action in _SUCCESS_ACTIONS or (not action and status.startswith("2")):
                    succeeded = True
                    continue
                kind = _dsn_kind(action, status)
                if kind is None:
                    undecided.append(recipient or "a recipient with no address")
                elif recipient and recipient.lower() not in reports:  # the first block about someone
                    diagnostic = _DIAGNOSTIC_TYPE.sub("", _header(block, "Diagnostic-Code"))
                    reports[recipient.lower()] = self._report(kind, recipient, status, diagnostic, message_id)
                    if len(reports) == MAX_REPORTS:
                        return Parsed(list(reports.values()), f"a DSN naming over {MAX_REPORTS} recipients")
        if reports:
            return Parsed(list(reports.values()))
        if undecided:
            return Parsed([], f"a DSN with neither Action nor Status for {undecided[0]}")
        if succeeded:
            return Parsed([], f"{NOT_A_BOUNCE} (a DSN of successful delivery only)")
        return Parsed([], "a DSN with no recipient")

    def _nonstandard(self, parts: list[Message], message_id: str | None) -> Parsed:
        head = self.data
        if len(head) > FLUFL_BYTES:
            head = head[: head.rfind(b"\n", 0, FLUFL_BYTES) + 1] or head[:FLUFL_BYTES]
        msg = email.message_from_bytes(head, policy=_POLICY)
        if not getaddresses([str(msg.get("From", ""))]):
            # flufl.bounce 6.0's Yale detector takes getaddresses(From)[0], which raises for
            # an empty or missing From; the detectors after it would never run.
            del msg["From"]
            msg["From"] = "<>"
        try:
            temporary, permanent = all_failures(msg)
        except Exception as exc:  # flufl.bounce re-raises what one of its detectors raised
            return Parsed([], f"flufl.bounce could not read it ({type(exc).__name__})")
        failed: dict[str, bool] = {}  # address -> permanent; permanent wins over temporary
        for raw, is_permanent in [*((a, False) for a in temporary), *((a, True) for a in permanent)]:
            address = _address(raw.decode("ascii", "replace"))
            if address:
                failed[address] = failed.get(address, False) or is_permanent
        if not failed:
            return Parsed([], NOT_A_BOUNCE)
        text = _notification_text(parts)
        if message_id is None:
            quoted = _MESSAGE_ID_LINE.search(text)
            message_id = quoted.group(1) if quoted else None
        reports = []
        for address in sorted(failed)[:MAX_REPORTS]:
            paragraph = _paragraph_after(text, address, [a for a in failed if a != address])
            status = _status_in_text(paragraph)
            kind = _class_kind(status) or (BounceKind.HARD if failed[address] else BounceKind.SOFT)
            reports.append(self._report(kind, address, status, paragraph, message_id))
        return Parsed(reports)

    def _complaint(self, feedback: list[Message], original: Message | None) -> Parsed:
        fields = next((block for part in feedback for block in _blocks(part)), None)
        if fields is None:
            return Parsed([], "an ARF report without its feedback-report part")
        # Required by RFC 5965; the few early reports without it were complaints all the same.
        feedback_type = (_header(fields, "Feedback-Type").lower().split() or ["abuse"])[0]
        if feedback_type != "abuse":
            return Parsed([], f"{NOT_A_BOUNCE} (an ARF {feedback_type} report, not a complaint)")
        named = list(dict.fromkeys(a for a in map(_address, _header_all(fields, "Original-Rcpt-To")) if a))
        addressed = _addresses(_header(original, "To")) if original is not None else []
        if len(named) == 1:
            recipient: str | None = named[0]
        elif named:
            to = {a.lower() for a in addressed}
            recipient = next((a for a in named if a.lower() in to), None)
        else:
            recipient = addressed[0] if len(addressed) == 1 else None
        message_id = _message_id(original) if original is not None else None
        if not (recipient or message_id or self.verp_token):
            what = "without the original message" if original is None else "naming no recipient or Message-ID"
            return Parsed([], f"an ARF report {what}: no way to tell whose")
        agent = _header(fields, "User-Agent")
        diagnostic = f"abuse report ({agent})" if agent else "abuse report"
        return Parsed([self._report(BounceKind.COMPLAINT, recipient, "", diagnostic, message_id)])

    def _report(
        self, kind: BounceKind, recipient: str | None, status: str, diagnostic: str, message_id: str | None
    ) -> Report:
        return Report(
            kind=kind,
            source=self.source,
            event_id=f"{self.event_prefix}|{recipient or ''}",
            verp_token=self.verp_token,
            message_id=message_id,
            recipient=recipient or None,
            status=status,
            diagnostic=clean_line(diagnostic)[:MAX_DIAGNOSTIC_CHARS],
            occurred_at=self.occurred_at,
        )


def _parts(msg: Message) -> Iterator[Message]:
    """`msg` and its parts, depth first, without looking inside message/* parts (a returned
    message may itself be a report). Iterative: the nesting depth is the sender's choice."""
    stack = [msg]
    while stack:
        part = stack.pop()
        yield part
        if part.get_content_maintype() == "multipart" and part.is_multipart():
            stack.extend(reversed([p for p in part.get_payload() if isinstance(p, Message)]))


def _blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status or feedback-report part, first block first."""
    if not part.is_multipart():  # a body compat32 did not split (a truncated message)
        return _parse_blocks(_decoded(part))
    blocks = []
    for item in part.get_payload():
        if not isinstance(item, Message):
            continue
        blocks.append(item)
        # compat32 splits only message/delivery-status into blocks; any other message/*
        # type is one header block with the other blocks left as its body.
        rest = _decoded(item) if not item.is_multipart() else ""
        if rest.strip():
            blocks.extend(_parse_blocks(rest))
    return blocks


def _parse_blocks(text: str) -> list[Message]:
    parser = HeaderParser(policy=_POLICY)
    return [parser.parsestr(chunk.strip("\r\n") + "\n") for chunk in _BLOCK_GAP.split(text) if chunk.strip()]


def _headers_of(part: Message) -> Message:
    """The header of the returned message in a message/rfc822 or text/rfc822-headers part."""
    if part.is_multipart():
        payload = part.get_payload()
        if payload and isinstance(payload[0], Message):
            return payload[0]
        return Message(policy=_POLICY)
    return HeaderParser(policy=_POLICY).parsestr(_decoded(part))


def _decoded(part: Message) -> str:
    """A leaf part's body as text, its transfer encoding undone; UTF-8 is assumed, as a
    report's fields are ASCII or (RFC 6533) UTF-8. get_payload(decode=True) is used even
    for plain text: without it compat32 decodes 8-bit text by the charset parameter, and
    raises on one Python cannot use."""
    raw = part.get_payload(decode=True)
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""


def _header(msg: Message | None, name: str) -> str:
    """A header as one clean line; "" when absent."""
    value = msg.get(name) if msg is not None else None
    return "" if value is None else clean_line(str(value))


def _header_all(msg: Message, name: str) -> list[str]:
    return [clean_line(str(value)) for value in msg.get_all(name) or []]


def _report_type(msg: Message) -> str:
    try:
        value = msg.get_param("report-type")
    except Exception:  # a Content-Type too broken to read params from: no report type
        return ""
    return value.strip().lower() if isinstance(value, str) else ""


def _message_id(msg: Message) -> str | None:
    value = _header(msg, "Message-ID")
    if not value or len(value) > MAX_MESSAGE_ID_CHARS or " " in value:
        return None
    return value


def _address(text: str) -> str:
    """`text` when it is one plain address (angle brackets removed), else ""."""
    address = text.strip().removeprefix("<").removesuffix(">").strip()
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or len(address) > MAX_ADDRESS_CHARS:
        return ""
    if any(ch.isspace() or ch in '<>,;"()[]\\' for ch in address):
        return ""
    return address


def _addresses(value: str) -> list[str]:
    try:
        pairs = getaddresses([value])
    except Exception:  # getaddresses has raised on malformed input in some Python releases
        return []
    return [a for a in (_address(address) for _, address in pairs) if a]


def _recipient(block: Message) -> str:
    """A DSN recipient block's address: Original-Recipient, else Final-Recipient. Each is
    "type; address" (RFC 3464 2.3.1, 2.3.2); some MTAs leave out the type."""
    for name in ("Original-Recipient", "Final-Recipient"):
        value = _header(block, name)
        address = _address(value.partition(";")[2] if ";" in value else value)
        if address:
            return address
    return ""


def _action(value: str) -> str:
    """The Action keyword; "failed" also for opensmtpd's "error" and "failure" spellings."""
    word = (re.findall(r"[a-z]+", value.lower()) or [""])[0]
    if word.startswith(("fail", "error")):
        return "failed"
    return "delayed" if word.startswith("delay") else word


def _status(value: str) -> str:
    match = _STATUS_FIELD.match(value)
    return ".".join(match.groups()) if match else ""


def _class_kind(status: str) -> BounceKind | None:
    if status.startswith("5"):
        return BounceKind.HARD
    return BounceKind.SOFT if status.startswith("4") else None


def _dsn_kind(action: str, status: str) -> BounceKind | None:
    """Delayed is a warning whatever its status; a failure is hard or soft by its status
    class; None when neither field says the message failed."""
    if action == "delayed":
        return BounceKind.SOFT
    kind = _class_kind(status)
    if kind is None and action == "failed":
        return BounceKind.HARD
    return kind


def _is_automatic(original: Message) -> bool:
    """Whether the returned message was itself automatic, so not a digest of ours."""
    if original.get_content_type() == "multipart/report":
        return True
    if _header(original, "Auto-Submitted").lower().startswith("auto-replied"):
        return True
    if original.get("Return-Path") is None:
        return False
    sender = _header(original, "Return-Path").strip("<> ").lower()
    return not sender or sender.startswith("mailer-daemon")


def _notification_text(parts: list[Message]) -> str:
    """The human-readable text of a bounce: its text/plain parts, else its HTML as text."""
    texts = [_text_of(p) for p in parts if p.get_content_type() == "text/plain"]
    if not any(texts):
        texts = [
            html.unescape(_TAG.sub(" ", _text_of(p))) for p in parts if p.get_content_type() == "text/html"
        ]
    return "\n\n".join(texts).replace("\r\n", "\n")


def _text_of(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return ""
    try:
        return raw.decode(part.get_content_charset() or "utf-8", "replace")
    except (LookupError, ValueError):  # a charset Python does not know ("unicode-1-1-utf-7")
        return raw.decode("utf-8", "replace")


def _paragraph_after(text: str, address: str, others: list[str]) -> str:
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


def _status_in_text(text: str) -> str:
    match = _STATUS_IN_TEXT.search(text)
    if match:
        return match.group(1)
    reply = _REPLY_IN_TEXT.search(text)
    return f"{reply.group(1)}.0.0" if reply else ""


def _occurred_at(msg: Message, received_at: datetime | None) -> datetime | None:
    if received_at is not None and received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    try:
        when = parsedate_to_datetime(_header(msg, "Date"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return received_at
    when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    return received_at if received_at is not None and when > received_at else when
