"""Postmark, SendGrid and Mailgun: a provider's POST, proven to be the provider's, turned
into Reports. mailer.bounces.webhooks calls `postmark_reports`, `sendgrid_reports` and
`mailgun_reports` for POST /webhooks/<provider>; Amazon SES is mailer.bounces.sns; the
shared readers and `Refused` are mailer.bounces.payload's.

What each provider must prove, and why:

* **Postmark: HTTP Basic credentials**, `bounces.postmark_username` and `_password` (both
  empty: not configured, 404). Postmark signs nothing, so whoever holds the credentials
  could write anything; it has no timestamp to check either: BouncedAt is when the bounce
  happened, legitimately hours old on Postmark's retries. Its replays are stopped by the
  ledger alone, which stores each event once per (source, Postmark's bounce ID).
* **SendGrid: the ECDSA P-256 / SHA-256 signature** over the timestamp header + the body as
  sent, with `bounces.sendgrid_public_key` (base64 DER, as SendGrid shows it; empty: 404;
  not an elliptic-curve key: 500, the configuration's fault, so SendGrid retries). The
  signed timestamp must be fresh (`bounces.webhook_max_age_minutes`), so a captured batch
  cannot be replayed later; within the window the ledger drops it per sg_event_id.
* **Mailgun: the HMAC-SHA256 of timestamp + token** with `bounces.mailgun_signing_key`
  (empty: 404), the signature timestamp fresh likewise. Mailgun's event ids are unique
  within a day only, so the event_id is "<id>@<the event's own timestamp>" when it has one.
* **Secrets are compared in constant time**: hmac.compare_digest, on bytes (it raises on
  non-ASCII str), so a wrong guess tells nothing of the right one.
* **Only final outcomes are Reports.** A bounce, a spam complaint, or the provider refusing
  an address it has seen bounce or complain (SendGrid `dropped`, SENDGRID_DROPPED). In-flight
  deferrals (SendGrid `deferred`, Mailgun `failed` with severity `temporary`) are not: the
  provider is still retrying, and when it gives up it sends the final event (SendGrid
  `bounce`/`blocked`, Mailgun a permanent `failed`). Postmark's kinds: POSTMARK_KINDS.
* **A batch is all or nothing.** Every event of a SendGrid batch is parsed before any is
  returned: one malformed event refuses the request, so nothing of it reaches the ledger.
* **Matched by what we sent.** Each Report carries what the provider echoes of our message:
  the Message-ID header (SendGrid smtp-id, Mailgun message-id), the VERP token of the
  envelope sender we gave the provider (Mailgun envelope.sender), and the failed address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mailer.bounces.payload import (
    Refused,
    base64_bytes,
    enhanced_status,
    fresh,
    iso_time_or_none,
    json_body,
    object_field,
    one_line,
    text_field,
    unix_time,
    unix_time_or_none,
)
from mailer.bounces.report import BounceKind, Report, Source
from mailer.bounces.verp import token_of
from mailer.config import Config

POSTMARK_KINDS = {
    "HardBounce": BounceKind.HARD,
    "BadEmailAddress": BounceKind.HARD,
    "SoftBounce": BounceKind.SOFT,
    "Transient": BounceKind.SOFT,
    "DnsError": BounceKind.SOFT,
    "Blocked": BounceKind.SOFT,  # the receiving ISP blocked it (content, reputation)
    "SpamNotification": BounceKind.SOFT,  # classified as spam on arrival: no reader complained
    "SpamComplaint": BounceKind.COMPLAINT,
}
# SendGrid's `dropped`: it did not even try, for an address it has seen bounce or complain.
SENDGRID_DROPPED = {
    "bounced address": BounceKind.HARD,
    "invalid": BounceKind.HARD,
    "spam reporting address": BounceKind.COMPLAINT,
}


# ---------------------------------------------------------------- Postmark


def postmark_reports(cfg: Config, body: bytes, headers: Mapping[str, str]) -> list[Report]:
    """A Bounce or SpamComplaint webhook (one event per POST); other record types: none."""
    b = cfg.bounces
    if not (b.postmark_username or b.postmark_password):
        raise Refused(404, "not configured (bounces.postmark_username and _password are empty)")
    scheme, _, value = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise Refused(401, "no HTTP Basic credentials")
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        raise Refused(401, "malformed HTTP Basic credentials") from None
    right_user = hmac.compare_digest(user.encode(), b.postmark_username.encode())
    right_password = hmac.compare_digest(password.encode(), b.postmark_password.encode())
    if not (right_user and right_password):
        raise Refused(401, "wrong HTTP Basic credentials")
    event = json_body(body)
    if not isinstance(event, dict):
        raise Refused(400, "the body is not a JSON object")
    if event.get("RecordType", "Bounce") not in ("Bounce", "SpamComplaint"):
        return []  # Delivery, Open, Click, SubscriptionChange
    kind = POSTMARK_KINDS.get(text_field(event, "Type"))
    bounce_id = event.get("ID")
    if isinstance(bounce_id, bool) or not isinstance(bounce_id, int | str) or not str(bounce_id).strip():
        raise Refused(400, "missing or malformed field 'ID'")
    address = text_field(event, "Email")
    if kind is None:
        return []  # AutoResponder, Unsubscribe, AddressChange, ManuallyDeactivated...
    details = event.get("Details") if isinstance(event.get("Details"), str) else ""
    return [
        Report(
            kind,
            Source.POSTMARK,
            str(bounce_id),
            recipient=address,
            status="" if kind is BounceKind.COMPLAINT else enhanced_status("", details),
            diagnostic=one_line(details),
            occurred_at=iso_time_or_none(event.get("BouncedAt")),
        )
    ]


# ---------------------------------------------------------------- SendGrid


def sendgrid_reports(cfg: Config, body: bytes, headers: Mapping[str, str], now: datetime) -> list[Report]:
    """The Event Webhook's batch (a JSON array): bounce, blocked, dropped, spamreport."""
    key = _sendgrid_key(cfg.bounces.sendgrid_public_key)
    signature = headers.get("x-twilio-email-event-webhook-signature", "").strip()
    timestamp = headers.get("x-twilio-email-event-webhook-timestamp", "").strip()
    if not signature or not timestamp:
        raise Refused(401, "no X-Twilio-Email-Event-Webhook-Signature and -Timestamp headers")
    try:
        key.verify(base64_bytes(signature, "signature"), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, Refused):
        raise Refused(403, "the signature does not match") from None
    fresh(cfg, unix_time(timestamp, "timestamp header"), now)
    events = json_body(body)
    if not isinstance(events, list):
        raise Refused(400, "the body is not a JSON array of events")
    reports = []
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise Refused(400, "an event is not an object with an 'event'")
        name = event["event"]
        if name == "bounce":
            kind = BounceKind.SOFT if event.get("type") == "blocked" else BounceKind.HARD
        elif name == "dropped":
            kind = SENDGRID_DROPPED.get(str(event.get("reason", "")).strip().lower())
        elif name == "spamreport":
            kind = BounceKind.COMPLAINT
        else:
            kind = None  # processed, deferred (still retrying), delivered, open, click...
        if kind is None:
            continue
        status = event.get("status") if isinstance(event.get("status"), str) else ""
        reason = event.get("reason") if isinstance(event.get("reason"), str) else ""
        smtp_id = event.get("smtp-id")
        reports.append(
            Report(
                kind,
                Source.SENDGRID,
                text_field(event, "sg_event_id"),
                message_id=smtp_id.strip() if isinstance(smtp_id, str) and smtp_id.strip() else None,
                recipient=text_field(event, "email"),
                status="" if kind is BounceKind.COMPLAINT else enhanced_status(status, reason),
                diagnostic=one_line(reason),
                occurred_at=unix_time_or_none(event.get("timestamp")),
            )
        )
    return reports


