"""The mail services' webhooks: a provider's POST, proven to be the provider's, turned into
Reports for mailer.bounces.ledger. mailer.web.webhooks serves it at POST /webhooks/<provider>
and calls `Webhooks.receive`; nothing here knows Flask.

Invariants, and why they hold:

* **Nothing is believed before it is proven.** Each provider's proof is checked on the raw
  bytes as they came, before the body is used for anything:
  - Amazon SES through SNS: the SNS message signature (SignatureVersion 1 SHA1withRSA, 2
    SHA256withRSA) over the canonical string AWS documents for the message's Type, with the
    public key of the certificate at SigningCertURL. That URL, and the SubscribeURL we GET
    to confirm a subscription, must be https on a host that fullmatches
    `bounces.sns_certificate_hosts` (AWS's own by default), so a forger cannot bring a key
    of their own; and the TopicArn must be one of `bounces.ses_topic_arns`.
  - Postmark: HTTP Basic credentials, `bounces.postmark_username` and `_password`.
  - SendGrid: the ECDSA P-256 / SHA-256 signature over timestamp header + body, with
    `bounces.sendgrid_public_key` (base64 DER, as SendGrid shows it).
  - Mailgun: the HMAC-SHA256 of timestamp + token with `bounces.mailgun_signing_key`.
  Secrets are compared with hmac.compare_digest, on bytes (it raises on non-ASCII str).
* **A refused request changes nothing.** The whole request is checked and parsed (every
  event of a batch) before the first Report reaches the ledger; any failure is `Refused`
  (404 unknown or unconfigured provider, 401 no credentials, 403 wrong ones or a forged
  signature, 400 malformed, stale or from the future, 413 too large; 502 when the SNS host
  itself cannot be reached, so SNS retries), logged as one line naming the provider and the
  reason, never a traceback.
* **A replay changes nothing.** A signed timestamp (SNS Timestamp, SendGrid's header,
  Mailgun's signature timestamp) older than `bounces.webhook_max_age_minutes`, or more than
  FUTURE_SKEW ahead, is refused; within that window the ledger stores each event once per
  (source, event_id) and answers a retry "replay" (we answer 200: providers retry anything
  else). Postmark signs nothing, so it has no timestamp to check: BouncedAt is when the
  bounce happened, legitimately hours old on Postmark's retries, and whoever holds the
  credentials could write any date; its replays are stopped by the ledger alone.
* **Only final outcomes are Reports.** A bounce, a spam complaint, or the provider refusing
  an address it has seen bounce or complain. In-flight deferrals (SendGrid `deferred`,
  Mailgun `failed` with severity `temporary`, SES `DeliveryDelay`) are not: the provider is
  still retrying, one message deferred five times is not five bounces, and when it gives up
  it sends the final event (SendGrid `bounce`/`blocked`, Mailgun a permanent `failed`).
* **Matched by what we sent.** Each Report carries what the provider echoes of our message:
  the Message-ID header (SES mail.headers, SendGrid smtp-id, Mailgun message-id), the VERP
  token of the envelope sender we gave the provider (SES mail.source, Mailgun
  envelope.sender), and the failed address. The ledger decides which one counts.

SNS signing certificates are fetched with mailer.feeds.fetch.fetch (64 KB at most, one
line for any failure) and no redirects (one could leave the allowed hosts), then kept in
memory per URL (the newest CERT_CACHE), since SNS signs every message with the same few.
The client trusts certifi's CAs, like the feed fetcher, never the environment's
(SSL_CERT_FILE); `ca_file` replaces them, for a private CA: the tests' certificate host on
loopback. It is not the feed fetcher's client (new_client takes no CA), so a request's
time is bounded per connect, read and write (5 s each), not in all; the hosts it talks to
are the allowed ones only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from mailer.bounces import ledger
from mailer.bounces.report import BounceKind, Report, Source
from mailer.bounces.verp import token_of
from mailer.config import Config
from mailer.db import Database
from mailer.feeds.fetch import Fetched, Limits, fetch, user_agent
from mailer.tokens import Tokens

log = logging.getLogger("mailer.bounces.webhooks")

# SNS messages are up to 256 KB and arrive JSON-escaped inside the SNS envelope; SendGrid
# batches many events in one POST; Postmark can include the bounce's whole text (Content).
MAX_BODY_BYTES = 1024 * 1024
FUTURE_SKEW = timedelta(minutes=5)  # clocks disagree; a timestamp further ahead is refused
CERT_CACHE = 32
CERT_LIMITS = Limits(
    connect_timeout=5, read_timeout=5, total_timeout=15, max_bytes=64 * 1024, max_redirects=0
)
PROVIDERS = ("ses", "postmark", "sendgrid", "mailgun")

# The fields each SNS message type signs, in the order AWS documents (Subject: if present).
_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION,
    "UnsubscribeConfirmation": _CONFIRMATION,
}
SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}

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

_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class Refused(Exception):
    """The request is not taken: `status` is the HTTP answer, `reason` one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Received:
    provider: str
    recorded: tuple[ledger.Recorded, ...] = ()
    note: str = ""  # what was done besides reports ("subscription confirmed")

    def summary(self) -> str:
        if self.note:
            return self.note
        n = len(self.recorded)
        counts = {o: sum(r.outcome == o for r in self.recorded) for o in ("applied", "replay", "unmatched")}
        return f"{n} report{'' if n == 1 else 's'}: " + ", ".join(f"{c} {o}" for o, c in counts.items())


