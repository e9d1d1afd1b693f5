"""Amazon SES through SNS: an SNS message, proven to be AWS's, turned into Reports (or a
subscription confirmed). mailer.bounces.webhooks calls `Sns.reports` for POST
/webhooks/ses; the shared readers and `Refused` are mailer.bounces.payload's.

What an SNS message must prove, and why:

* **Its topic is ours.** The TopicArn must be one of `bounces.ses_topic_arns` (empty: the
  provider is not configured, 404). Anyone can subscribe our URL to a topic of their own;
  only our topics carry our bounces.
* **AWS signed it.** The signature (SignatureVersion 1 SHA1withRSA, 2 SHA256withRSA) is
  checked over the canonical string AWS documents for the message's Type (SNS_SIGNED, in
  that order; Subject only when present), with the RSA public key of the certificate at
  SigningCertURL, before anything in the message is acted on.
* **The key is AWS's.** SigningCertURL, and the SubscribeURL we GET to confirm a
  subscription, must be plain https (no user or password) on a host that fullmatches
  `bounces.sns_certificate_hosts` (AWS's own by default): otherwise a forger would sign
  with a key of their own and point us at it, or have us GET any URL they like.
* **It is fresh.** Its signed Timestamp is within `bounces.webhook_max_age_minutes` (and
  not ahead by more than FUTURE_SKEW); within that window the ledger stores each event
  once per (source, event_id), event_id being "<SNS MessageId>:<address>".
* **Only final outcomes are Reports.** A Bounce (Permanent: hard; Transient and
  Undetermined: soft) or a Complaint, one Report per recipient. DeliveryDelay is not: SES
  is still retrying and sends the Bounce when it gives up. Each Report carries our
  Message-ID as SES received it (mail.headers, else commonHeaders.messageId) and the VERP
  token of mail.source, the envelope sender we gave SES.

Certificates are fetched with mailer.feeds.fetch.fetch (64 KB at most, one line for any
failure) and no redirects (one could leave the allowed hosts), then kept in memory per URL
(the newest CERT_CACHE), since SNS signs every message with the same few. A host that does
not answer is a 502, so SNS retries; one that answers wrongly, or with no RSA certificate,
a 403. The client trusts certifi's CAs, like the feed fetcher, never the environment's
(SSL_CERT_FILE); `ca_file` replaces them, for a private CA: the tests' certificate host on
loopback. It is not the feed fetcher's client (new_client takes no CA), so a request's
time is bounded per connect, read and write (5 s each), not in all; the hosts it talks to
are the allowed ones only. One Sns is shared by every request: the cache and the client
are guarded by a lock.
"""

from __future__ import annotations

import logging
import re
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.bounces.payload import (
    Refused,
    base64_bytes,
    enhanced_status,
    fresh,
    iso_time,
    iso_time_or_none,
    json_body,
    object_field,
    objects_field,
    one_line,
    text_field,
)
from mailer.bounces.report import BounceKind, Report, Source
from mailer.bounces.verp import token_of
from mailer.config import Config
from mailer.feeds.fetch import Fetched, Limits, fetch, user_agent

log = logging.getLogger("mailer.bounces.webhooks")  # one logger for every webhook

CERT_CACHE = 32
CERT_LIMITS = Limits(
    connect_timeout=5, read_timeout=5, total_timeout=15, max_bytes=64 * 1024, max_redirects=0
)

# The fields each SNS message type signs, in the order AWS documents (Subject: if present).
_CONFIRMATION = ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": _CONFIRMATION,
    "UnsubscribeConfirmation": _CONFIRMATION,
}
SNS_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}


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
        msg = json_body(body)
        if not isinstance(msg, dict):
            raise Refused(400, "the body is not a JSON object")
        kind = text_field(msg, "Type")
        if kind not in SNS_SIGNED:
            raise Refused(400, f"unknown SNS message Type {kind[:60]!r}")
        topic = text_field(msg, "TopicArn")
        if topic not in cfg.bounces.ses_topic_arns:
            raise Refused(403, f"topic {topic[:200]!r} is not in bounces.ses_topic_arns")
        version = text_field(msg, "SignatureVersion")
        if version not in SNS_HASHES:
            raise Refused(400, f"unknown SignatureVersion {version[:20]!r}")
        cert_url = text_field(msg, "SigningCertURL")
        _allowed(cfg, cert_url, "SigningCertURL")
        fresh(cfg, iso_time(text_field(msg, "Timestamp"), "Timestamp"), now)
        signed = "".join(
            f"{name}\n{text_field(msg, name)}\n"
            for name in SNS_SIGNED[kind]
            if name != "Subject" or msg.get("Subject") is not None
        )
        signature = base64_bytes(text_field(msg, "Signature"), "Signature")
        try:
            self._key(cert_url).verify(signature, signed.encode(), padding.PKCS1v15(), SNS_HASHES[version]())
        except InvalidSignature:
            raise Refused(403, "the SNS signature does not match") from None
        if kind == "SubscriptionConfirmation":
            self._confirm(cfg, text_field(msg, "SubscribeURL"))
            return [], f"subscription to {topic} confirmed"
        if kind == "UnsubscribeConfirmation":
            log.warning("SNS says %s was unsubscribed from this endpoint", topic)
            return [], "unsubscribe confirmation noted"
        event = json_body(text_field(msg, "Message").encode())
        if not isinstance(event, dict):
            raise Refused(400, "the SNS Message is not a JSON object (raw message delivery must be off)")
        return ses_reports(cfg, text_field(msg, "MessageId"), event), ""

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
    mail = object_field(event, "mail")
    source = mail.get("source")
    verp = token_of(cfg, source) if isinstance(source, str) else None
    message_id = _ses_message_id(mail)
    reports = []
    if kind == "Bounce":
        bounce = object_field(event, "bounce")
        hard = bounce.get("bounceType") == "Permanent"  # Transient and Undetermined are soft
        occurred = iso_time_or_none(bounce.get("timestamp"))
        for r in objects_field(bounce, "bouncedRecipients"):
            address = text_field(r, "emailAddress")
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
                    status=enhanced_status(status, diagnostic),
                    diagnostic=one_line(diagnostic),
                    occurred_at=occurred,
                )
            )
    else:
        complaint = object_field(event, "complaint")
        occurred = iso_time_or_none(complaint.get("timestamp"))
        feedback = complaint.get("complaintFeedbackType")
        for r in objects_field(complaint, "complainedRecipients"):
            address = text_field(r, "emailAddress")
            reports.append(
                Report(
                    BounceKind.COMPLAINT,
                    Source.SES,
                    f"{sns_id}:{address.lower()}",
                    verp_token=verp,
                    message_id=message_id,
                    recipient=address,
                    diagnostic=one_line(feedback if isinstance(feedback, str) else ""),
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
