"""POST /webhooks/<provider> through the real app on a real waitress server, on SQLite and
PostgreSQL: a digest really sent to three readers, then each provider's events, signed
with keys made by the test (tests/webhook_payloads.py), about those very messages.

Amazon SNS's signing certificate comes from an HTTPS server on 127.0.0.1 under a throw-away
CA (bounces.sns_certificate_hosts matches 127.0.0.1; the app is told the CA through
app.config, mailer.web.webhooks.CA_FILE). The public URL is not loopback, so the editor's
pages need a password: the webhooks must not.

What must hold: a genuine event reaches the ledger once (a retry answers 200 and changes
nothing); a forged, stale, malformed or unconfigured one is refused with a 4xx, logged as
one line naming the provider, and changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from mailer import campaign
from mailer.articles import ArticleStore
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.models import BounceEvent, Subscriber, utcnow
from mailer.subscribers import SubscriberStore
from mailer.web.webhooks import CA_FILE
from tests.conftest import SEEDS, SUBSCRIBERS, write_config
from tests.smtp_server import SmtpServer
from tests.web_server import Reply, WebServer
from tests.webhook_payloads import (
    CERT_PATH,
    CONFIRM_PATH,
    TOPIC,
    CertHost,
    SnsSigner,
    iso,
    mailgun_body,
    mailgun_event,
    postmark_auth,
    postmark_bounce,
    sendgrid_event,
    sendgrid_headers,
    sendgrid_key,
    ses_bounce,
    ses_complaint,
    sns_notification,
)

ADA, GRACE, ZOE = (email for email, _name in SUBSCRIBERS)
POSTMARK_USER, POSTMARK_PASSWORD = "postmark-hook", "pm-secret-7f3a9c"
MAILGUN_KEY = "mailgun-signing-key-5b1e0d"
JSON = {"Content-Type": "application/json"}
SNS = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": "Notification"}


@dataclass
class Site:
    db: Database
    cfg: Config
    server: WebServer
    message_ids: dict[str, str]  # reader: the Message-ID of the digest they were sent
    senders: dict[str, str]  # reader: that message's envelope sender (VERP)

    def post(self, provider: str, body: bytes, headers: dict[str, str]) -> Reply:
        return self.server.request("POST", f"/webhooks/{provider}", body=body, headers=headers)

    def state(self) -> tuple[list[tuple[str, str, int]], int]:
        """Every reader's status and bounce count, and how many events are stored."""
        with self.db.reader() as s:
            readers = sorted((x.email, x.status, x.bounce_count) for x in s.scalars(select(Subscriber)))
            return readers, int(s.scalar(select(func.count()).select_from(BounceEvent)) or 0)

    def reader(self, email: str) -> tuple[str, int]:
        with self.db.reader() as s:
            sub = s.scalar(select(Subscriber).where(Subscriber.email == email))
            assert sub is not None
            return sub.status, sub.bounce_count

    def events(self) -> list[tuple[str, str, str, int | None]]:
        with self.db.reader() as s:
            rows = s.execute(
                select(BounceEvent.source, BounceEvent.kind, BounceEvent.status, BounceEvent.delivery_id)
            )
            return sorted((a, b, c, d) for a, b, c, d in rows)


@pytest.fixture(scope="module")
def signer() -> SnsSigner:
    return SnsSigner()


@pytest.fixture(scope="module")
def sg() -> tuple[Any, str]:
    return sendgrid_key()


@pytest.fixture
def cert_host(tmp_path: Path, signer: SnsSigner) -> Iterator[CertHost]:
    host = CertHost(tmp_path, signer)
    yield host
    host.close()


