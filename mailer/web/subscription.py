"""What the public unsubscribe pages do: check a link, unsubscribe, resubscribe.

* A link is checked in a read-only transaction (it never waits for the write lock), so the
  unsubscribe page and the one-click POST answer while another process writes.
* An unsubscribe goes through the outbox (mailer.web.outbox): durable before it is
  acknowledged, applied as soon as the lock allows. Its confirmation offers "subscribe
  again" only once the database shows the reader unsubscribed, with a fresh resubscribe
  token (mailer.tokens) that nothing in a mail can produce.
* A resubscribe is a plain write; if the lock stays held past the busy timeout it is
  refused with Busy (503, "try again"), never half-done: nothing is lost by refusing it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from mailer.db import Database
from mailer.errors import MailerError
from mailer.models import Subscriber
from mailer.subscribers import set_status
from mailer.tokens import Tokens
from mailer.unsubscribe_outbox import Busy, Outbox

NOT_VALID = "This unsubscribe link is not valid. Nothing was changed."
EXPIRED = (
    "This subscribe-again button is not valid or has expired (it works for an hour). "
    "Nothing was changed; open the unsubscribe link in your mail to get a new one."
)
BUSY = "The newsletter is busy right now. Nothing was changed; please try again in a minute."


class InvalidLink(MailerError):
    """The token names nobody, or is forged, revoked or expired."""


@dataclass(frozen=True)
class Unsubscribed:
    email: str
    applied: bool  # the database shows it already (else it is recorded and applied soon)
    resubscribe_token: str | None


class Subscriptions:
    def __init__(self, db: Database, tokens: Tokens, outbox: Outbox) -> None:
        self.db = db
        self.tokens = tokens
        self.outbox = outbox

    def claim(self, token: str) -> Subscriber:
        """The subscriber an unsubscribe token belongs to, or InvalidLink."""
        sub_id = Tokens.subscriber_id(token)
        try:
            with self.db.reader() as s:
                sub = s.get(Subscriber, sub_id) if sub_id is not None else None
        except OperationalError:  # not the write lock (a read never waits for it): a rare I/O hiccup
            raise Busy(BUSY) from None
        if sub is None or not self.tokens.verify(token, sub.id, sub.token_nonce):
            raise InvalidLink(NOT_VALID)
        return sub

    def unsubscribe(self, token: str) -> Unsubscribed:
        # A bounced address that says stop is unsubscribed too: their word wins.
        sub = self.claim(token)
        applied = sub.status == "unsubscribed" or self.outbox.unsubscribe(sub)
        again = None
        if applied:
            with self.db.reader() as s:
                row = s.get(Subscriber, sub.id)
            if row is not None and row.status == "unsubscribed":
                again = self.tokens.resubscribe(row.id, row.token_nonce)
        return Unsubscribed(sub.email, applied, again)

    def resubscribe(self, token: str) -> Subscriber:
        """Active again if they were unsubscribed (a bounced address stays bounced)."""
        sub_id = Tokens.resubscribe_id(token)
        with self.db.reader() as s:
            sub = s.get(Subscriber, sub_id) if sub_id is not None else None
        if sub is None or not self.tokens.verify_resubscribe(token, sub.id, sub.token_nonce):
            raise InvalidLink(EXPIRED)
        try:
            with self.db.session() as s:
                row = s.get(Subscriber, sub.id)
                if row is None or row.token_nonce != sub.token_nonce:
                    raise InvalidLink(EXPIRED)  # forgotten or revoked a moment ago
                if row.status == "unsubscribed":
                    set_status(s, row, "active")
                return row
        except OperationalError:
            raise Busy(BUSY) from None
