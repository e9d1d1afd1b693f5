"""One SMTP connection (smtplib), reused across messages, and what each reply means.

TLS always verifies the certificate and the host name (ssl.create_default_context, with an
optional CA file). A reply concerns what the command it answers was about, so it is
classified by the stage it came at:

    stage                   4xx          5xx
    greeting, EHLO          SmtpBusy     SmtpFatal
    STARTTLS, AUTH          SmtpBusy     SmtpFatal
    MAIL FROM               TEMPORARY    FATAL      (the sender: the same for everyone)
    RCPT TO                 TEMPORARY    PERMANENT  (that recipient, 5.7.x policy included),
                                         FATAL      when it says the relay refuses to relay
                                                    for us ("Relay access denied")
    DATA and end of data    TEMPORARY    FATAL      (the message is the same for everyone),
                                         PERMANENT  when the code is about the address or
                                                    mailbox (5.1.x, 5.2.x: "552 5.2.2 full")

* SENT      2xx for the whole transaction;
* TEMPORARY retry this recipient later, same Message-ID; also a connection dropped twice;
* PERMANENT record it against this recipient (it counts towards a bounce);
* FATAL     not the recipient's fault (sender, content, credentials, TLS, reachability):
            the run stops and every delivery stays pending;
* SmtpBusy  this connection could not be set up now (a 4xx before the session began, or a
            hang-up at the greeting or EHLO, e.g. Postfix's "421 4.7.0 ... too many
            connections"); the caller may retry it later. Not a subclass of SmtpFatal.

530, 534, 535 and 538 are FATAL at any stage, with or without an enhanced code: RFC 4954
defines them for authentication only, so no recipient can cause them.

Invariants, and why they hold:
* A reply is shown as text ("421 4.7.0 mx: too many connections"), never as a Python tuple
  or bytes: every message built from a server reply goes through `_reply`, which decodes
  with "replace" (a reply that is not UTF-8 cannot raise) and copes with an empty text.
* A refusal never leaks into the next recipient's transaction: after any transaction that
  did not end in 250, RSET is sent, and a connection whose RSET fails is dropped, so the
  next message starts on a clean session (without it: "503 nested MAIL command").
* A 421 ends the connection (the server is closing it: no RSET), and so does a reply that
  cannot be read; the next message opens a new one. A message whose connection dropped is
  tried once more on a new connection, so an idle connection the server timed out costs
  nothing; dropped twice, it is TEMPORARY and the caller retries it later.
* No command line can be forged from an address: MAIL FROM and RCPT TO are written by
  hand, so `_plain_address` refuses anything but printable ASCII without angle brackets.
"""

from __future__ import annotations

import contextlib
import enum
import re
import smtplib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from mailer.errors import MailerError
from mailer.settings import SmtpConfig


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


class _Once:
    """A `before_data` hook run at most once; its answer kept for a retried transaction."""

    def __init__(self, hook: Callable[[], Result | None] | None) -> None:
        self.hook = hook
        self.ran = False
        self.answer: Result | None = None

    def __call__(self) -> Result | None:
        if self.hook is not None and not self.ran:
            self.ran = True
            self.answer = self.hook()
        return self.answer


class SmtpFatal(MailerError):
    """The relay refuses us (not one recipient): configuration, credentials, TLS, reachability."""


class SmtpBusy(MailerError):
    """The relay cannot take this connection now (a 4xx greeting, EHLO, STARTTLS or AUTH
    reply, or a hang-up right after connecting): retry the connection later."""

    def __init__(self, reply: str, where: str = "The SMTP server") -> None:
        super().__init__(f"{where} cannot take a connection now: {reply}")
        self.reply = reply  # the server's reply as one line of text


# RFC 4954: these codes answer authentication only, whatever command they come at.
_AUTH_CODES = frozenset({530, 534, 535, 538})


