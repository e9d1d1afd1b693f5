"""The bounce mailbox, polled over IMAP: `[bounces] imap_url = "imaps://user@host[:port]/FOLDER"`
(FOLDER defaults to INBOX), the password in MAILER_BOUNCES_IMAP_PASSWORD.

Invariants, and why they hold:
* **Nothing but bounces and complaints is touched.** Messages are read with RFC822.SIZE and
  BODY.PEEK[], which set no flag (not even \\Seen). Only a message the parser made Reports of
  is moved, to `imap_processed_folder`, and only once all its Reports are recorded; anything
  else stays where it was with the flags it had: what the parser calls no bounce (a reply,
  an out-of-office, spam) silently, and with a problem line a message over
  MAX_MESSAGE_BYTES, which may be anything. A bounce that names no one usable (a DSN with
  neither Action nor Status) is moved aside with a problem line and changes nobody.
  The move is MOVE (RFC 6851) or, on a server without it, COPY,
  \\Deleted and UID EXPUNGE (RFC 4315) of that UID alone; a server with neither MOVE nor
  UIDPLUS gets the copy and the \\Deleted flag but no EXPUNGE, because a plain EXPUNGE also
  removes whatever the mailbox's owner had marked deleted. (listmonk's POP reader deleted
  unrelated mail: its issue #1334.)
* **Each report applied once.** Recording comes before the move, and the ledger ignores a
  report it already holds (by event id), so a poll cut short between the two (a lost
  connection, a crash) changes nothing twice when the next poll meets the message again.
* **Each message read once, not at every poll.** The highest UID examined is kept in
  var/bounce-mailbox.json with the URL and the folder's UIDVALIDITY; a poll fetches only the
  UIDs above it. The mark passes a message only once it is dealt with (moved, or left for
  good), never one whose recording failed: a database error stops the poll and the message
  is read again at the next one. A lost or stale mark (another URL, a new UIDVALIDITY) only
  means reading everything again, which the point above makes harmless.
* **The token from the headers, trusted for its HMAC alone.** There is no envelope here: the
  VERP token is the one in the Delivered-To, X-Original-To or To header that names the
  bounce address. Anyone can write a header, but not a token's MAC, so a forged one leaves
  the report unmatched, never credited to someone else's delivery.
* **The server is who it says.** Implicit TLS with the certificate and host name verified
  (the system's CAs, or `imap_ca_file`), as for SMTP. Failing to connect, to agree on TLS or
  to log in is one MailboxError line naming the server.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from mailer.bounces import dsn, ledger, verp
from mailer.bounces.report import Source
from mailer.config import Config
from mailer.db import Database
from mailer.errors import MailerError
from mailer.models import utcnow
from mailer.tokens import Tokens, load_secret

log = logging.getLogger("mailer.bounces.mailbox")

MAX_MESSAGE_BYTES = dsn.MAX_MESSAGE_BYTES  # what the parser reads at most
TIMEOUT_SECONDS = 30
STATE_FILE = "bounce-mailbox.json"
_BATCH = 200  # UIDs per FETCH of sizes, so a command line stays short
_SUBJECT = b"BODY[HEADER.FIELDS (SUBJECT)]"
_TO_HEADERS = ("Delivered-To", "X-Original-To", "To")


class MailboxError(MailerError):
    """The bounce mailbox cannot be reached, or will not let us in: one line naming it."""


@dataclass
class MailboxReport:
    processed: int = 0  # bounces and complaints recorded (replays included) and moved
    not_bounces: int = 0  # read and left exactly as they were
    # One line each: too big or unusable (left where it was), matched to no delivery (moved).
    problems: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        problems = f", {len(self.problems)} problem(s)" if self.problems else ""
        return f"{self.processed} processed, {self.not_bounces} left (not bounces){problems}"


@dataclass(frozen=True)
class _Mailbox:
    host: str
    port: int
    user: str
    folder: str

    @property
    def where(self) -> str:
        return f"bounce mailbox {self.user}@{self.host}:{self.port}"

    @property
    def key(self) -> str:
        return f"imaps://{self.user}@{self.host}:{self.port}/{self.folder}"


def _mailbox(cfg: Config) -> _Mailbox:
    parts = urlsplit(cfg.bounces.imap_url)
    try:
        port = parts.port or 993
    except ValueError as exc:
        raise MailboxError(f"[bounces] imap_url {cfg.bounces.imap_url!r}: {exc}") from None
    folder = unquote(parts.path.strip("/")) or "INBOX"
    mailbox = _Mailbox(parts.hostname or "", port, unquote(parts.username or ""), folder)
    if folder == cfg.bounces.imap_processed_folder:
        raise MailboxError(f"{mailbox.where}: {folder!r} is both the folder read and imap_processed_folder")
    return mailbox


def poll_mailbox(db: Database, cfg: Config) -> MailboxReport:
    """Read the new messages of the bounce mailbox; record and move the bounces and
    complaints. MailboxError when the server cannot be used; a database error is raised
    as it is, once the messages before it are dealt with."""
    mailbox = _mailbox(cfg)
    if not cfg.bounces.imap_password:
        raise MailboxError(f"{mailbox.where}: no password (set MAILER_BOUNCES_IMAP_PASSWORD)")
    tokens = Tokens(load_secret(cfg.var_dir))
    imap = _connect(cfg, mailbox)
    try:
        with _server_errors(mailbox):
            selected = imap.select_folder(mailbox.folder)
        state = _State.load(cfg.var_dir / STATE_FILE, mailbox.key, int(selected[b"UIDVALIDITY"]))
        poll = _Poll(db, cfg, tokens, imap, mailbox, state)
        try:
            with _server_errors(mailbox):
                poll.run()
        finally:
            state.save()
    finally:
        with suppress(IMAPClientError, OSError):  # the session is over either way
            imap.logout()
    report = poll.report
    if report.processed or report.not_bounces or report.problems:
        log.info("%s: %s", mailbox.where, report.summary)
    return report


def _connect(cfg: Config, mailbox: _Mailbox) -> IMAPClient:
    with _server_errors(mailbox):
        context = ssl.create_default_context(cafile=cfg.bounces.imap_ca_file or None)
        imap = IMAPClient(mailbox.host, mailbox.port, ssl=True, ssl_context=context, timeout=TIMEOUT_SECONDS)
    try:
        with _server_errors(mailbox):
            imap.login(mailbox.user, cfg.bounces.imap_password)
    except MailboxError:
        imap.shutdown()
        raise
    return imap


@contextmanager
def _server_errors(mailbox: _Mailbox) -> Iterator[None]:
    """Turns what the network, TLS and IMAP raise into one MailboxError line."""
    where = mailbox.where
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise MailboxError(f"{where}: certificate not trusted: {exc.verify_message}") from None
    except ssl.SSLError as exc:
        raise MailboxError(f"{where}: TLS failed: {exc.reason or exc}") from None
    except socket.gaierror as exc:
        raise MailboxError(f"{where}: cannot resolve {mailbox.host}: {exc.strerror}") from None
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename:  # imap_ca_file
            raise MailboxError(f"{where}: CA file {exc.filename}: {exc.strerror}") from None
        raise MailboxError(
            f"{where}: cannot connect: {exc.strerror or str(exc) or type(exc).__name__}"
        ) from None
    except LoginError as exc:
        raise MailboxError(f"{where}: login as {mailbox.user} refused: {_text(exc)}") from None
    except IMAPClientError as exc:
        raise MailboxError(f"{where}: {_text(exc)}") from None


def _text(exc: BaseException) -> str:
    """The server's words, not the repr of the bytes imapclient keeps them in."""
    arg = exc.args[0] if exc.args else str(exc)
    text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)
    if text.startswith(("b'", 'b"')) and text.endswith(text[1]):
        text = text[2:-1]
    return " ".join(text.split()) or type(exc).__name__


