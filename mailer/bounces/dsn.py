"""One incoming mail to Reports: RFC 3464 DSNs, the non-standard bounces real MTAs still
send (read by flufl.bounce, in mailer.bounces.nonstandard), and RFC 5965 ARF complaints.
What the three share, reading MIME without raising, is mailer.bounces.mime.

    parsed = parse_mail(data, Source.IMAP, verp_token=token, received_at=utcnow())
    parsed.reports   # one per failed recipient, or one complaint
    parsed.problem   # "" or one line saying why there is no report

What holds, and why:
* **Never raises.** The message is read with compat32 (mime.POLICY), whose headers stay
  the strings they were, so a malformed one cannot raise when read. flufl.bounce is called
  inside a try, as it re-raises whatever one of its detectors raises (a problem line here).
  A last guard in parse_mail turns anything else (a RecursionError from MIME nested
  thousands deep) into a problem line.
* **Bounded.** More than MAX_MESSAGE_BYTES is refused by its length, unread. flufl.bounce
  reads only the top of the message (nonstandard.FLUFL_BYTES). At most MAX_REPORTS
  recipients are reported from one message (mailer sends each reader a message of their
  own).
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
  whether for good; the status and diagnostic are read from the paragraph of the
  notification that follows the address (mailer.bounces.nonstandard says how).
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
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.utils import parsedate_to_datetime

from mailer.bounces import nonstandard
from mailer.bounces.mime import (
    POLICY,
    addresses_in,
    field_blocks,
    header_line,
    header_lines,
    message_id_of,
    plain_address,
    report_type,
    returned_headers,
    walk_parts,
)
from mailer.bounces.report import BounceKind, Report, Source
from mailer.parsing import clean_line

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
NOT_A_BOUNCE = "not a bounce or complaint"
MAX_DIAGNOSTIC_CHARS = 500
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
# A diagnostic type before the text (RFC 3464 2.3.6): "smtp; 550 5.1.1 ...".
_DIAGNOSTIC_TYPE = re.compile(r"^[A-Za-z][\w-]*\s*;\s*")


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
        self.msg = email.message_from_bytes(data, policy=POLICY)
        self.source = source
        self.verp_token = verp_token
        self.event_prefix = message_id_of(self.msg) or f"sha256:{hashlib.sha256(data).hexdigest()}"
        self.occurred_at = _occurred_at(self.msg, received_at)

    def parse(self) -> Parsed:
        parts = list(walk_parts(self.msg))
        feedback = [p for p in parts if p.get_content_type() == _FEEDBACK_REPORT]
        statuses = [p for p in parts if p.get_content_type() in _DELIVERY_STATUS]
        original_part = next((p for p in parts if p.get_content_type() in _ORIGINAL), None)
        original = returned_headers(original_part) if original_part is not None else None
        if feedback or report_type(self.msg) == "feedback-report":
            return self._complaint(feedback, original)
        if original is not None and _is_automatic(original):
            return Parsed([], f"{NOT_A_BOUNCE} (a bounce of a bounce)")
        message_id = message_id_of(original) if original is not None else None
        if statuses:
            return self._dsn(statuses, message_id)
        return self._nonstandard(parts, message_id)

    def _dsn(self, parts: list[Message], message_id: str | None) -> Parsed:
        reports: dict[str, Report] = {}
        undecided: list[str] = []
        succeeded = False
        for part in parts:
            for block in field_blocks(part):
                recipient = _recipient(block)
                action = _action(header_line(block, "Action"))
                status = _status(header_line(block, "Status"))
                if not (recipient or action or status):
                    continue  # the per-message block (Reporting-MTA, Arrival-Date)
                if action in _SUCCESS_ACTIONS or (not action and status.startswith("2")):
                    succeeded = True
                    continue
                kind = _dsn_kind(action, status)
                if kind is None:
                    undecided.append(recipient or "a recipient with no address")
                elif recipient and recipient.lower() not in reports:  # the first block about someone
                    diagnostic = _DIAGNOSTIC_TYPE.sub("", header_line(block, "Diagnostic-Code"))
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
        try:
            failed = nonstandard.failures(self.data)
        except nonstandard.Unreadable as exc:
            return Parsed([], f"flufl.bounce could not read it ({exc})")
        if not failed:
            return Parsed([], NOT_A_BOUNCE)
        text = nonstandard.notification_text(parts)
        if message_id is None:
            message_id = nonstandard.quoted_message_id(text)
        reports = []
        for address in sorted(failed)[:MAX_REPORTS]:
            paragraph = nonstandard.paragraph_after(text, address, [a for a in failed if a != address])
            status = nonstandard.status_in_text(paragraph)
            kind = _class_kind(status) or (BounceKind.HARD if failed[address] else BounceKind.SOFT)
            reports.append(self._report(kind, address, status, paragraph, message_id))
        return Parsed(reports)

    def _complaint(self, feedback: list[Message], original: Message | None) -> Parsed:
        fields = next((block for part in feedback for block in field_blocks(part)), None)
        if fields is None:
            return Parsed([], "an ARF report without its feedback-report part")
        # Required by RFC 5965; the few early reports without it were complaints all the same.
        feedback_type = (header_line(fields, "Feedback-Type").lower().split() or ["abuse"])[0]
        if feedback_type != "abuse":
            return Parsed([], f"{NOT_A_BOUNCE} (an ARF {feedback_type} report, not a complaint)")
        named = list(
            dict.fromkeys(a for a in map(plain_address, header_lines(fields, "Original-Rcpt-To")) if a)
        )
        addressed = addresses_in(header_line(original, "To")) if original is not None else []
        if len(named) == 1:
            recipient: str | None = named[0]
        elif named:
            to = {a.lower() for a in addressed}
            recipient = next((a for a in named if a.lower() in to), None)
        else:
            recipient = addressed[0] if len(addressed) == 1 else None
        message_id = message_id_of(original) if original is not None else None
        if not (recipient or message_id or self.verp_token):
            what = "without the original message" if original is None else "naming no recipient or Message-ID"
            return Parsed([], f"an ARF report {what}: no way to tell whose")
        agent = header_line(fields, "User-Agent")
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


def _recipient(block: Message) -> str:
    """A DSN recipient block's address: Original-Recipient, else Final-Recipient. Each is
    "type; address" (RFC 3464 2.3.1, 2.3.2); some MTAs leave out the type."""
    for name in ("Original-Recipient", "Final-Recipient"):
        value = header_line(block, name)
        address = plain_address(value.partition(";")[2] if ";" in value else value)
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
    if header_line(original, "Auto-Submitted").lower().startswith("auto-replied"):
        return True
    if original.get("Return-Path") is None:
        return False
    sender = header_line(original, "Return-Path").strip("<> ").lower()
    return not sender or sender.startswith("mailer-daemon")


def _occurred_at(msg: Message, received_at: datetime | None) -> datetime | None:
    if received_at is not None and received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    try:
        when = parsedate_to_datetime(header_line(msg, "Date"))
    except (TypeError, ValueError, IndexError, OverflowError):
        return received_at
    when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    return received_at if received_at is not None and when > received_at else when
