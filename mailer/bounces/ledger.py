"""The ledger of what comes back: the one owner of what a bounce or complaint changes.

Every receiver (the MX, the mailbox, the webhooks) hands its Reports to `record`, and
nothing else acts on them. Invariants, and why they hold:

* **Once.** A report is stored in `bounce_events` under (source, event_id), unique in the
  database: the INSERT and its effect are one transaction, so a replay (a provider's retry,
  the same DSN in the mailbox twice, two receivers racing) fails the constraint, rolls
  back, and changes nothing: it is answered "replay".
* **Matched without trusting the content.** A report is tied to a delivery by, best first:
  its VERP token (HMAC-signed: Tokens.verp_delivery), the Message-ID of the message that
  bounced (it carries the delivery's random message_key, so it cannot be guessed), or only
  then the failed address, which ties it to a reader but no delivery. Nothing matched:
  stored as unmatched, nobody changed.
* **What each kind does.** A hard bounce counts towards `delivery.bounce_threshold`, the
  same count as a 5xx at the relay (Subscriber.hard_bounce); a soft bounce changes no
  status and is counted apart: `soft_bounces` counts those since the reader's last
  delivery that did not bounce, so a later good delivery resets it without a write on the
  sending path (listmonk #2770: counts that never reset). A complaint makes the reader
  `complained` at once (set_status skips their queued deliveries): they are never mailed
  again unless they sign up again themselves.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mailer.bounces.report import BounceKind, Report
from mailer.config import Config
from mailer.db import Database
from mailer.models import BounceEvent, Delivery, DeliveryStatus, Subscriber, SubscriberStatus, utcnow
from mailer.subscribers import lookup_key, set_status
from mailer.tokens import Tokens, load_secret

log = logging.getLogger("mailer.bounces")

APPLIED = "applied"
REPLAY = "replay"
UNMATCHED = "unmatched"
# <digest-D.sub-S.KEY@domain>: mailer.message.message_id.
_MESSAGE_ID = re.compile(r"<?digest-(\d{1,18})\.sub-(\d{1,18})\.([A-Za-z0-9]{8,64})@[^>]*>?")


@dataclass(frozen=True)
class Recorded:
    outcome: str  # APPLIED | REPLAY | UNMATCHED
    email: str | None
    delivery_id: int | None


def record(db: Database, cfg: Config, report: Report, tokens: Tokens | None = None) -> Recorded:
    """Store `report` once and apply it; see the module docstring."""
    tokens = tokens or Tokens(load_secret(cfg.var_dir))
    try:
        with db.session() as s:
            delivery, sub = _match(s, tokens, report)
            s.add(
                BounceEvent(
                    source=report.source.value,
                    event_id=report.event_id[:500],
                    kind=report.kind.value,
                    status=report.status[:16],
                    diagnostic=report.diagnostic[:500],
                    recipient=(report.recipient or "")[:320] or None,
                    delivery_id=delivery.id if delivery else None,
                    subscriber_id=sub.id if sub else None,
                    occurred_at=report.occurred_at,
                    received_at=utcnow(),
                )
            )
            s.flush()  # the unique (source, event_id) is checked here, before any effect
            if sub is None:
                result = Recorded(UNMATCHED, None, None)
            else:
                _apply(s, cfg, report.kind, sub)
                result = Recorded(APPLIED, sub.email, delivery.id if delivery else None)
    except IntegrityError:
        return Recorded(REPLAY, None, None)
    _log(report, result)
    return result


def _match(s: Session, tokens: Tokens, report: Report) -> tuple[Delivery | None, Subscriber | None]:
    delivery = None
    if report.verp_token:
        delivery_id = tokens.verp_delivery(report.verp_token)
        delivery = s.get(Delivery, delivery_id) if delivery_id is not None else None
    if delivery is None and report.message_id:
        m = _MESSAGE_ID.search(report.message_id)
        if m:
            digest_id, subscriber_id, key = int(m.group(1)), int(m.group(2)), m.group(3)
            delivery = s.scalar(
                select(Delivery).where(
                    Delivery.digest_id == digest_id,
                    Delivery.subscriber_id == subscriber_id,
                    Delivery.message_key == key,
                )
            )
    if delivery is not None:
        return delivery, s.get(Subscriber, delivery.subscriber_id)
    if report.recipient:
        email = lookup_key(report.recipient)
        sub = s.scalar(select(Subscriber).where(func.lower(Subscriber.email) == email.lower()))
        return None, sub
    return None, None


def _apply(s: Session, cfg: Config, kind: BounceKind, sub: Subscriber) -> None:
    if kind is BounceKind.COMPLAINT:
        if sub.status in (SubscriberStatus.ACTIVE, SubscriberStatus.PENDING, SubscriberStatus.BOUNCED):
            set_status(s, sub, SubscriberStatus.COMPLAINED)
    elif kind is BounceKind.HARD and sub.hard_bounce(cfg.delivery.bounce_threshold):
        set_status(s, sub, SubscriberStatus.BOUNCED)


def soft_bounces(s: Session, subscriber_id: int) -> int:
    """Soft bounces since the reader's last delivery that was sent and did not bounce."""
    good = (
        select(func.max(Delivery.sent_at))
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status == DeliveryStatus.SENT,
            ~exists().where(BounceEvent.delivery_id == Delivery.id),
        )
        .scalar_subquery()
    )
    q = select(func.count()).where(
        BounceEvent.subscriber_id == subscriber_id,
        BounceEvent.kind == BounceKind.SOFT.value,
        (good.is_(None)) | (BounceEvent.received_at > good),
    )
    return int(s.scalar(q) or 0)