class _Poll:
    """One session's work: the new UIDs in order, each dealt with before the mark passes it."""

    def __init__(
        self, db: Database, cfg: Config, tokens: Tokens, imap: IMAPClient, mailbox: _Mailbox, state: _State
    ) -> None:
        self.db = db
        self.cfg = cfg
        self.tokens = tokens
        self.imap = imap
        self.mailbox = mailbox
        self.state = state
        self.mover = _Mover(imap, cfg.bounces.imap_processed_folder)
        self.report = MailboxReport()

    def run(self) -> None:
        mark = self.state.examined_up_to
        # "N:*" always matches the highest UID, even one below N (RFC 3501 6.4.8): filtered.
        uids = sorted(uid for uid in self.imap.search(["UID", f"{mark + 1}:*"]) if uid > mark)
        for start in range(0, len(uids), _BATCH):
            batch = uids[start : start + _BATCH]
            heads = self.imap.fetch(batch, ["RFC822.SIZE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
            for uid in batch:
                head = heads.get(uid)  # None: expunged meanwhile, by someone else
                size = int(head.get(b"RFC822.SIZE", 0)) if head else 0
                if head is not None and size > MAX_MESSAGE_BYTES:
                    self._problem(
                        f"UID {uid} {_subject(head)}: {size / 1024 / 1024:.1f} MB, over the "
                        f"{MAX_MESSAGE_BYTES // 1024 // 1024} MB limit; left in {self.mailbox.folder}"
                    )
                elif head is not None:
                    self._one(uid)
                self.state.examined_up_to = uid

    def _one(self, uid: int) -> None:
        fetched = self.imap.fetch([uid], ["BODY.PEEK[]"]).get(uid)
        if fetched is None:
            return  # expunged meanwhile
        data = bytes(fetched[b"BODY[]"])
        try:  # parse_mail never raises by contract; a message must not stop the poll if it does
            token = _token(self.cfg, data)
            parsed = dsn.parse_mail(data, Source.IMAP, verp_token=token, received_at=utcnow())
        except Exception as exc:
            self._problem(
                f"UID {uid}: unreadable ({type(exc).__name__}: {exc}); left in {self.mailbox.folder}"
            )
            return
        if not parsed.reports and parsed.problem.startswith(dsn.NOT_A_BOUNCE):
            self.report.not_bounces += 1
            log.info(
                "%s: UID %s left in %s: %s", self.mailbox.where, uid, self.mailbox.folder, parsed.problem
            )
            return
        if not parsed.reports:
            # A bounce or complaint that names no one usable (a DSN with neither Action nor
            # Status, an ARF report without its original): moved aside with its problem
            # line, like one matched to no delivery; it is ours to handle, not the owner's.
            self._problem(f"UID {uid}: {parsed.problem or 'no report in it'}; moved to {self.mover.folder}")
            self.mover.move(uid)
            return
        for item in parsed.reports:
            recorded = ledger.record(self.db, self.cfg, item, self.tokens)  # logs its own line
            if recorded.outcome == ledger.UNMATCHED:
                who = item.recipient or "no recipient named"
                self.report.problems.append(
                    f"UID {uid}: {item.kind} for no known delivery ({who}); moved to {self.mover.folder}"
                )
        self.mover.move(uid)
        self.report.processed += 1

    def _problem(self, line: str) -> None:
        self.report.problems.append(line)
        log.warning("%s: %s", self.mailbox.where, line)


def _subject(head: dict[bytes, Any]) -> str:
    raw = bytes(head.get(_SUBJECT, b"")).decode("utf-8", "replace")
    subject = " ".join(raw.partition(":")[2].split())
    return repr(subject[:80]) if subject else "(no subject)"


def _token(cfg: Config, data: bytes) -> str | None:
    """The VERP token of the first bounce address the message was delivered to."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(data)
    for name in _TO_HEADERS:
        for _, address in getaddresses([str(value) for value in headers.get_all(name, [])]):
            token = verp.token_of(cfg, address)
            if token:
                return token
    return None


class _Mover:
    """Moves one message at a time to the processed folder, creating it on first use."""

    def __init__(self, imap: IMAPClient, folder: str) -> None:
        self.imap = imap
        self.folder = folder
        self.ready = False

    def move(self, uid: int) -> None:
        if not self.ready:
            self._create()
        if self.imap.has_capability("MOVE"):
            self.imap.move([uid], self.folder)
            return
        self.imap.copy([uid], self.folder)
        self.imap.add_flags([uid], [b"\\Deleted"], silent=True)
        if self.imap.has_capability("UIDPLUS"):
            self.imap.uid_expunge([uid])

    def _create(self) -> None:
        if not self.imap.folder_exists(self.folder):
            try:
                self.imap.create_folder(self.folder)
                self.imap.subscribe_folder(self.folder)  # so mail clients show it
            except IMAPClientError:
                if not self.imap.folder_exists(self.folder):  # else another poller made it first
                    raise
        self.ready = True


@dataclass
class _State:
    """The highest UID examined in one folder of one mailbox (see the module docstring)."""

    path: Path
    key: str
    uidvalidity: int
    examined_up_to: int = 0
    loaded_up_to: int = 0

    @classmethod
    def load(cls, path: Path, key: str, uidvalidity: int) -> _State:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("mailbox") == key and saved.get("uidvalidity") == uidvalidity:
                mark = int(saved.get("examined_up_to", 0))
                return cls(path, key, uidvalidity, mark, mark)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("%s: unreadable (%s); the mailbox is read from its first message", path, exc)
        return cls(path, key, uidvalidity)

    def save(self) -> None:
        if self.examined_up_to == self.loaded_up_to:
            return
        body = {"mailbox": self.key, "uidvalidity": self.uidvalidity, "examined_up_to": self.examined_up_to}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(body) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)  # atomic: a crash leaves the old mark or the new one
        except OSError as exc:
            log.warning("%s: cannot save (%s); the next poll reads these messages again", self.path, exc)
        self.loaded_up_to = self.examined_up_to