_sendgrid_keys: dict[str, ec.EllipticCurvePublicKey] = {}


def _sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    text = "".join(text.split())
    if not text:
        raise Refused(404, "not configured (bounces.sendgrid_public_key is empty)")
    key = _sendgrid_keys.get(text)
    if key is None:
        try:
            loaded = serialization.load_der_public_key(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            loaded = None
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            # The configuration's fault, not the request's: a 5xx, so SendGrid retries.
            raise Refused(500, "bounces.sendgrid_public_key is not a base64 DER elliptic-curve public key")
        key = _sendgrid_keys[text] = loaded
    return key


# ---------------------------------------------------------------- Mailgun


def mailgun_reports(cfg: Config, body: bytes, now: datetime) -> list[Report]:
    """One event per POST: {"signature": {...}, "event-data": {...}}."""
    signing_key = cfg.bounces.mailgun_signing_key
    if not signing_key:
        raise Refused(404, "not configured (bounces.mailgun_signing_key is empty)")
    payload = json_body(body)
    if not isinstance(payload, dict):
        raise Refused(400, "the body is not a JSON object")
    signed = object_field(payload, "signature")
    # The timestamp is a string in Mailgun's examples; a number is taken too.
    raw_time = signed.get("timestamp")
    timestamp = str(raw_time) if isinstance(raw_time, int) and not isinstance(raw_time, bool) else None
    timestamp = timestamp or text_field(signed, "timestamp")
    token = text_field(signed, "token")
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), text_field(signed, "signature").strip().lower().encode()):
        raise Refused(403, "the signature does not match")
    fresh(cfg, unix_time(timestamp, "signature timestamp"), now)
    event = object_field(payload, "event-data")
    name = event.get("event")
    if name == "failed" and event.get("severity") == "permanent":
        kind = BounceKind.HARD
    elif name == "complained":
        kind = BounceKind.COMPLAINT
    else:
        return []  # delivered, opened, temporary failures (Mailgun still retries)...
    event_id = text_field(event, "id")
    occurred = unix_time_or_none(event.get("timestamp"))
    message = event.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = headers.get("message-id") if isinstance(headers, dict) else None
    envelope = event.get("envelope")
    sender = envelope.get("sender") if isinstance(envelope, dict) else None
    delivery = event.get("delivery-status")
    delivery = delivery if isinstance(delivery, dict) else {}
    diagnostic = next(
        (
            v
            for v in (delivery.get("message"), delivery.get("description"))
            if isinstance(v, str) and v.strip()
        ),
        "",
    )
    enhanced = delivery.get("enhanced-code")
    return [
        Report(
            kind,
            Source.MAILGUN,
            # Mailgun's event ids are unique within a day; with the event's own time, for ever.
            f"{event_id}@{event['timestamp']}" if occurred else event_id,
            verp_token=token_of(cfg, sender) if isinstance(sender, str) else None,
            message_id=message_id.strip() if isinstance(message_id, str) and message_id.strip() else None,
            recipient=text_field(event, "recipient"),
            status="" if kind is BounceKind.COMPLAINT else enhanced_status(enhanced, diagnostic),
            diagnostic=one_line(diagnostic),
            occurred_at=occurred,
        )
    ]