class Webhooks:
    """What the webhooks keep between requests: the SNS certificate cache and its client."""

    def __init__(self, ca_file: str | None = None) -> None:
        self.sns = Sns(ca_file)

    def close(self) -> None:
        self.sns.close()

    def receive(
        self,
        db: Database,
        cfg: Config,
        provider: str,
        body: bytes,
        headers: Mapping[str, str],
        now: datetime,
        tokens: Tokens | None = None,
    ) -> Received:
        """Verify and parse the whole request, then hand each Report to the ledger; Refused
        (already logged) when it is not taken."""
        try:
            reports, note = self.reports(cfg, provider, body, headers, now)
        except Refused as exc:
            log.warning("webhook %s refused (%d): %s", shown(provider), exc.status, exc.reason)
            raise
        recorded = tuple(ledger.record(db, cfg, report, tokens) for report in reports)
        got = Received(provider, recorded, note)
        log.info("webhook %s: %s", provider, got.summary())
        return got

    def reports(
        self, cfg: Config, provider: str, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> tuple[list[Report], str]:
        """The Reports a request carries, and a note of anything else done; no database."""
        lowered = {name.lower(): value for name, value in headers.items()}
        if provider == "ses":
            return self.sns.reports(cfg, body, now)
        if provider == "postmark":
            return postmark_reports(cfg, body, lowered), ""
        if provider == "sendgrid":
            return sendgrid_reports(cfg, body, lowered, now), ""
        if provider == "mailgun":
            return mailgun_reports(cfg, body, now), ""
        raise Refused(404, "no such provider (ses, postmark, sendgrid, mailgun)")


# ---------------------------------------------------------------- Amazon SES through SNS


class Sns:
    def __init__(self, ca_file: str | None = None) -> None:
        self._ca_file = ca_file
        self._client: httpx.Client | None = None
        self._keys: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def reports(self, cfg: Config, body: bytes, now: datetime) -> tuple[list[Report], str]:
        if not cfg.bounces.ses_topic_arns:
            raise Refused(404, "not configured (bounces.ses_topic_arns is empty)")
        msg = _json(body)
        if not isinstance(msg, dict):
            raise Refused(400, "the body is not a JSON object")
        kind = _text(msg, "Type")
        if kind not in SNS_SIGNED:
            raise Refused(400, f"unknown SNS message Type {kind[:60]!r}")
        topic = _text(msg, "TopicArn")
        if topic not in cfg.bounces.ses_topic_arns:
            raise Refused(403, f"topic {topic[:200]!r} is not in bounces.ses_topic_arns")
        version = _text(msg, "SignatureVersion")
        if version not in SNS_HASHES:
            raise Refused(400, f"unknown SignatureVersion {version[:20]!r}")
        cert_url = _text(msg, "SigningCertURL")
        _allowed(cfg, cert_url, "SigningCertURL")
        _fresh(cfg, _iso_time(_text(msg, "Timestamp"), "Timestamp"), now)
        signed = "".join(
            f"{name}\n{_text(msg, name)}\n"
            for name in SNS_SIGNED[kind]
            if name != "Subject" or msg.get("Subject") is not None
        )
        signature = _base64(_text(msg, "Signature"), "Signature")
        try:
            self._key(cert_url).verify(signature, signed.encode(), padding.PKCS1v15(), SNS_HASHES[version]())
        except InvalidSignature:
            raise Refused(403, "the SNS signature does not match") from None
        if kind == "SubscriptionConfirmation":
            self._confirm(cfg, _text(msg, "SubscribeURL"))
            return [], f"subscription to {topic} confirmed"
        if kind == "UnsubscribeConfirmation":
            log.warning("SNS says %s was unsubscribed from this endpoint", topic)
            return [], "unsubscribe confirmation noted"
        event = _json(_text(msg, "Message").encode())
        if not isinstance(event, dict):
            raise Refused(400, "the SNS Message is not a JSON object (raw message delivery must be off)")
        return ses_reports(cfg, _text(msg, "MessageId"), event), ""

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                tls = (
                    ssl.create_default_context(cafile=self._ca_file)
                    if self._ca_file
                    else httpx.create_ssl_context(trust_env=False)  # certifi's CAs
                )
                self._client = httpx.Client(
                    timeout=httpx.Timeout(
                        connect=CERT_LIMITS.connect_timeout,
                        read=CERT_LIMITS.read_timeout,
                        write=CERT_LIMITS.read_timeout,
                        pool=CERT_LIMITS.total_timeout,
                    ),
                    follow_redirects=False,
                    # fetch decodes gzip and deflate only: never let httpx offer more.
                    headers={"User-Agent": user_agent(), "Accept-Encoding": "gzip, deflate"},
                    trust_env=False,
                    transport=httpx.HTTPTransport(verify=tls, trust_env=False),
                )
            return self._client

    def _get(self, url: str, what: str) -> Fetched:
        got = fetch(self._http(), url, limits=CERT_LIMITS, accept="*/*")
        if got.status is None:  # the host did not answer: SNS retries a 5xx
            raise Refused(502, f"cannot fetch the {what} {url}: {got.error}")
        if not got.ok:
            raise Refused(403, f"the {what} {url} answered {got.error}")
        return got

    def _key(self, url: str) -> rsa.RSAPublicKey:
        with self._lock:
            key = self._keys.get(url)
        if key is not None:
            return key
        got = self._get(url, "SigningCertURL")
        try:
            public = x509.load_pem_x509_certificate(got.body).public_key()
        except ValueError:
            raise Refused(403, f"the SigningCertURL {url} is not a PEM certificate") from None
        if not isinstance(public, rsa.RSAPublicKey):
            raise Refused(403, f"the certificate at {url} has no RSA key")
        with self._lock:
            self._keys[url] = public
            while len(self._keys) > CERT_CACHE:
                self._keys.popitem(last=False)
        return public

    def _confirm(self, cfg: Config, url: str) -> None:
        _allowed(cfg, url, "SubscribeURL")
        self._get(url, "SubscribeURL")
        log.info("SNS subscription confirmed at %s", urlsplit(url).hostname)


def ses_reports(cfg: Config, sns_id: str, event: dict[str, Any]) -> list[Report]:
    """The Reports of one SES notification (identity notifications say notificationType,
    configuration-set event publishing says eventType): one per recipient."""
    kind = event.get("notificationType") or event.get("eventType")
    if kind not in ("Bounce", "Complaint"):
        return []  # Delivery, Send, DeliveryDelay, Open, AmazonSnsSubscriptionSucceeded...
    mail = _object(event, "mail")
    source = mail.get("source")
    verp = token_of(cfg, source) if isinstance(source, str) else None
    message_id = _ses_message_id(mail)
    reports = []
    if kind == "Bounce":
        bounce = _object(event, "bounce")
        hard = bounce.get("bounceType") == "Permanent"  # Transient and Undetermined are soft
        occurred = _iso_time_or_none(bounce.get("timestamp"))
        for r in _objects(bounce, "bouncedRecipients"):
            address = _text(r, "emailAddress")
            status = r.get("status") if isinstance(r.get("status"), str) else ""
            diagnostic = r.get("diagnosticCode") if isinstance(r.get("diagnosticCode"), str) else ""
            reports.append(
                Report(
                    BounceKind.HARD if hard else BounceKind.SOFT,
                    Source.SES,
                    f"{sns_id}:{address.lower()}",
                    verp_token=verp,
                    message_id=message_id,
                    recipient=address,
                    status=_status(status, diagnostic),
                    diagnostic=_line(diagnostic),
                    occurred_at=occurred,
                )
            )
    else:
        complaint = _object(event, "complaint")
        occurred = _iso_time_or_none(complaint.get("timestamp"))
        feedback = complaint.get("complaintFeedbackType")
        for r in _objects(complaint, "complainedRecipients"):
            address = _text(r, "emailAddress")
            reports.append(
                Report(
                    BounceKind.COMPLAINT,
                    Source.SES,
                    f"{sns_id}:{address.lower()}",
                    verp_token=verp,
                    message_id=message_id,
                    recipient=address,
                    diagnostic=_line(feedback if isinstance(feedback, str) else ""),
                    occurred_at=occurred,
                )
            )
    return reports


def _ses_message_id(mail: dict[str, Any]) -> str | None:
    """Our Message-ID as SES received it (mail.headers, when the notification includes
    them); else commonHeaders.messageId, which is often SES's own id."""
    headers = mail.get("headers")
    if isinstance(headers, list):
        for h in headers:
            if isinstance(h, dict) and str(h.get("name", "")).lower() == "message-id":
                value = h.get("value")
                if isinstance(value, str) and value.strip():
                    return value.strip()
    common = mail.get("commonHeaders")
    value = common.get("messageId") if isinstance(common, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def _allowed(cfg: Config, url: str, what: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (raises for a port out of range)
    except ValueError:
        raise Refused(403, f"{what} {url[:200]!r} is not a URL") from None
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        raise Refused(403, f"{what} {url[:200]!r} is not a plain https URL")
    if not re.fullmatch(cfg.bounces.sns_certificate_hosts, host):
        raise Refused(403, f"{what} host {host[:100]!r} does not match bounces.sns_certificate_hosts")


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
    event = _json(body)
    if not isinstance(event, dict):
        raise Refused(400, "the body is not a JSON object")
    if event.get("RecordType", "Bounce") not in ("Bounce", "SpamComplaint"):
        return []  # Delivery, Open, Click, SubscriptionChange
    kind = POSTMARK_KINDS.get(_text(event, "Type"))
    bounce_id = event.get("ID")
    if isinstance(bounce_id, bool) or not isinstance(bounce_id, int | str) or not str(bounce_id).strip():
        raise Refused(400, "missing or malformed field 'ID'")
    address = _text(event, "Email")
    if kind is None:
        return []  # AutoResponder, Unsubscribe, AddressChange, ManuallyDeactivated...
    details = event.get("Details") if isinstance(event.get("Details"), str) else ""
    return [
        Report(
            kind,
            Source.POSTMARK,
            str(bounce_id),
            recipient=address,
            status="" if kind is BounceKind.COMPLAINT else _status("", details),
            diagnostic=_line(details),
            occurred_at=_iso_time_or_none(event.get("BouncedAt")),
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
        key.verify(_base64(signature, "signature"), timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, Refused):
        raise Refused(403, "the signature does not match") from None
    _fresh(cfg, _unix_time(timestamp, "timestamp header"), now)
    events = _json(body)
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
                _text(event, "sg_event_id"),
                message_id=smtp_id.strip() if isinstance(smtp_id, str) and smtp_id.strip() else None,
                recipient=_text(event, "email"),
                status="" if kind is BounceKind.COMPLAINT else _status(status, reason),
                diagnostic=_line(reason),
                occurred_at=_unix_time_or_none(event.get("timestamp")),
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
    payload = _json(body)
    if not isinstance(payload, dict):
        raise Refused(400, "the body is not a JSON object")
    signed = _object(payload, "signature")
    # The timestamp is a string in Mailgun's examples; a number is taken too.
    raw_time = signed.get("timestamp")
    timestamp = str(raw_time) if isinstance(raw_time, int) and not isinstance(raw_time, bool) else None
    timestamp = timestamp or _text(signed, "timestamp")
    token = _text(signed, "token")
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), _text(signed, "signature").strip().lower().encode()):
        raise Refused(403, "the signature does not match")
    _fresh(cfg, _unix_time(timestamp, "signature timestamp"), now)
    event = _object(payload, "event-data")
    name = event.get("event")
    if name == "failed" and event.get("severity") == "permanent":
        kind = BounceKind.HARD
    elif name == "complained":
        kind = BounceKind.COMPLAINT
    else:
        return []  # delivered, opened, temporary failures (Mailgun still retries)...
    event_id = _text(event, "id")
    occurred = _unix_time_or_none(event.get("timestamp"))
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
            recipient=_text(event, "recipient"),
            status="" if kind is BounceKind.COMPLAINT else _status(enhanced, diagnostic),
            diagnostic=_line(diagnostic),
            occurred_at=occurred,
        )
    ]


# ---------------------------------------------------------------- the parts they share


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):  # JSONDecodeError is a ValueError
        raise Refused(400, "the body is not JSON") from None