@pytest.fixture
def open_site(
    tmp_path: Path, smtp_server: SmtpServer, database_url: str, cert_host: CertHost, sg: tuple[Any, str]
) -> Iterator[Callable[..., Site]]:
    """open_site(trust_ca=True, **bounces): the app serving one database (the sample
    digest sent to the three readers once), with [bounces] for all four providers plus
    `bounces`; each call a server of its own, all closed after the test."""
    running: list[WebServer] = []
    made: dict[str, Any] = {}

    def start(trust_ca: bool = True, **bounces: object) -> Site:
        settings = {
            "address": "bounces@example.org",
            "ses_topic_arns": [TOPIC],
            "sns_certificate_hosts": r"127\.0\.0\.1",
            "postmark_username": POSTMARK_USER,
            "postmark_password": POSTMARK_PASSWORD,
            "sendgrid_public_key": sg[1],
            "mailgun_signing_key": MAILGUN_KEY,
            **bounces,
        }
        path = write_config(
            tmp_path,
            smtp_server.port,
            database_url,
            bounces=settings,
            digest={"base_url": "https://news.example.org", "max_articles": 500},
        )
        cfg = load_config(str(path))
        if not made:
            db = Database(cfg.database_url)
            db.migrate()
            ArticleStore(db, cfg).import_paths([str(SEEDS)])
            for email, name in SUBSCRIBERS:
                SubscriberStore(db).add(email, name)
            campaign.send_now(db, cfg, utcnow())
            made["db"] = db
            made["message_ids"] = {r.recipients[0]: r.message["Message-ID"] for r in smtp_server.received}
            made["senders"] = {r.recipients[0]: r.sender for r in smtp_server.received}
            assert len(made["message_ids"]) == 3
        server = WebServer(made["db"], cfg)
        if trust_ca:
            server.app.config[CA_FILE] = str(cert_host.ca_file)
        running.append(server.start())
        return Site(made["db"], cfg, server, made["message_ids"], made["senders"])

    yield start
    for server in running:
        server.close()
    if made:
        made["db"].dispose()


