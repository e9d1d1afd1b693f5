"""One SMTP connection (smtplib), reused across messages, and how its errors are classified.

TLS always verifies the certificate and the host name (ssl.create_default_context, with an
optional CA file). Replies are classified so that delivery knows what to do:

* SENT      2xx for the whole transaction;
* TEMPORARY 4xx, or the connection dropped: retry later, same Message-ID;
* PERMANENT 5xx about the recipient (550/551/553 at RCPT, or 5.1.x/5.2.x): record it;
* FATAL     authentication, TLS or sender-policy failures (535, 530, 5.7.x on MAIL FROM),
            or a server that cannot be reached: not the recipient's fault, so the run
            stops and every delivery stays pending.
"""

from __future__ import annotations

import contextlib
import enum
import smtplib
import socket
import ssl
from dataclasses import dataclass

from mailer.config import SmtpConfig
from mailer.errors import MailerError


class Outcome(enum.Enum):
    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    FATAL = "fatal"
    SKIPPED = "skipped"  # not sent at all: the subscriber left just before


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    reply: str


class SmtpFatal(MailerError):
    """The relay refuses us (not one recipient): configuration, credentials, TLS, reachability."""


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"[:1000]


class SmtpConnection:
    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.conn: smtplib.SMTP | None = None

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.cfg.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise SmtpFatal(f"smtp.ca_file {self.cfg.ca_file!r}: cannot load: {exc}") from None

    def open(self) -> None:
        """Connect, TLS and log in, or raise SmtpFatal with one clear line."""
        cfg = self.cfg
        where = f"{cfg.host}:{cfg.port}"
        conn: smtplib.SMTP | None = None
        try:
            if cfg.security == "ssl":
                conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._context())
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            # Pipelined commands and the message go out in few large writes; without
            # TCP_NODELAY, Nagle's algorithm holds each write's tail back for an ACK.
            if conn.sock is not None:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.ehlo()
            if cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise SmtpFatal(f"SMTP server {where} does not offer STARTTLS")
                conn.starttls(context=self._context())
                conn.ehlo()
            if cfg.username:
                conn.login(cfg.username, cfg.password)
        except SmtpFatal:
            _quietly_close(conn)
            raise
        except smtplib.SMTPAuthenticationError as exc:
            _quietly_close(conn)
            raise SmtpFatal(
                f"SMTP login as {cfg.username!r} at {where} refused: {_reply(exc.smtp_code, exc.smtp_error)}"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            _quietly_close(conn)
            raise SmtpFatal(
                f"TLS certificate of {where} not trusted: {exc.verify_message or exc.reason}"
            ) from None
        except ssl.SSLError as exc:
            _quietly_close(conn)
            raise SmtpFatal(f"TLS with {where} failed: {exc.reason or exc}") from None
        except smtplib.SMTPException as exc:
            _quietly_close(conn)
            raise SmtpFatal(f"SMTP server {where} refused the session: {exc}") from None
        except OSError as exc:
            _quietly_close(conn)
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise SmtpFatal(f"SMTP server {where} unreachable: {reason}") from None
        self.conn = conn

    def send(self, sender: str, recipient: str, data: bytes) -> Result:
        """One transaction on the open connection. Reconnects once if the server hung up."""
        for attempt in (1, 2):
            if self.conn is None:
                self.open()
            try:
                result = self._transaction(sender, recipient, data)
            except (smtplib.SMTPServerDisconnected, OSError) as exc:
                self.close(polite=False)
                if attempt == 2:
                    return Result(Outcome.TEMPORARY, f"connection lost: {exc or type(exc).__name__}")
                continue
            if result.reply.startswith("421"):
                # The server is closing the session; the next message needs a new one.
                self.close(polite=False)
            return result
        raise AssertionError("unreachable")

    def _reset(self) -> None:
        try:
            if self.conn is not None:
                self.conn.rset()
        except (smtplib.SMTPException, OSError):
            self.close(polite=False)

    def _transaction(self, sender: str, recipient: str, data: bytes) -> Result:
        """MAIL, RCPT, DATA and the message. With PIPELINING (RFC 2920) the three commands
        go out in one write, which saves two round trips per message. The message is sent
        as ready bytes: the template guarantees CRLF line ends."""
        assert self.conn is not None
        conn = self.conn
        # The commands below are written by hand (smtplib's putcmd, which refuses CR/LF, is
        # bypassed), so an address that could end the command line or the <path> never
        # goes out: "x@example.com>\r\nRCPT TO:<victim@example.com" would add a recipient.
        if not _plain_address(sender):
            return Result(Outcome.FATAL, f"MAIL FROM: sender address {sender!r} is not usable")
        if not _plain_address(recipient):
            return Result(Outcome.PERMANENT, f"recipient address {recipient!r} is not usable (not sent)")
        # Dot-stuffing (RFC 5321 4.5.2) in C: a no-op for our base64 bodies.
        data = (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")
        if conn.does_esmtp and conn.has_extn("pipelining"):
            conn.send(f"MAIL FROM:<{sender}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode("ascii"))
            mail, rcpt, start = (_check(conn.getreply()) for _ in range(3))
        else:
            mail = _check(conn.mail(sender))
            rcpt = _check(conn.rcpt(recipient)) if mail[0] == 250 else (0, b"")
            start = _check(conn.docmd("DATA")) if rcpt[0] in (250, 251) else (0, b"")
        failed: Result | None = None
        if mail[0] != 250:
            failed = _classify(*mail, stage="MAIL FROM")
        elif rcpt[0] not in (250, 251):
            failed = _classify(*rcpt, stage="RCPT TO")
        elif start[0] != 354:
            failed = _classify(*start, stage="DATA")
        if failed is not None:
            if start[0] == 354:
                # The server took DATA although we cannot go on: end it empty, then reset.
                conn.send(b".\r\n")
                conn.getreply()
            self._reset()
            return failed
        conn.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        code, text = _check(conn.getreply())
        if code != 250:
            self._reset()
            return _classify(code, text, stage="DATA")
        return Result(Outcome.SENT, _reply(code, text))

    def close(self, polite: bool = True) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if polite:
            try:
                conn.quit()
                return
            except (smtplib.SMTPException, OSError):
                pass
        _quietly_close(conn)

    def __enter__(self) -> SmtpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain_address(address: str) -> bool:
    """Printable ASCII without angle brackets: safe inside MAIL FROM:<...> / RCPT TO:<...>."""
    return address.isascii() and address.isprintable() and not _ANGLE & set(address)


_ANGLE = frozenset("<>")


def _check(reply: tuple[int, bytes]) -> tuple[int, bytes]:
    """smtplib reports a reply it could not read (the peer hung up mid-line) as code -1."""
    if not 200 <= reply[0] < 600:
        raise smtplib.SMTPServerDisconnected(f"unreadable reply {reply!r}")
    return reply


def _classify(code: int, text: bytes, stage: str) -> Result:
    reply = _reply(code, text)
    if 400 <= code < 500:
        return Result(Outcome.TEMPORARY, reply)
    words = reply.split()
    enhanced = words[1] if len(words) > 1 else ""
    # Authentication and security policy (5.7.x), or the relay refusing our sender: every
    # recipient would fail the same way, so it is a configuration problem.
    if code in (530, 534, 535, 538) or enhanced.startswith("5.7.") or stage == "MAIL FROM":
        return Result(Outcome.FATAL, f"{stage}: {reply}")
    # The message refused after the recipient was accepted ("554 message rejected", "552
    # message too large"): the same message goes to everyone, so it is not this person's
    # address, unless the code says so (5.1.x address, 5.2.x mailbox).
    if stage == "DATA" and not enhanced.startswith(("5.1.", "5.2.")):
        return Result(Outcome.FATAL, f"{stage}: {reply}")
    return Result(Outcome.PERMANENT, reply)


def _quietly_close(conn: smtplib.SMTP | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(OSError):
        conn.close()
