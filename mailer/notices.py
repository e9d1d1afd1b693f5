"""Notices: mails to one reader outside the digest (a sign-up's confirmation, "you are
already subscribed", the latest issue as a welcome), queued in the database and sent by
whichever process gets there.

    queued ──claim──▶ sending ──250──▶ sent
      ▲                  ├──4xx / relay down──▶ retry (next_attempt_at) ──due──▶ sending
      └──stale claim─────┘──5xx──▶ failed

Invariants, and why they hold:
* Nothing asked for is lost: a notice is a row written in the same transaction as the
  change that asks for it (signup.request), before the page answers.
* Sent once, by one process: a claim is a compare-and-set (`UPDATE … WHERE id = ? AND
  status IN (queued, retry)`, then the row count), so two instances never both send it.
  A process that dies mid-send leaves `sending`; after STALE_CLAIM that row is claimed
  again, so at most one notice per crash is sent twice and none is lost.
* The relay's hourly quota counts notices with the digest's deliveries
  (queue.hourly_quota_left): a notice waits while the quota is used up.
* What the visitor typed never reaches the mail (spammers put their message in name
  fields to send it through a sign-up form): the mail is addressed to the bare address and
  its text is fixed.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formataddr, make_msgid

from sqlalchemy import ColumnElement, or_, select, update

from mailer.config import Config
from mailer.db import Database, serialise
from mailer.delivery import queue
from mailer.dkim import DkimSigner
from mailer.errors import MailerError
from mailer.message import MessageTemplate, Recipient, message_id_domain, new_message_key
from mailer.models import Digest, DigestStatus, Notice, NoticeStatus, Subscriber, utcnow
from mailer.render import template_environment
from mailer.smtp import Outcome, SmtpConnection
from mailer.tokens import Tokens, load_secret

log = logging.getLogger("mailer.notices")

CONFIRM = "confirm"  # "confirm your subscription", with the confirmation link
ALREADY = "already"  # to an active reader who signed up again: nothing to confirm
WELCOME = "welcome"  # the latest issue, to a reader who just confirmed (digest.welcome)
KINDS = (CONFIRM, ALREADY, WELCOME)
STALE_CLAIM = timedelta(minutes=10)
MAX_ATTEMPTS = 5


def due(now: datetime) -> ColumnElement[bool]:
    return or_(
        Notice.status == NoticeStatus.QUEUED,
        (Notice.status == NoticeStatus.RETRY) & (Notice.next_attempt_at <= now),
        (Notice.status == NoticeStatus.SENDING) & (Notice.claimed_at < now - STALE_CLAIM),
    )


def _claim(db: Database, notice_id: int, now: datetime) -> bool:
    """Compare-and-set: this process takes the notice only if it is still due (a claim
    by another process makes it `sending` with a fresh claimed_at: not due)."""
    with db.session() as s:
        taken = s.execute(
            update(Notice)
            .where(Notice.id == notice_id, due(now))
            .values(status=NoticeStatus.SENDING, claimed_at=now, attempts=Notice.attempts + 1)
            .execution_options(synchronize_session=False)
        ).rowcount
    return taken == 1


def compose(db: Database, cfg: Config, tokens: Tokens, sub: Subscriber, kind: str) -> bytes | None:
    """The notice as bytes with CRLF line ends, ready for SMTP; None when there is nothing
    to send any more (a welcome with no issue sent)."""
    if kind == WELCOME:
        return _latest_issue(db, cfg, tokens, sub)
    base = cfg.digest.base_url
    links = {
        "confirm_url": f"{base}/confirm/{tokens.confirm(sub.id, sub.token_nonce)}",
        "unsubscribe_url": f"{base}/unsubscribe/{tokens.make(sub.id, sub.token_nonce)}",
    }
    text = (
        template_environment(cfg)
        .get_template(f"notice_{kind}.txt")
        .render(name=cfg.digest.name, days=cfg.signup.confirm_days, **links)
    )
    msg = EmailMessage()
    msg["From"] = formataddr((cfg.smtp.from_name, cfg.smtp.from_address))
    msg["To"] = sub.email  # the bare address: never the name a visitor typed
    subject = "Confirm your subscription" if kind == CONFIRM else "You are already subscribed"
    msg["Subject"] = f"{cfg.digest.name}: {subject}"
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = make_msgid("notice", domain=message_id_domain(cfg))
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to this
    msg.set_content(text)
    return _signed(cfg, msg.as_bytes(policy=SMTP))


def _signed(cfg: Config, data: bytes) -> bytes:
    signer = DkimSigner.from_config(cfg)
    return signer.sign(data) if signer is not None else data


def _latest_issue(db: Database, cfg: Config, tokens: Tokens, sub: Subscriber) -> bytes | None:
    """The latest sent issue as the reader would have had it (the whole digest, their own
    unsubscribe link, a Message-ID of its own)."""
    with db.reader() as s:
        d = s.scalars(
            select(Digest)
            .where(Digest.status == DigestStatus.SENT)
            .order_by(Digest.issue_number.desc())
            .limit(1)
        ).first()
    if d is None:
        return None
    base = cfg.digest.base_url
    rcpt = Recipient(
        sub.id,
        sub.email,
        sub.name,
        f"{base}/unsubscribe/{tokens.make(sub.id, sub.token_nonce)}",
        new_message_key(),
        f"{base}/preferences/{tokens.preferences(sub.id, sub.token_nonce)}",
    )
    return _signed(cfg, MessageTemplate(cfg, d.id, d.subject, d.html, d.text).render(rcpt))


def send_due(db: Database, cfg: Config, stop: threading.Event | None = None) -> int:
    """Send every notice that is due, one at a time; how many were sent. A relay-wide
    problem leaves the rest queued for the next call."""
    tokens = Tokens(load_secret(cfg.var_dir))
    sent = 0
    with db.reader() as s:
        rows = (
            s.execute(select(Notice.id).where(due(utcnow())).order_by(Notice.id).limit(500)).scalars().all()
        )
    if not rows:
        return 0
    with SmtpConnection(cfg.smtp) as smtp:
        for notice_id in rows:
            if stop is not None and stop.is_set():
                break
            now = utcnow()
            if cfg.smtp.max_per_hour and not _quota_left(db, cfg, now):
                break
            if not _claim(db, notice_id, now):
                continue  # another process took it
            if not _send_one(db, cfg, tokens, smtp, notice_id):
                break
            sent += 1
    return sent


def _quota_left(db: Database, cfg: Config, now: datetime) -> bool:
    with db.session() as s:
        serialise(s, "hourly-quota")
        left, _ = queue.hourly_quota_left(s, cfg.smtp.max_per_hour, now)
    return left > 0


def _send_one(db: Database, cfg: Config, tokens: Tokens, smtp: SmtpConnection, notice_id: int) -> bool:
    """Send one claimed notice and record what became of it; False when the relay is
    down or refuses us (the notice goes back to retry, the caller stops)."""
    with db.reader() as s:
        notice = s.get(Notice, notice_id)
        sub = s.get(Subscriber, notice.subscriber_id) if notice is not None else None
        attempts = notice.attempts if notice is not None else 0
        kind = notice.kind if notice is not None else ""
    if sub is None:
        return True  # forgotten meanwhile: the row went with them
    data = compose(db, cfg, tokens, sub, kind)
    if data is None:
        _record(db, notice_id, NoticeStatus.FAILED, "nothing to send", attempts)
        return True
    try:
        result = smtp.send(cfg.smtp.from_address, sub.email, data)
    except MailerError as exc:  # SmtpBusy / SmtpFatal: the relay, not this reader
        _record(db, notice_id, NoticeStatus.RETRY, str(exc), attempts)
        log.warning("notice to subscriber %s not sent: %s", sub.id, exc)
        return False
    if result.outcome is Outcome.SENT:
        _record(db, notice_id, NoticeStatus.SENT, result.reply, attempts)
        return True
    permanent = result.outcome is Outcome.PERMANENT or attempts >= MAX_ATTEMPTS
    _record(db, notice_id, NoticeStatus.FAILED if permanent else NoticeStatus.RETRY, result.reply, attempts)
    return result.outcome is not Outcome.FATAL


def _record(db: Database, notice_id: int, status: NoticeStatus, reply: str, attempts: int) -> None:
    now = utcnow()
    values: dict[str, object] = {"status": status, "last_reply": reply[:1000]}
    if status is NoticeStatus.SENT:
        values["sent_at"] = now
    if status is NoticeStatus.RETRY:
        values["next_attempt_at"] = now + timedelta(minutes=2 ** min(attempts, 6))
    with db.session() as s:
        s.execute(update(Notice).where(Notice.id == notice_id).values(**values))


class NoticeSender:
    """A thread that sends due notices as soon as a page asks (`wake`), and every
    POLL seconds anyway (notices queued by other processes, retries)."""

    POLL = 30.0

    def __init__(self, db: Database, cfg: Config) -> None:
        self.db = db
        self.cfg = cfg
        self.stop = threading.Event()
        self._wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="notices", daemon=True)

    def start(self) -> NoticeSender:
        self.thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self.stop.set()
        self._wake.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.is_set():
            self._wake.wait(self.POLL)
            self._wake.clear()
            if self.stop.is_set():
                return
            try:
                send_due(self.db, self.cfg, self.stop)
            except Exception as exc:  # the database or the relay: logged, tried again
                log.error("notices not sent: %s", exc)