@pytest.fixture
def site(open_site: Callable[..., Site]) -> Site:
    return open_site()


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The refusal lines logged, after checking each is one line without a traceback."""
    lines = [r for r in caplog.records if r.name == "mailer.bounces.webhooks" and "refused" in r.getMessage()]
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert all("\n" not in r.getMessage() for r in lines)
    return [r.getMessage() for r in lines]


def sns_body(signer: SnsSigner, host: CertHost, msg: dict[str, Any], version: str = "1") -> bytes:
    return json.dumps(signer.sign(msg, host.cert_url, version)).encode()


# ---------------------------------------------------------------- Amazon SES through SNS


def test_ses_subscription_confirmation_is_verified_then_confirmed(
    site: Site, signer: SnsSigner, cert_host: CertHost
) -> None:
    confirm_url = cert_host.confirm_url + f"?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37"
    msg = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": confirm_url,
        "Timestamp": iso(datetime.now(UTC)),
    }

    got = site.post("ses", sns_body(signer, cert_host, msg, version="2"), SNS)

    assert (got.status, got.body.strip()) == (200, f"subscription to {TOPIC} confirmed"), got.body
    [confirmed] = cert_host.server.requests(CONFIRM_PATH)
    assert "Token=2336412f37" in confirmed.path


def test_ses_subscription_confirmation_off_the_allowed_hosts_is_refused_and_not_fetched(
    site: Site, signer: SnsSigner, cert_host: CertHost, caplog: pytest.LogCaptureFixture
) -> None:
    msg = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "265545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe.",
        "SubscribeURL": "https://attacker.example/collect?Token=2336412f37",
        "Timestamp": iso(datetime.now(UTC)),
    }

    got = site.post("ses", sns_body(signer, cert_host, msg), SNS)

    assert got.status == 403, got.body
    assert refusals(caplog) == [
        "webhook ses refused (403): SubscribeURL host 'attacker.example' does not match "
        "bounces.sns_certificate_hosts"
    ]


def test_ses_hard_bounce_matched_by_its_message_id_bounces_the_reader_and_a_retry_changes_nothing(
    site: Site, signer: SnsSigner, cert_host: CertHost
) -> None:
    note = sns_notification(ses_bounce([GRACE], message_id=site.message_ids[GRACE]))
    body = sns_body(signer, cert_host, note)

    first = site.post("ses", body, SNS)
    after_first = site.state()
    again = site.post("ses", body, SNS)

    assert (first.status, first.body.strip()) == (200, "1 report: 1 applied, 0 replay, 0 unmatched")
    assert (again.status, again.body.strip()) == (200, "1 report: 0 applied, 1 replay, 0 unmatched")
    assert site.state() == after_first
    assert site.reader(GRACE) == ("bounced", 1)
    [(source, kind, status, delivery_id)] = site.events()
    assert (source, kind, status) == ("ses", "hard", "5.1.1") and delivery_id is not None
    assert cert_host.fetches(CERT_PATH) == 1  # the certificate is kept, not fetched per message


def test_ses_complaint_matched_by_the_verp_sender_stops_the_reader_at_once(
    site: Site, signer: SnsSigner, cert_host: CertHost
) -> None:
    # SES echoes the envelope sender we gave it; the Message-ID header is not included.
    # A Subject, when the topic sets one, is signed too.
    note = {
        **sns_notification(ses_complaint([ADA], source=site.senders[ADA])),
        "Subject": "Amazon SES Email Event Notification",
    }

    got = site.post("ses", sns_body(signer, cert_host, note, version="2"), SNS)

    assert got.status == 200, got.body
    assert site.reader(ADA) == ("complained", 0)
    assert [e[1] for e in site.events()] == ["complaint"]


def test_ses_transient_bounce_is_soft_and_changes_no_status_and_a_delivery_records_nothing(
    site: Site, signer: SnsSigner, cert_host: CertHost
) -> None:
    soft = sns_notification(ses_bounce([ZOE], "Transient", message_id=site.message_ids[ZOE]))
    delivery = sns_notification({"notificationType": "Delivery", "mail": {"messageId": "x"}, "delivery": {}})

    assert site.post("ses", sns_body(signer, cert_host, soft), SNS).status == 200
    assert site.post("ses", sns_body(signer, cert_host, delivery), SNS).body.strip().startswith("0 reports")

    assert site.reader(ZOE) == ("active", 0)
    assert [(e[0], e[1], e[2]) for e in site.events()] == [("ses", "soft", "4.2.2")]


def test_ses_forged_messages_are_refused_and_change_nothing(
    site: Site, signer: SnsSigner, cert_host: CertHost, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = site.state()
    genuine = signer.sign(sns_notification(ses_bounce([ADA])), cert_host.cert_url)
    other_key = SnsSigner().sign(sns_notification(ses_bounce([ADA])), cert_host.cert_url)
    tampered = {**genuine, "Message": json.dumps(ses_complaint([ADA]))}
    foreign_cert = {**genuine, "SigningCertURL": "https://sns.evil.example" + CERT_PATH}
    plain_http = {**genuine, "SigningCertURL": cert_host.cert_url.replace("https:", "http:")}
    other_topic = signer.sign(
        {**sns_notification(ses_bounce([ADA])), "TopicArn": TOPIC + "-other"}, cert_host.cert_url
    )

    answers = [
        site.post("ses", json.dumps(msg).encode(), SNS).status
        for msg in (tampered, other_key, foreign_cert, plain_http, other_topic)
    ]

    assert answers == [403, 403, 403, 403, 403]
    assert site.state() == before
    lines = refusals(caplog)
    assert len(lines) == 5 and all(line.startswith("webhook ses refused (403): ") for line in lines)
    assert "does not match bounces.sns_certificate_hosts" in lines[2]
    assert "is not a plain https URL" in lines[3]
    # A host that is not allowed is never asked for anything.
    assert [r.path for r in cert_host.server.requests()] == [CERT_PATH]


def test_ses_stale_or_future_messages_are_refused_even_when_genuinely_signed(
    site: Site, signer: SnsSigner, cert_host: CertHost, caplog: pytest.LogCaptureFixture
) -> None:
    before = site.state()
    max_age = timedelta(minutes=site.cfg.bounces.webhook_max_age_minutes)
    stale = sns_notification(ses_bounce([ADA]), when=datetime.now(UTC) - max_age - timedelta(minutes=1))
    future = sns_notification(ses_bounce([ADA]), when=datetime.now(UTC) + timedelta(minutes=10))

    assert site.post("ses", sns_body(signer, cert_host, stale), SNS).status == 400
    assert site.post("ses", sns_body(signer, cert_host, future), SNS).status == 400

    assert site.state() == before
    assert [line.split(":")[0] for line in refusals(caplog)] == ["webhook ses refused (400)"] * 2


def test_ses_without_topics_is_off_and_an_untrusted_certificate_host_is_a_502(
    open_site: Callable[..., Site], signer: SnsSigner, cert_host: CertHost
) -> None:
    off = open_site(ses_topic_arns=[])
    untrusting = open_site(trust_ca=False)  # certifi's CAs only: the test CA is unknown
    before = off.state()
    body = sns_body(signer, cert_host, sns_notification(ses_bounce([ADA])))

    assert off.post("ses", body, SNS).status == 404
    refused = untrusting.post("ses", body, SNS)

    assert refused.status == 502 and "certificate verify failed" in refused.body, refused.body
    assert off.state() == before


def test_an_sns_message_too_large_for_the_app_s_own_cap_is_refused(
    site: Site, signer: SnsSigner, cert_host: CertHost
) -> None:
    before = site.state()
    huge = sns_notification({"notificationType": "Delivery", "padding": "x" * (1024 * 1024)})

    try:
        answer: int | str = site.post("ses", sns_body(signer, cert_host, huge), SNS).status
    except (BrokenPipeError, ConnectionResetError):
        # The server answered 413 and closed before the whole body was sent, and the
        # reset can take the answer with it.
        answer = "closed before the body was read"

    assert answer in (413, "closed before the body was read")
    assert site.state() == before


def test_a_200_kb_sns_message_is_taken(site: Site, signer: SnsSigner, cert_host: CertHost) -> None:
    event = ses_bounce([GRACE], message_id=site.message_ids[GRACE])
    event["mail"]["headers"].append({"name": "X-Padding", "value": "x" * 200_000})

    got = site.post("ses", sns_body(signer, cert_host, sns_notification(event)), SNS)

    assert got.status == 200, got.body
    assert site.reader(GRACE) == ("bounced", 1)


# ---------------------------------------------------------------- Postmark


def test_postmark_hard_bounce_and_complaint_with_credentials_reach_the_ledger_once(site: Site) -> None:
    auth = postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD)
    # From Postmark's servers, not a page: a cross-site header changes nothing.
    cross_site = {**auth, "Sec-Fetch-Site": "cross-site", "Origin": "https://postmarkapp.com"}

    bounced = site.post("postmark", postmark_bounce(GRACE, "HardBounce", 1001), cross_site)
    retried = site.post("postmark", postmark_bounce(GRACE, "HardBounce", 1001), auth)
    complained = site.post("postmark", postmark_bounce(ZOE, "SpamComplaint", 1002), auth)

    assert [bounced.status, retried.status, complained.status] == [200, 200, 200]
    assert retried.body.strip() == "1 report: 0 applied, 1 replay, 0 unmatched"
    assert site.reader(GRACE) == ("bounced", 1)
    assert site.reader(ZOE) == ("complained", 0)
    # Postmark echoes neither our Message-ID nor our envelope sender: the address matches.
    assert site.events() == [("postmark", "complaint", "", None), ("postmark", "hard", "5.1.1", None)]


def test_postmark_without_or_with_wrong_credentials_is_401_and_changes_nothing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    before = site.state()
    body = postmark_bounce(ADA)

    missing = site.post("postmark", body, JSON)
    wrong = site.post("postmark", body, postmark_auth(POSTMARK_USER, "guess"))
    wrong_user = site.post("postmark", body, postmark_auth("admin", POSTMARK_PASSWORD))
    garbled = site.post("postmark", body, {**JSON, "Authorization": "Basic ***"})

    assert [r.status for r in (missing, wrong, wrong_user, garbled)] == [401] * 4
    assert missing.headers["WWW-Authenticate"].startswith("Basic ")
    assert site.state() == before
    assert refusals(caplog) == [
        "webhook postmark refused (401): no HTTP Basic credentials",
        "webhook postmark refused (401): wrong HTTP Basic credentials",
        "webhook postmark refused (401): wrong HTTP Basic credentials",
        "webhook postmark refused (401): malformed HTTP Basic credentials",
    ]


# ---------------------------------------------------------------- SendGrid


def test_sendgrid_batch_records_its_bounces_and_complaints_and_a_retried_batch_changes_nothing(
    site: Site, sg: tuple[Any, str]
) -> None:
    events = [
        sendgrid_event("processed", ADA),
        sendgrid_event("deferred", ZOE, response="421 try again later", attempt="1"),  # still retrying
        sendgrid_event(
            "bounce",
            GRACE,
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 The email account that you tried to reach does not exist.",
            **{"smtp-id": site.message_ids[GRACE]},
        ),
        sendgrid_event("spamreport", ADA, **{"smtp-id": site.message_ids[ADA]}),
        sendgrid_event("delivered", ZOE, response="250 OK"),
    ]
    body = json.dumps(events).encode()

    first = site.post("sendgrid", body, sendgrid_headers(sg[0], body))
    after_first = site.state()
    again = site.post("sendgrid", body, sendgrid_headers(sg[0], body))

    assert (first.status, first.body.strip()) == (200, "2 reports: 2 applied, 0 replay, 0 unmatched")
    assert (again.status, again.body.strip()) == (200, "2 reports: 0 applied, 2 replay, 0 unmatched")
    assert site.state() == after_first
    assert site.reader(GRACE) == ("bounced", 1)
    assert site.reader(ADA) == ("complained", 0)
    assert site.reader(ZOE) == ("active", 0)
    assert all(delivery_id is not None for *_, delivery_id in site.events())


def test_sendgrid_blocked_is_a_soft_bounce(site: Site, sg: tuple[Any, str]) -> None:
    blocked = sendgrid_event("bounce", ZOE, type="blocked", status="4.0.0", reason="IP blocked")
    body = json.dumps([blocked]).encode()

    assert site.post("sendgrid", body, sendgrid_headers(sg[0], body)).status == 200

    assert site.reader(ZOE) == ("active", 0)
    assert [(e[1], e[2]) for e in site.events()] == [("soft", "4.0.0")]


def test_sendgrid_unsigned_forged_and_stale_batches_are_refused_and_change_nothing(
    site: Site, sg: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    before = site.state()
    body = json.dumps([sendgrid_event("bounce", ADA, type="bounce", status="5.1.1")]).encode()
    signed = sendgrid_headers(sg[0], body)
    forged_body = body.replace(ADA.encode(), GRACE.encode())
    other_key = sendgrid_headers(sendgrid_key()[0], body)
    stale = sendgrid_headers(sg[0], body, datetime.now(UTC) - timedelta(hours=1))

    answers = [
        site.post("sendgrid", body, JSON).status,
        site.post("sendgrid", forged_body, signed).status,
        site.post("sendgrid", body, other_key).status,
        site.post("sendgrid", body, stale).status,
    ]

    assert answers == [401, 403, 403, 400]
    assert site.state() == before
    assert [line.split(":")[0] for line in refusals(caplog)] == [
        "webhook sendgrid refused (401)",
        "webhook sendgrid refused (403)",
        "webhook sendgrid refused (403)",
        "webhook sendgrid refused (400)",
    ]


# ---------------------------------------------------------------- Mailgun


def test_mailgun_permanent_failure_and_complaint_reach_the_ledger_and_a_temporary_one_does_not(
    site: Site,
) -> None:
    # Mailgun gives the Message-ID without its angle brackets.
    failed = mailgun_event(
        "failed",
        GRACE,
        severity="permanent",
        reason="bounce",
        message={"headers": {"message-id": site.message_ids[GRACE].strip("<>")}},
        **{"delivery-status": {"code": 550, "message": "5.1.1 No such user", "description": ""}},
    )
    temporary = mailgun_event("failed", ZOE, severity="temporary", reason="generic")
    complained = mailgun_event("complained", ADA, envelope={"sender": site.senders[ADA]})

    answers = [
        site.post("mailgun", mailgun_body(MAILGUN_KEY, e), JSON) for e in (failed, temporary, complained)
    ]
    retry = site.post("mailgun", mailgun_body(MAILGUN_KEY, failed), JSON)  # a new signature, same event

    assert [a.status for a in answers] == [200, 200, 200]
    assert retry.body.strip() == "1 report: 0 applied, 1 replay, 0 unmatched"
    assert site.reader(GRACE) == ("bounced", 1)
    assert site.reader(ADA) == ("complained", 0)
    assert site.reader(ZOE) == ("active", 0)
    assert sorted((e[1], e[2]) for e in site.events()) == [("complaint", ""), ("hard", "5.1.1")]
    assert all(delivery_id is not None for *_, delivery_id in site.events())


def test_mailgun_forged_and_stale_events_are_refused_and_change_nothing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    before = site.state()
    event = mailgun_event("failed", ADA, severity="permanent")
    forged = json.loads(mailgun_body("not-the-key", event))
    swapped = json.loads(mailgun_body(MAILGUN_KEY, event))
    swapped["event-data"] = {**event, "recipient": GRACE}  # the signature covers no event data...
    swapped["signature"]["token"] = "0" * 50  # ...but a changed token breaks it
    stale = mailgun_body(MAILGUN_KEY, event, datetime.now(UTC) - timedelta(hours=2))

    answers = [
        site.post("mailgun", json.dumps(forged).encode(), JSON).status,
        site.post("mailgun", json.dumps(swapped).encode(), JSON).status,
        site.post("mailgun", stale, JSON).status,
    ]

    assert answers == [403, 403, 400]
    assert site.state() == before
    assert [line.split(":")[0] for line in refusals(caplog)] == [
        "webhook mailgun refused (403)",
        "webhook mailgun refused (403)",
        "webhook mailgun refused (400)",
    ]


# ---------------------------------------------------------------- every provider


def malformed(site: Site, provider: str, body: bytes, sg: tuple[Any, str]) -> Reply:
    """POST `body` to `provider`, signed or authenticated as that provider would."""
    if provider == "postmark":
        return site.post(provider, body, postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD))
    if provider == "sendgrid":
        return site.post(provider, body, sendgrid_headers(sg[0], body))
    return site.post(provider, body, JSON)


@pytest.mark.parametrize("provider", ["ses", "postmark", "sendgrid", "mailgun"])
@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"{}"])
def test_malformed_bodies_are_400_and_change_nothing(
    site: Site, provider: str, body: bytes, sg: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    before = site.state()
    if provider == "sendgrid" and body == b"[1, 2]":
        body = b"[1, 2, {}]"  # an array is SendGrid's shape: its events must be objects

    got = malformed(site, provider, body, sg)

    assert got.status == 400, got.body
    assert site.state() == before
    [line] = refusals(caplog)
    assert line.startswith(f"webhook {provider} refused (400): ")


def test_events_missing_what_they_need_are_400_and_nothing_of_the_request_is_recorded(
    site: Site, signer: SnsSigner, cert_host: CertHost, sg: tuple[Any, str]
) -> None:
    before = site.state()
    no_address = ses_bounce([GRACE])
    del no_address["bounce"]["bouncedRecipients"][0]["emailAddress"]
    # The batch's first bounce is fine; the second lacks its id: neither is recorded.
    batch = [sendgrid_event("bounce", GRACE, type="bounce"), sendgrid_event("bounce", ADA, type="bounce")]
    del batch[1]["sg_event_id"]
    batch_body = json.dumps(batch).encode()
    postmark = json.loads(postmark_bounce(ADA))
    del postmark["ID"]
    mailgun = mailgun_event("failed", ADA, severity="permanent")
    del mailgun["recipient"]

    answers = [
        site.post("ses", sns_body(signer, cert_host, sns_notification(no_address)), SNS),
        site.post("sendgrid", batch_body, sendgrid_headers(sg[0], batch_body)),
        site.post("postmark", json.dumps(postmark).encode(), postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD)),
        site.post("mailgun", mailgun_body(MAILGUN_KEY, mailgun), JSON),
    ]

    assert [(a.status, a.body.strip()) for a in answers] == [
        (400, "missing or malformed field 'emailAddress'"),
        (400, "missing or malformed field 'sg_event_id'"),
        (400, "missing or malformed field 'ID'"),
        (400, "missing or malformed field 'recipient'"),
    ]
    assert site.state() == before


def test_unknown_and_unconfigured_providers_are_404(
    open_site: Callable[..., Site], caplog: pytest.LogCaptureFixture
) -> None:
    site = open_site(
        postmark_username="", postmark_password="", sendgrid_public_key="", mailgun_signing_key=""
    )
    before = site.state()

    answers = [
        site.post(provider, b"{}", JSON) for provider in ("sparkpost", "postmark", "sendgrid", "mailgun")
    ]

    assert [(a.status, a.body.strip()) for a in answers] == [(404, "Not Found")] * 4
    assert site.state() == before
    lines = refusals(caplog)
    assert (
        lines[0] == "webhook 'sparkpost' refused (404): no such provider (ses, postmark, sendgrid, mailgun)"
    )
    assert [line.split(":")[0] for line in lines[1:]] == [
        f"webhook {p} refused (404)" for p in ("postmark", "sendgrid", "mailgun")
    ]


def test_the_editor_s_pages_need_the_password_here_but_the_webhooks_do_not(site: Site) -> None:
    assert site.server.get("/").status == 404  # no web.password, public base_url: no editor
    got = site.post(
        "postmark", postmark_bounce(ADA, "SoftBounce", 7), postmark_auth(POSTMARK_USER, POSTMARK_PASSWORD)
    )
    assert got.status == 200 and site.server.get("/webhooks/postmark").status == 405
