"""A Report: what one incoming bounce or complaint says, in the same shape whatever brought
it (a DSN to the MX or the mailbox, a provider's webhook), before mailer.bounces.ledger
matches it to a delivery. Parsers and receivers make Reports; only the ledger acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class BounceKind(StrEnum):
    HARD = "hard"  # permanent (5.x.x): counts towards delivery.bounce_threshold
    SOFT = "soft"  # temporary (4.x.x): counted apart; a later delivery resets the count
    COMPLAINT = "complaint"  # "report spam" (ARF, a provider's complaint event)


class Source(StrEnum):
    MX = "mx"  # mailer's own SMTP receiver
    IMAP = "imap"  # the bounce mailbox
    SES = "ses"
    POSTMARK = "postmark"
    SENDGRID = "sendgrid"
    MAILGUN = "mailgun"


@dataclass(frozen=True)
class Report:
    kind: BounceKind
    source: Source
    # Unique per source, so a replayed report is recognised: the provider's event id, or
    # for mail the report's own Message-ID (else the sha256 of its bytes) plus the recipient.
    event_id: str
    # What ties it to one delivery, best first: the VERP token of the address the bounce was
    # sent to (set by the receiver, never read from the content), the Message-ID of the
    # message that bounced, the address that failed.
    verp_token: str | None = None
    message_id: str | None = None
    recipient: str | None = None
    status: str = ""  # the enhanced status code, "5.1.1"; "" when the report gives none
    diagnostic: str = ""  # one line, at most 500 characters
    occurred_at: datetime | None = None
