"""The mail services' webhooks: a provider's POST, proven to be the provider's, turned into
Reports for mailer.bounces.ledger. mailer.web.webhooks serves it at POST /webhooks/<provider>
and calls `Webhooks.receive`; nothing here knows Flask.

    mailer.bounces.webhooks   this dispatch: which provider, then the ledger (Webhooks)
    mailer.bounces.sns        Amazon SES through SNS: signature, certificates, subscriptions
    mailer.bounces.providers  Postmark, SendGrid, Mailgun
    mailer.bounces.payload    Refused, and the field, time and freshness readers they share

Invariants, and why they hold:

* **Nothing is believed before it is proven.** Each provider's proof is checked on the raw
  bytes as they came, before the body is used for anything:
  - Amazon SES through SNS: the SNS message signature, with the key of an AWS certificate
    on an allowed https host, for one of `bounces.ses_topic_arns` (mailer.bounces.sns).
  - Postmark: HTTP Basic credentials, `bounces.postmark_username` and `_password`.
  - SendGrid: the ECDSA P-256 / SHA-256 signature over timestamp header + body, with
    `bounces.sendgrid_public_key` (base64 DER, as SendGrid shows it).
  - Mailgun: the HMAC-SHA256 of timestamp + token with `bounces.mailgun_signing_key`.
  (mailer.bounces.providers says why each is enough.) A provider with nothing configured
  is refused as unknown (404): an unconfigured provider proves nothing.
* **A refused request changes nothing.** The whole request is checked and parsed (every
  event of a batch) before the first Report reaches the ledger; any failure is `Refused`
  (404 unknown or unconfigured provider, 401 no credentials, 403 wrong ones or a forged
  signature, 400 malformed, stale or from the future, 413 too large; 502 when the SNS host
  itself cannot be reached, so SNS retries), logged here as one line naming the provider
  (`shown`: the URL's segment could be anything) and the reason, never a traceback.
* **A replay changes nothing.** A signed timestamp (SNS Timestamp, SendGrid's header,
  Mailgun's signature timestamp) older than `bounces.webhook_max_age_minutes`, or more than
  payload.FUTURE_SKEW ahead, is refused; within that window the ledger stores each event once per
  (source, event_id) and answers a retry "replay" (we answer 200: providers retry anything
  else). Postmark signs nothing, so it has no timestamp to check: its replays are stopped
  by the ledger alone.
* **Only final outcomes are Reports.** A bounce, a spam complaint, or the provider refusing
  an address it has seen bounce or complain. In-flight deferrals (SendGrid `deferred`,
  Mailgun `failed` with severity `temporary`, SES `DeliveryDelay`) are not: the provider is
  still retrying, one message deferred five times is not five bounces, and when it gives up
  it sends the final event (SendGrid `bounce`/`blocked`, Mailgun a permanent `failed`).
* **Matched by what we sent.** Each Report carries what the provider echoes of our message:
  the Message-ID header (SES mail.headers, SendGrid smtp-id, Mailgun message-id), the VERP
  token of the envelope sender we gave the provider (SES mail.source, Mailgun
  envelope.sender), and the failed address. The ledger decides which one counts.

One Webhooks serves every request: it holds the SNS certificate cache and its client
(mailer.bounces.sns), closed with the app.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from mailer.bounces import ledger
from mailer.bounces.payload import Refused
from mailer.bounces.providers import mailgun_reports, postmark_reports, sendgrid_reports
from mailer.bounces.report import Report
from mailer.bounces.sns import Sns
from mailer.config import Config
from mailer.db import Database
from mailer.tokens import Tokens

__all__ = ["MAX_BODY_BYTES", "PROVIDERS", "Received", "Refused", "Webhooks", "shown"]

log = logging.getLogger("mailer.bounces.webhooks")

# SNS messages are up to 256 KB and arrive JSON-escaped inside the SNS envelope; SendGrid
# batches many events in one POST; Postmark can include the bounce's whole text (Content).
MAX_BODY_BYTES = 1024 * 1024
PROVIDERS = ("ses", "postmark", "sendgrid", "mailgun")


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


def shown(provider: str) -> str:
    """The provider as logged: the URL's own segment could be anything."""
    return provider if provider in PROVIDERS else repr(provider[:40])
