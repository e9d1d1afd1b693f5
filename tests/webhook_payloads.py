"""The four providers' webhook requests as the providers make them, signed with keys made
here, for tests/test_webhooks.py: each builder follows the provider's documentation, not
mailer's code (the canonical SNS string is written out again on purpose).

* `SnsSigner`: an RSA key, its self-signed certificate (what SNS publishes at
  SigningCertURL) and SNS messages signed with it (SignatureVersion 1 or 2).
* `CertHost`: an HTTPS server on 127.0.0.1 under a throw-away CA (trustme), serving the
  certificate and answering SubscribeURL; `ca_file` is that CA's PEM.
* `sendgrid_key`, `sendgrid_headers`; `mailgun_body`; `postmark_auth`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from tests.feed_server import FeedServer

TOPIC = "arn:aws:sns:eu-west-1:123456789012:mailer-bounces"
CERT_PATH = "/SimpleNotificationService-0123456789abcdef.pem"
CONFIRM_PATH = "/confirm"
# The fields AWS signs, in its documented order (Subject only when present).
_SIGNED = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": [
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ],
}


def iso(when: datetime) -> str:
    """SNS's and SES's time format: 2026-01-02T03:04:05.678Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class SnsSigner:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.eu-west-1.amazonaws.com")])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self.key, hashes.SHA256())
        )
        self.pem = cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, msg: dict[str, Any], cert_url: str, version: str = "1") -> dict[str, Any]:
        """`msg` with SignatureVersion, SigningCertURL and Signature added."""
        signed = "".join(f"{k}\n{msg[k]}\n" for k in _SIGNED[msg["Type"]] if k in msg)
        digest = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(signed.encode(), padding.PKCS1v15(), digest)
        return {
            **msg,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": cert_url,
        }


def sns_notification(
    event: dict[str, Any], *, when: datetime | None = None, message_id: str | None = None
) -> dict[str, Any]:
    """An SNS Notification carrying an SES event (unsigned)."""
    return {
        "Type": "Notification",
        "MessageId": message_id or str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Message": json.dumps(event),
        "Timestamp": iso(when or datetime.now(UTC)),
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
    }


def ses_mail(message_id: str | None = None, source: str = "digest@example.com") -> dict[str, Any]:
    """SES's `mail` object, with the original headers included (a topic setting)."""
    headers = [{"name": "From", "value": "Weekly <digest@example.com>"}]
    if message_id:
        headers.append({"name": "Message-ID", "value": message_id})
    return {
        "timestamp": iso(datetime.now(UTC)),
        "messageId": "0102018f-ses-own-id-000000",
        "source": source,
        "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/example.com",
        "headersTruncated": False,
        "headers": headers,
        "commonHeaders": {"from": ["digest@example.com"], "messageId": "0102018f-ses-own-id-000000"},
    }


def ses_bounce(recipients: list[str], bounce_type: str = "Permanent", **mail: Any) -> dict[str, Any]:
    status = "5.1.1" if bounce_type == "Permanent" else "4.2.2"
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General" if bounce_type == "Permanent" else "MailboxFull",
            "bouncedRecipients": [
                {
                    "emailAddress": r,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": f"smtp; {status[0]}50 {status} mailbox problem",
                }
                for r in recipients
            ],
            "timestamp": iso(datetime.now(UTC)),
            "feedbackId": "0102018f-feedback",
            "reportingMTA": "dsn; a1-2.smtp-out.eu-west-1.amazonses.com",
        },
        "mail": ses_mail(**mail),
    }


def ses_complaint(recipients: list[str], **mail: Any) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": r} for r in recipients],
            "timestamp": iso(datetime.now(UTC)),
            "feedbackId": "0102018f-complaint",
            "complaintFeedbackType": "abuse",
            "userAgent": "ExampleCorp Feedback Loop (V0.01)",
        },
        "mail": ses_mail(**mail),
    }


class CertHost:
    """HTTPS on 127.0.0.1 with a throw-away CA: SigningCertURL and SubscribeURL."""

    def __init__(self, folder: Path, signer: SnsSigner) -> None:
        self.ca = trustme.CA()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(context)
        self.ca_file = folder / "webhook-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.server = FeedServer(tls=context).start()
        self.cert_url = self.server.route(CERT_PATH, body=signer.pem, headers={"Content-Type": "text/plain"})
        self.confirm_url = self.server.route(CONFIRM_PATH, body=b"<ConfirmSubscriptionResponse/>")

    def close(self) -> None:
        self.server.close()

    def fetches(self, path: str) -> int:
        return len(self.server.requests(path))


def sendgrid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key and its public half as SendGrid shows it: base64 of the DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, base64.b64encode(der).decode()


def sendgrid_headers(
    key: ec.EllipticCurvePrivateKey, body: bytes, when: datetime | None = None
) -> dict[str, str]:
    timestamp = str(int((when or datetime.now(UTC)).timestamp()))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def sendgrid_event(event: str, email: str, **fields: Any) -> dict[str, Any]:
    return {
        "email": email,
        "timestamp": int(datetime.now(UTC).timestamp()),
        "event": event,
        "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        **fields,
    }


def mailgun_body(key: str, event_data: dict[str, Any], when: datetime | None = None) -> bytes:
    timestamp = str(int((when or datetime.now(UTC)).timestamp()))
    token = uuid.uuid4().hex + uuid.uuid4().hex[:18]  # 50 characters, like Mailgun's
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    payload = {"signature": {"timestamp": timestamp, "token": token, "signature": signature}}
    return json.dumps({**payload, "event-data": event_data}).encode()


def mailgun_event(event: str, recipient: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "timestamp": datetime.now(UTC).timestamp(),
        "event": event,
        "recipient": recipient,
        "envelope": {"transport": "smtp", "sender": "digest@example.com", "targets": recipient},
        **fields,
    }


def postmark_auth(user: str, password: str) -> dict[str, str]:
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Content-Type": "application/json", "Authorization": f"Basic {pair}"}


def postmark_bounce(
    email: str, bounce_type: str = "HardBounce", bounce_id: int = 4323372036854775807
) -> bytes:
    spam = bounce_type == "SpamComplaint"
    return json.dumps(
        {
            "RecordType": "SpamComplaint" if spam else "Bounce",
            "MessageStream": "broadcast",
            "ID": bounce_id,
            "Type": bounce_type,
            "TypeCode": {"HardBounce": 1, "SoftBounce": 4096, "SpamComplaint": 100001}.get(bounce_type, 2048),
            "Name": bounce_type,
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "ServerID": 23,
            "Description": "The server was unable to deliver your message (ex: unknown user).",
            "Details": ""
            if spam
            else "smtp;550 5.1.1 The email account that you tried to reach does not exist",
            "Email": email,
            "From": "digest@example.com",
            "BouncedAt": iso(datetime.now(UTC)),
            "DumpAvailable": True,
            "Inactive": True,
            "CanActivate": True,
            "Subject": "Weekly #1",
        }
    ).encode()