def _text(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value.strip():
        raise Refused(400, f"missing or malformed field {name!r}")
    return value


def _object(obj: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise Refused(400, f"missing or malformed field {name!r}")
    return value


def _objects(obj: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    value = obj.get(name)
    if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
        raise Refused(400, f"missing or malformed field {name!r}")
    return value


def _base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise Refused(400, f"the {what} is not base64") from None


def _iso_time(text: str, what: str) -> datetime:
    when = _iso_time_or_none(text)
    if when is None:
        raise Refused(400, f"the {what} {text[:40]!r} is not an ISO 8601 time with a zone")
    return when


def _iso_time_or_none(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else None


def _unix_time(text: str, what: str) -> datetime:
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise Refused(400, f"the {what} {text[:40]!r} is not a Unix time")
    return datetime.fromtimestamp(int(text), UTC)


def _unix_time_or_none(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _fresh(cfg: Config, when: datetime, now: datetime) -> None:
    age = now - when
    if age > timedelta(minutes=cfg.bounces.webhook_max_age_minutes):
        raise Refused(
            400,
            f"signed at {when:%Y-%m-%d %H:%M:%S} UTC, over bounces.webhook_max_age_minutes "
            f"({cfg.bounces.webhook_max_age_minutes}) ago: a replay, or a clock that is wrong",
        )
    if -age > FUTURE_SKEW:
        raise Refused(400, f"signed at {when:%Y-%m-%d %H:%M:%S} UTC, in the future: a clock is wrong")


def _status(*texts: object) -> str:
    """The first enhanced status code (5.1.1) in the provider's status field or its text."""
    for text in texts:
        if isinstance(text, str):
            found = _STATUS.search(text)
            if found:
                return found.group(1)
    return ""


def _line(text: str) -> str:
    return " ".join(text.split())[:500]


def shown(provider: str) -> str:
    """The provider as logged: the URL's own segment could be anything."""
    return provider if provider in PROVIDERS else repr(provider[:40])