def soft_bounce_count(db: Database, subscriber_id: int) -> int:
    with db.reader() as s:
        return soft_bounces(s, subscriber_id)


def _log(report: Report, result: Recorded) -> None:
    who = result.email or report.recipient or "unknown recipient"
    what = f"{report.kind.value} {report.status}".strip()
    if result.outcome == UNMATCHED:
        log.warning("%s from %s for %s matched no delivery or reader", what, report.source.value, who)
    else:
        log.info("%s from %s for %s recorded", what, report.source.value, who)


@dataclass(frozen=True)
class Listed:
    """One row of `mailer bounces list`."""

    id: int
    received_at: object  # datetime; object keeps dataclasses.asdict JSON-friendly via json_text
    source: str
    kind: str
    status: str
    email: str | None  # the reader it was matched to, else the address the report named
    matched: bool
    digest_id: int | None
    diagnostic: str


def listed(db: Database, limit: int = 200, kind: str | None = None) -> list[Listed]:
    """The newest bounces and complaints first."""
    q = (
        select(BounceEvent, Subscriber.email, Delivery.digest_id)
        .outerjoin(Subscriber, Subscriber.id == BounceEvent.subscriber_id)
        .outerjoin(Delivery, Delivery.id == BounceEvent.delivery_id)
        .order_by(BounceEvent.received_at.desc(), BounceEvent.id.desc())
        .limit(limit)
    )
    if kind is not None:
        q = q.where(BounceEvent.kind == kind)
    with db.reader() as s:
        return [
            Listed(
                e.id,
                e.received_at,
                e.source,
                e.kind,
                e.status,
                email or e.recipient,
                e.subscriber_id is not None,
                digest_id,
                e.diagnostic,
            )
            for e, email, digest_id in s.execute(q)
        ]


def counts_by_digest(s: Session, digest_ids: list[int]) -> dict[int, dict[str, int]]:
    """What came back about each digest: {"hard": n, "soft": n, "complaint": n}, counting
    deliveries (a reader who bounced twice for one issue counts once)."""
    counts = {i: {k.value: 0 for k in BounceKind} for i in digest_ids}
    rows = s.execute(
        select(Delivery.digest_id, BounceEvent.kind, func.count(func.distinct(BounceEvent.delivery_id)))
        .join(Delivery, Delivery.id == BounceEvent.delivery_id)
        .where(Delivery.digest_id.in_(digest_ids))
        .group_by(Delivery.digest_id, BounceEvent.kind)
    ).all()
    for digest_id, kind, n in rows:
        counts[digest_id][kind] = int(n)
    return counts


# What mailbox providers punish (issue 12): Gmail's bulk-sender rules above 0.3% spam
# complaints, Amazon SES above 5% bounces or 0.1% complaints. The stricter of each is ours.
BOUNCE_RATE_LIMIT = 0.05
COMPLAINT_RATE_LIMIT = 0.001


@dataclass(frozen=True)
class Rates:
    delivered: int
    bounced: int  # hard bounces reported after a 250
    soft: int
    complained: int

    @classmethod
    def of(cls, delivered: int, counts: dict[str, int]) -> Rates:
        return cls(delivered, counts["hard"], counts["soft"], counts["complaint"])

    @property
    def bounce_rate(self) -> float:
        return self.bounced / self.delivered if self.delivered else 0.0

    @property
    def complaint_rate(self) -> float:
        return self.complained / self.delivered if self.delivered else 0.0

    def warnings(self) -> list[str]:
        """One line per threshold passed."""
        out = []
        if self.bounce_rate > BOUNCE_RATE_LIMIT:
            out.append(
                f"bounce rate {self.bounce_rate:.1%} is over {BOUNCE_RATE_LIMIT:.0%} "
                "(Amazon SES reviews senders above it): remove dead addresses"
            )
        if self.complaint_rate > COMPLAINT_RATE_LIMIT:
            out.append(
                f"complaint rate {self.complaint_rate:.2%} is over {COMPLAINT_RATE_LIMIT:.1%} "
                "(SES's limit; Gmail's is 0.3%): mail only people who asked for it"
            )
        return out


def rates(s: Session, digest_id: int, delivered: int) -> Rates:
    return Rates.of(delivered, counts_by_digest(s, [digest_id])[digest_id])