def _reply(code: int, text: bytes | str) -> str:
    """A reply as one line: "550 5.1.1 user unknown". smtplib gives -1 for no readable code."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    head = str(code) if code != -1 else "unreadable reply:"
    return " ".join([head, *text.split()])[:1000]


class SmtpConnection:
    def __init__(self, cfg: SmtpConfig) -> None:
        self.cfg = cfg
        self.conn: smtplib.SMTP | None = None
        self.where = f"{cfg.host}:{cfg.port}"

    def _context(self) -> ssl.SSLContext:
        try:
            return ssl.create_default_context(cafile=self.cfg.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise SmtpFatal(f"smtp.ca_file {self.cfg.ca_file!r}: cannot load: {exc}") from None

    def open(self) -> None:
        """Connect, TLS, EHLO and log in. Raises SmtpBusy when the server cannot take this
        connection now, SmtpFatal with one clear line for anything else."""
        conn: smtplib.SMTP | None = None
        stage = "greeting"
        try:
            conn = self._connect()
            stage = "EHLO"
            self._hello(conn)
            if self.cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise SmtpFatal(f"SMTP server {self.where} does not offer STARTTLS")
                stage = "STARTTLS"  # also for the EHLO over TLS: a hang-up there is no busy sign
                conn.starttls(context=self._context())
                self._hello(conn)
            if self.cfg.username:
                stage = "login"
                conn.login(self.cfg.username, self.cfg.password)
        except (SmtpFatal, SmtpBusy):
            _quietly_close(conn)
            raise
        except OSError as exc:  # smtplib's and ssl's errors are OSErrors too
            _quietly_close(conn)
            raise self._failed_open(exc, stage) from None
        self.conn = conn

    def _connect(self) -> smtplib.SMTP:
        """TCP (and implicit TLS) and the greeting: smtplib's constructor does both."""
        cfg = self.cfg
        if cfg.security == "ssl":
            conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=self._context())
        else:
            conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
        # Pipelined commands and the message go out in few large writes; without
        # TCP_NODELAY, Nagle's algorithm holds each write's tail back for an ACK.
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _hello(self, conn: smtplib.SMTP) -> None:
        """EHLO; HELO only if EHLO is refused for good (RFC 5321 4.1.4), not when busy."""
        code, text = conn.ehlo()
        if code >= 500:
            code, text = conn.helo()
        if code != 250:
            raise self._session_refused(code, text, "EHLO")

    def _session_refused(self, code: int, text: bytes | str, stage: str) -> SmtpBusy | SmtpFatal:
        reply = _reply(code, text)
        if 400 <= code < 500:
            return SmtpBusy(reply, f"SMTP server {self.where}")
        if stage == "login":
            return SmtpFatal(f"SMTP login as {self.cfg.username!r} at {self.where} refused: {reply}")
        return SmtpFatal(f"SMTP server {self.where} refused the session at {stage}: {reply}")

    def _failed_open(self, exc: OSError, stage: str) -> SmtpBusy | SmtpFatal:
        """One line for what went wrong while setting up the session."""
        where = self.where
        if isinstance(exc, smtplib.SMTPResponseException):  # a reply: greeting, STARTTLS, AUTH
            return self._session_refused(exc.smtp_code, exc.smtp_error, stage)
        if isinstance(exc, smtplib.SMTPServerDisconnected):
            if isinstance(exc.__context__, TimeoutError):
                return SmtpFatal(f"SMTP server {where}: no reply at {stage} within {self.cfg.timeout:g} s")
            if stage in ("greeting", "EHLO"):
                # A server over its connection limit may hang up instead of saying 421.
                return SmtpBusy(f"connection closed by the server at {stage}", f"SMTP server {where}")
            return SmtpFatal(f"SMTP server {where} closed the connection at {stage}")
        if isinstance(exc, smtplib.SMTPException):  # e.g. no AUTH mechanism in common
            return SmtpFatal(f"SMTP server {where} refused the session at {stage}: {exc}")
        if isinstance(exc, ssl.SSLCertVerificationError):
            return SmtpFatal(f"TLS certificate of {where} not trusted: {exc.verify_message or exc.reason}")
        if isinstance(exc, ssl.SSLError):
            return SmtpFatal(f"TLS with {where} failed: {exc.reason or exc}")
        return SmtpFatal(f"SMTP server {where} unreachable: {exc.strerror or exc}")

    def send(
        self, sender: str, recipient: str, data: bytes, before_data: Callable[[], Result | None] | None = None
    ) -> Result:
        """One transaction, on the open connection or a new one. A connection the server
        dropped (often one it found idle too long) is re-opened once; dropped again, the
        message is TEMPORARY. Opening raises SmtpBusy or SmtpFatal (see `open`), so this
        does too.

        `before_data` runs once the envelope is on its way and before the message is:
        the caller's last word (its database round trip overlaps the relay's replies).
        A Result from it means "do not send": the transaction is abandoned (RSET, or a
        dropped connection once the server has said 354, since any end of data would
        deliver) and that Result returned. It runs at most once, even across a re-opened
        connection; its answer stands for the retry."""
        gate = _Once(before_data)
        try:
            return self._send_once(sender, recipient, data, gate)
        except OSError:  # smtplib.SMTPServerDisconnected is one
            self.close(polite=False)
        try:
            return self._send_once(sender, recipient, data, gate)
        except OSError as exc:
            self.close(polite=False)
            return Result(Outcome.TEMPORARY, f"connection lost: {self._lost(exc)}")

    def _send_once(self, sender: str, recipient: str, data: bytes, gate: _Once) -> Result:
        if self.conn is None:
            self.open()
        assert self.conn is not None
        return self._transaction(self.conn, sender, recipient, data, gate)

    def _lost(self, exc: OSError) -> str:
        if isinstance(exc.__context__, TimeoutError):  # smtplib wraps every socket error
            return f"no reply within {self.cfg.timeout:g} s"
        return str(exc)

    def _after_refusal(self, conn: smtplib.SMTP, result: Result) -> Result:
        """After a refused transaction: RSET, so the next MAIL starts clean. A session the
        server is closing (421), or that cannot even reset, is dropped; the next message
        opens a new one."""
        try:
            if result.reply.startswith("421") or conn.rset()[0] != 250:
                self.close(polite=False)
        except OSError:
            self.close(polite=False)
        return result

    def _transaction(
        self, conn: smtplib.SMTP, sender: str, recipient: str, data: bytes, gate: _Once
    ) -> Result:
        """MAIL, RCPT, DATA and the message. With PIPELINING (RFC 2920) the three commands
        go out in one write, which saves two round trips per message; without it each
        waits for the previous one's success. The message is sent as ready bytes: the
        template guarantees CRLF line ends."""
        # The commands are written by hand (the pipelined ones bypass smtplib's checks), so
        # an address that could end the command line or the <path> never goes out:
        # "x@example.com>\r\nRCPT TO:<victim@example.com" would add a recipient.
        if not _plain_address(sender):
            return Result(Outcome.FATAL, f"MAIL FROM: sender address {sender!r} is not usable")
        if not _plain_address(recipient):
            return Result(Outcome.PERMANENT, f"recipient address {recipient!r} is not usable (not sent)")
        data = _dot_stuffed(data)
        commands = [f"MAIL FROM:<{sender}>", f"RCPT TO:<{recipient}>", "DATA"]
        stop: Result | None = None
        if conn.has_extn("pipelining"):
            conn.send("".join(f"{command}\r\n" for command in commands).encode("ascii"))
            stop = gate()  # while the three replies are on their way
            replies = [_check(conn.getreply()) for _ in commands]
        else:
            replies = []
            for command, (_, accepted) in zip(commands, _STEPS, strict=True):
                if command == "DATA":
                    stop = gate()
                    if stop is not None:
                        break
                replies.append(_check(conn.docmd(command)))
                if replies[-1][0] not in accepted:
                    break
        for (code, text), (stage, accepted) in zip(replies, _STEPS, strict=False):  # up to a refusal
            if code not in accepted:
                if replies[-1][0] == 354:
                    # The server took DATA although we cannot go on: end it empty, then reset.
                    conn.send(b".\r\n")
                    conn.getreply()
                return self._after_refusal(conn, stop or _classify(code, text, stage))
        if stop is not None:
            if replies and replies[-1][0] == 354:
                # Any end of data would deliver: only a lost connection abandons the
                # message (RFC 5321 3.3). The next message opens a new one.
                self.close(polite=False)
                return stop
            return self._after_refusal(conn, stop)
        conn.send(data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n"))
        code, text = _check(conn.getreply())
        if code != 250:
            return self._after_refusal(conn, _classify(code, text, stage="DATA"))
        return Result(Outcome.SENT, _reply(code, text))

    def close(self, polite: bool = True) -> None:
        """QUIT and close; `polite=False` only closes (the session is already broken)."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if polite:
            with contextlib.suppress(OSError):
                conn.quit()
                return
        _quietly_close(conn)

    def __enter__(self) -> SmtpConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dot_stuffed(data: bytes) -> bytes:
    """The message with every line that starts with "." given one more (RFC 5321 4.5.2).

    Our bodies are base64 and our headers fold with a space, so there is almost never
    such a line. Finding out is what costs: a substring search for CRLF "." takes ~50 us
    over a 78 KB message (the CR matches at every line end), while looking at the few
    dots (memchr: base64 has none) takes ~1 us. A message full of dots (a text body not in
    base64) is stuffed without looking: past _DOTS_LOOKED_AT the search is the cheaper."""
    at = data.find(b".")
    for _ in range(_DOTS_LOOKED_AT):
        if at == -1:
            return data
        if at == 0 or data[at - 2 : at] == b"\r\n":  # a line starts with "."
            break
        at = data.find(b".", at + 1)
    return (b"." if data.startswith(b".") else b"") + data.replace(b"\r\n.", b"\r\n..")


_DOTS_LOOKED_AT = 200


def _plain_address(address: str) -> bool:
    """Printable ASCII without angle brackets: safe inside MAIL FROM:<...> / RCPT TO:<...>."""
    return address.isascii() and address.isprintable() and not _ANGLE & set(address)


_ANGLE = frozenset("<>")
# Each command of a transaction and the replies that let it go on.
_STEPS = (("MAIL FROM", (250,)), ("RCPT TO", (250, 251)), ("DATA", (354,)))


def _check(reply: tuple[int, bytes]) -> tuple[int, bytes]:
    """smtplib reports a reply it could not read (the peer hung up mid-line) as code -1."""
    if not 200 <= reply[0] < 600:
        raise smtplib.SMTPServerDisconnected(_reply(*reply))
    return reply


def _classify(code: int, text: bytes, stage: str) -> Result:
    """What a refusal at `stage` means (the table at the top of this module)."""
    reply = _reply(code, text)
    if code < 500:
        return Result(Outcome.TEMPORARY, reply)
    if code in _AUTH_CODES or stage == "MAIL FROM":
        return Result(Outcome.FATAL, f"{stage}: {reply}")
    # At DATA the message is refused, and it is the same for everyone ("554 5.7.1 spam",
    # "552 message too large"), unless the enhanced code after the reply code names the
    # address or the mailbox (5.1.x, 5.2.x).
    if stage == "RCPT TO" and _RELAYING_DENIED.search(reply):
        # "554 5.7.1 <x@y>: Relay access denied": the relay will not relay for us at all
        # (our address or login is not allowed), so every reader would be refused alike.
        return Result(Outcome.FATAL, f"{stage}: {reply}")
    if stage == "RCPT TO" or reply[4:].startswith(("5.1.", "5.2.")):
        return Result(Outcome.PERMANENT, reply)
    return Result(Outcome.FATAL, f"{stage}: {reply}")


# Postfix "Relay access denied", Exim "relay not permitted", Sendmail "Relaying denied",
# Exchange "Unable to relay".
_RELAYING_DENIED = re.compile(r"relay(ing)? (access )?(denied|not permitted)|unable to relay", re.I)


def _quietly_close(conn: smtplib.SMTP | None) -> None:
    if conn is None:
        return
    with contextlib.suppress(OSError):
        conn.close()
