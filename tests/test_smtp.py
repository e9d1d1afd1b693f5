"""SmtpConnection against real servers on loopback: what each reply means at each stage,
what a relay that is busy, hangs, hangs up or answers oddly does to the client, and the
session hygiene (RSET, QUIT, reconnecting) that keeps one recipient's refusal from
touching the next.

Three kinds of peer: aiosmtpd (tests/smtp_server.py), with and without PIPELINING; a
private Postfix (tests/postfix.py), the real relay whose behaviour matters here
(PIPELINING, access maps, connection and rate limits); and `Peer` below, a raw server
that answers from a script, for what neither will do on request: replies that are not
UTF-8, a bare code, no reply at all, a hang-up at the greeting, 354 after a refused RCPT.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import trustme
from sqlalchemy import select

from mailer import campaign
from mailer.models import Delivery, Subscriber
from mailer.settings import SmtpConfig
from mailer.smtp import Outcome, Result, SmtpBusy, SmtpConnection, SmtpFatal
from tests.postfix import HOSTNAME, Postfix, private_postfix
from tests.smtp_server import SmtpServer, free_port

SENDER = "digest@example.org"
MESSAGE = b"Subject: hello\r\nTo: <reader@example.com>\r\n\r\nHello.\r\n"
REJECTED = "rejected@example.com"  # Postfix's access map refuses it at RCPT

# ---------------------------------------------------------------- the scripted peer

CLOSE = b"<close>"  # hang up instead of answering
SILENCE = b"<silence>"  # never answer (read on until the client gives up)


@dataclass
class Line:
    connection: int  # 1 for the first connection the peer accepted, ...
    read: int  # which recv() on that connection brought it: pipelined lines share one
    text: str


@dataclass
class Peer:
    """A raw SMTP server on 127.0.0.1. `answers` maps a whole command line, else its
    verb ("EHLO", "MAIL", "RCPT", "DATA", "RSET", "AUTH", "STARTTLS", "QUIT"; "GREETING";
    "." for the end of the message) to the reply bytes, CLOSE or SILENCE; `script`, if
    given, is asked first with (connection, line) and may return None for the default.
    With `tls` it speaks STARTTLS, or TLS from the first byte with `implicit_tls`."""

    answers: dict[str, bytes] = field(default_factory=dict)
    extensions: tuple[str, ...] = ()  # advertised after EHLO, e.g. "PIPELINING"
    script: Callable[[int, str], bytes | None] | None = None
    tls: ssl.SSLContext | None = None  # for STARTTLS, or from the start with implicit_tls
    implicit_tls: bool = False
    lines: list[Line] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)
    connections: int = 0
    hung_up: list[int] = field(default_factory=list)  # connections the client closed

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def commands(self, connection: int | None = None) -> list[str]:
        return [line.text for line in self.lines if connection in (None, line.connection)]

    def verbs(self, connection: int | None = None) -> list[str]:
        return [text.split(" ", 1)[0].split(":", 1)[0] for text in self.commands(connection)]

    def stop(self) -> None:
        self.listener.close()
        for sock in self.open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.open.append(sock)
            threading.Thread(target=self._serve, args=(sock, self.connections), daemon=True).start()

    def _answer(self, connection: int, line: str, default: bytes) -> bytes:
        scripted = self.script(connection, line) if self.script else None
        if scripted is not None:
            return scripted
        verb = line.split(" ", 1)[0].split(":", 1)[0]
        return self.answers.get(line, self.answers.get(verb, default))

    def _serve(self, sock: socket.socket, connection: int) -> None:
        with contextlib.suppress(OSError):
            if self.tls is not None and self.implicit_tls:
                sock = self.tls.wrap_socket(sock, server_side=True)
            self._talk(_Reader(sock), connection)
        sock.close()

    def _talk(self, reader: _Reader, connection: int) -> None:
        if not self._say(reader.sock, self._answer(connection, "GREETING", b"220 peer.test ESMTP")):
            return
        while (line := reader.line()) is not None:
            line = _canonical(line)
            self.lines.append(Line(connection, reader.reads, line))
            reply = self._answer(connection, line, self._default(line))
            if not self._say(reader.sock, reply):
                return
            if line == "STARTTLS" and reply.startswith(b"220") and self.tls is not None:
                reader.sock = self.tls.wrap_socket(reader.sock, server_side=True)
            if line == "DATA" and reply.startswith(b"354"):
                self.messages.append(reader.message())
                self.lines.append(Line(connection, reader.reads, "."))
                if not self._say(reader.sock, self._answer(connection, ".", b"250 2.0.0 queued")):
                    return
        self.hung_up.append(connection)

    def _default(self, line: str) -> bytes:
        verb = line[:4].upper()
        if verb == "EHLO":
            return b"\r\n".join(
                [b"250-peer.test", *(f"250-{e}".encode() for e in self.extensions), b"250 OK"]
            )
        defaults = {"DATA": b"354 go ahead", "QUIT": b"221 2.0.0 bye", "STAR": b"220 2.0.0 ready for TLS"}
        return defaults.get(verb, b"250 2.0.0 ok")

    @staticmethod
    def _say(sock: socket.socket, reply: bytes) -> bool:
        """Send a reply; False when the session ends here (CLOSE, QUIT)."""
        if reply == CLOSE:
            return False
        if reply != SILENCE:
            sock.sendall(reply + b"\r\n")
        return not reply.startswith(b"221")


def _canonical(line: str) -> str:
    """Verbs and keywords in capitals ("mail from:<a>" -> "MAIL FROM:<a>"): SMTP ignores their case."""
    head, colon, rest = line.partition(":")
    return head.upper() + colon + rest if colon else line[:4].upper() + line[4:]


class _Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer, self.reads = sock, b"", 0

    def raw_line(self) -> bytes | None:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
            self.reads += 1
        raw, self.buffer = self.buffer.split(b"\r\n", 1)
        return raw

    def line(self) -> str | None:
        raw = self.raw_line()
        return None if raw is None else raw.decode("ascii", "replace")

    def message(self) -> bytes:
        """Up to the lone dot, as sent on the wire (still dot-stuffed)."""
        lines = []
        while (raw := self.raw_line()) not in (None, b"."):
            lines.append(raw + b"\r\n")
        return b"".join(lines)


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    started: list[Peer] = []

    def start(**kw: Any) -> Peer:
        started.append(Peer(**kw))
        return started[-1]

    yield start
    for peer in started:
        peer.stop()


def smtp_config(port: int, **kw: Any) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, from_address=SENDER, timeout=kw.pop("timeout", 5), **kw)


def send(port: int, *recipients: str, data: bytes = MESSAGE, **kw: Any) -> list[Result]:
    """Each recipient in turn on one SmtpConnection, closed politely at the end."""
    with SmtpConnection(smtp_config(port, **kw)) as smtp:
        return [smtp.send(SENDER, rcpt, data) for rcpt in recipients]


def refuse(server: SmtpServer, stage: str, reply: str, address: str = "bad@example.com") -> None:
    server.handler.rule = lambda st, addr: reply if st == stage and addr == address else None


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Tls:
    server: ssl.SSLContext  # a certificate for 127.0.0.1 from a throw-away CA
    ca_file: str  # that CA, for smtp.ca_file


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    return Tls(server, str(ca_file))


@pytest.fixture(params=[False, True], ids=["plain", "pipelined"])
def aiosmtpd(request: pytest.FixtureRequest) -> Iterator[SmtpServer]:
    server = SmtpServer(pipelining=request.param).start()
    yield server
    server.stop()


# ---------------------------------------------------------------- what a reply means, by stage


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        # Postfix's access map: a policy refusal (5.7.1) at RCPT is about that recipient.
        ("554 5.7.1 <bad@example.com>: Recipient address rejected: Access denied", Outcome.PERMANENT),
        ("550 5.1.1 user unknown", Outcome.PERMANENT),
        ("552 5.2.2 mailbox full", Outcome.PERMANENT),
        ("500 5.5.2 syntax error", Outcome.PERMANENT),
        ("553 bad address", Outcome.PERMANENT),
        ("450 4.2.1 mailbox busy", Outcome.TEMPORARY),
        ("452 4.5.3 too many recipients", Outcome.TEMPORARY),
    ],
)
def test_a_reply_to_rcpt_concerns_that_recipient_and_the_next_ones_still_go(
    aiosmtpd: SmtpServer, reply: str, outcome: Outcome
) -> None:
    refuse(aiosmtpd, "RCPT", reply)
    results = send(aiosmtpd.port, "ada@example.com", "bad@example.com", "zoe@example.com")
    assert results[1] == Result(outcome, reply)
    # The refused transaction was reset (else "503 nested MAIL") on the same connection.
    assert [r.outcome for r in results[::2]] == [Outcome.SENT, Outcome.SENT]
    assert [r.recipients for r in aiosmtpd.received] == [["ada@example.com"], ["zoe@example.com"]]
    assert aiosmtpd.received[0].peer == aiosmtpd.received[1].peer


@pytest.mark.parametrize("code", [530, 534, 535, 538])
@pytest.mark.parametrize("enhanced", ["", " 5.7.0"])
def test_an_authentication_reply_stops_the_run_even_at_rcpt(
    aiosmtpd: SmtpServer, code: int, enhanced: str
) -> None:
    reply = f"{code}{enhanced} authentication required"
    refuse(aiosmtpd, "RCPT", reply)
    assert send(aiosmtpd.port, "bad@example.com") == [Result(Outcome.FATAL, f"RCPT TO: {reply}")]


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("550 sender rejected", Outcome.FATAL),  # no enhanced code
        ("553 5.1.8 <digest@example.org>: Sender address rejected: Domain not found", Outcome.FATAL),
        ("554 5.7.1 <digest@example.org>: Sender address rejected: Access denied", Outcome.FATAL),
        ("552 5.2.2 sender over quota", Outcome.FATAL),
        ("451 4.3.0 try again later", Outcome.TEMPORARY),
    ],
)
def test_a_refused_sender_concerns_every_message_so_the_run_stops(
    aiosmtpd: SmtpServer, reply: str, outcome: Outcome
) -> None:
    aiosmtpd.handler.rule = lambda stage, addr: reply if stage == "MAIL" else None
    [result] = send(aiosmtpd.port, "ada@example.com")
    expected = f"MAIL FROM: {reply}" if outcome is Outcome.FATAL else reply
    assert result == Result(outcome, expected)
    assert aiosmtpd.received == []


@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        ("552 5.2.2 mailbox full", Outcome.PERMANENT),  # that mailbox: that reader only
        ("550 5.1.1 mailbox unavailable", Outcome.PERMANENT),
        ("554 5.7.1 message refused as spam", Outcome.FATAL),  # the same message goes to all
        ("550 5.7.1 sender not allowed", Outcome.FATAL),
        ("554 5.6.0 message content rejected", Outcome.FATAL),
        ("554 message rejected", Outcome.FATAL),
        ("552 message too large", Outcome.FATAL),
        ("451 4.7.1 greylisted, try again", Outcome.TEMPORARY),
    ],
)
def test_a_message_refused_after_its_data_is_fatal_unless_the_code_names_the_mailbox(
    aiosmtpd: SmtpServer, reply: str, outcome: Outcome
) -> None:
    refuse(aiosmtpd, "DATA", reply)
    results = send(aiosmtpd.port, "bad@example.com", "zoe@example.com")
    assert results[0] == Result(outcome, f"DATA: {reply}" if outcome is Outcome.FATAL else reply)
    assert results[1].outcome is Outcome.SENT


@pytest.mark.parametrize("pipelining", [(), ("PIPELINING",)], ids=["plain", "pipelined"])
@pytest.mark.parametrize(
    ("reply", "outcome"),
    [
        (b"554 5.3.0 no DATA now", Outcome.FATAL),
        (b"554", Outcome.FATAL),
        (b"451 4.3.0 later", Outcome.TEMPORARY),
    ],
)
def test_the_data_command_itself_refused(
    peers: Callable[..., Peer], pipelining: tuple[str, ...], reply: bytes, outcome: Outcome
) -> None:
    peer = peers(answers={"DATA": reply}, extensions=pipelining)
    [result] = send(peer.port, "ada@example.com")
    text = reply.decode()
    assert result == Result(outcome, f"DATA: {text}" if outcome is Outcome.FATAL else text)
    assert peer.messages == [] and "." not in peer.commands()
    assert peer.verbs()[-2:] == ["RSET", "QUIT"]


@pytest.mark.parametrize("pipelining", [(), ("PIPELINING",)], ids=["plain", "pipelined"])
def test_a_recipient_the_server_will_forward_251_is_sent(
    peers: Callable[..., Peer], pipelining: tuple[str, ...]
) -> None:
    peer = peers(answers={"RCPT": b"251 2.1.5 user not local; will forward"}, extensions=pipelining)
    assert send(peer.port, "ada@example.com") == [Result(Outcome.SENT, "250 2.0.0 queued")]


@pytest.mark.parametrize(
    ("pipelining", "verbs"),
    [
        ((), ["EHLO", "MAIL", "RSET", "QUIT"]),
        (("PIPELINING",), ["EHLO", "MAIL", "RCPT", "DATA", ".", "RSET", "QUIT"]),  # DATA taken: ended empty
    ],
    ids=["plain", "pipelined"],
)
def test_without_pipelining_nothing_follows_a_refused_sender_but_rset(
    peers: Callable[..., Peer], pipelining: tuple[str, ...], verbs: list[str]
) -> None:
    peer = peers(answers={"MAIL": b"550 5.7.1 sender refused"}, extensions=pipelining)
    assert send(peer.port, "ada@example.com") == [
        Result(Outcome.FATAL, "MAIL FROM: 550 5.7.1 sender refused")
    ]
    assert peer.verbs() == verbs


def test_before_data_runs_once_after_the_envelope_and_its_result_calls_the_message_off(
    aiosmtpd: SmtpServer,
) -> None:
    calls: list[str] = []

    def last_word(answer: Result | None) -> Callable[[], Result | None]:
        def hook() -> Result | None:
            calls.append("hook")
            return answer

        return hook

    left = Result(Outcome.SKIPPED, "subscriber no longer active")
    with SmtpConnection(smtp_config(aiosmtpd.port)) as smtp:
        results = [
            smtp.send(SENDER, "gone@example.com", MESSAGE, before_data=last_word(left)),
            smtp.send(SENDER, "stays@example.com", MESSAGE, before_data=last_word(None)),
        ]
    assert results[0] == left and results[1].outcome is Outcome.SENT
    assert calls == ["hook", "hook"]
    assert [r.recipients for r in aiosmtpd.handler.received] == [["stays@example.com"]]


def test_a_refused_recipient_still_gives_the_hook_its_say_and_its_answer_wins(aiosmtpd: SmtpServer) -> None:
    # A called-off message is not counted against its recipient (no bounce for a reader
    # who has just left), even when the relay also refused the address.
    refuse(aiosmtpd, "RCPT", "550 5.1.1 user unknown")
    left = Result(Outcome.SKIPPED, "subscriber no longer active")
    with SmtpConnection(smtp_config(aiosmtpd.port)) as smtp:
        result = smtp.send(SENDER, "bad@example.com", MESSAGE, before_data=lambda: left)
        assert smtp.send(SENDER, "ada@example.com", MESSAGE).outcome is Outcome.SENT
    expected = left if aiosmtpd.pipelining else Result(Outcome.PERMANENT, "550 5.1.1 user unknown")
    assert result == expected  # without PIPELINING the refusal comes first: no DATA, no hook


def test_a_busy_reply_made_without_a_server_name_still_reads_well() -> None:
    busy = SmtpBusy("421 4.7.0 too many connections")
    assert str(busy) == "The SMTP server cannot take a connection now: 421 4.7.0 too many connections"
    assert busy.reply == "421 4.7.0 too many connections" and not isinstance(busy, SmtpFatal)


def test_a_sender_refused_with_a_plain_550_stops_the_run_and_bounces_nobody(seeded, cfg, smtp_server) -> None:
    smtp_server.handler.rule = lambda stage, addr: "550 sender rejected" if stage == "MAIL" else None
    [summary] = campaign.send_now(seeded, cfg, datetime(2026, 11, 30, 7, 0, tzinfo=UTC))
    assert summary.stopped == "MAIL FROM: 550 sender rejected" and not summary.finished
    with seeded.session() as s:
        assert set(s.scalars(select(Delivery.status))) == {"queued"}
        assert {(sub.status, sub.bounce_count) for sub in s.scalars(select(Subscriber))} == {("active", 0)}


# ---------------------------------------------------------------- replies as text


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ({"RCPT": b"554"}, Result(Outcome.PERMANENT, "554")),  # a bare code, no text
        ({"MAIL": b"550"}, Result(Outcome.FATAL, "MAIL FROM: 550")),
        ({".": b"554"}, Result(Outcome.FATAL, "DATA: 554")),
        (
            {"RCPT": b"550 5.1.1 \xff\xfeunknown caf\xe9"},
            Result(Outcome.PERMANENT, "550 5.1.1 \ufffd\ufffdunknown caf\ufffd"),
        ),
        (
            {"RCPT": b"550-5.1.1 no such user\r\n550 5.1.1   see  the docs"},
            Result(Outcome.PERMANENT, "550 5.1.1 no such user 5.1.1 see the docs"),
        ),
        (
            {".": b"250-2.0.0 queued\r\n250 2.0.0 as 12AB"},
            Result(Outcome.SENT, "250 2.0.0 queued 2.0.0 as 12AB"),
        ),
    ],
)
def test_odd_replies_are_one_line_of_text(
    peers: Callable[..., Peer], answers: dict[str, bytes], expected: Result
) -> None:
    peer = peers(answers=answers)
    assert send(peer.port, "ada@example.com") == [expected]


def test_a_very_long_reply_is_cut_to_a_thousand_characters(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"RCPT": b"550 5.1.1 " + b"x" * 1500})
    [result] = send(peer.port, "ada@example.com")
    assert result.reply == ("550 5.1.1 " + "x" * 1500)[:1000]


# ---------------------------------------------------------------- hang-ups and silence


def test_a_421_ends_the_connection_and_the_next_message_opens_a_new_one(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"RCPT TO:<bad@example.com>": b"421 4.3.2 mx.test closing, try later"})
    with SmtpConnection(smtp_config(peer.port)) as smtp:
        first = smtp.send(SENDER, "bad@example.com", MESSAGE)
        assert first == Result(Outcome.TEMPORARY, "421 4.3.2 mx.test closing, try later")
        assert smtp.conn is None
        assert smtp.send(SENDER, "zoe@example.com", MESSAGE).outcome is Outcome.SENT
    assert peer.connections == 2 and peer.verbs(1) == ["EHLO", "MAIL", "RCPT"]  # no RSET, no QUIT
    assert [line.connection for line in peer.lines if line.text == "."] == [2]


def test_a_connection_dropped_once_is_reopened_and_the_message_sent(peers: Callable[..., Peer]) -> None:
    peer = peers(
        script=lambda connection, line: CLOSE if connection == 1 and line.startswith("MAIL") else None
    )
    assert send(peer.port, "ada@example.com") == [Result(Outcome.SENT, "250 2.0.0 queued")]
    assert peer.connections == 2 and len(peer.messages) == 1


def test_a_connection_lost_again_on_the_reconnect_is_temporary(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"MAIL": CLOSE})
    [result] = send(peer.port, "ada@example.com")
    assert result == Result(Outcome.TEMPORARY, "connection lost: Connection unexpectedly closed")
    assert peer.connections == 2  # one reconnect, not a loop


def test_a_garbled_reply_counts_as_a_lost_connection_and_is_shown_as_text(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"RCPT": b"xyz \xffgarbled"})
    [result] = send(peer.port, "ada@example.com")
    assert result == Result(Outcome.TEMPORARY, "connection lost: unreadable reply: \ufffdgarbled")
    # smtplib still thinks that session open: it is closed without a QUIT into the garble.
    assert peer.verbs(1) == peer.verbs(2) == ["EHLO", "MAIL", "RCPT"]


@pytest.mark.parametrize("code", [b"199", b"600"])
def test_a_reply_code_outside_smtp_is_unreadable(peers: Callable[..., Peer], code: bytes) -> None:
    peer = peers(answers={"RCPT": code + b" odd"})
    [result] = send(peer.port, "ada@example.com")
    assert result == Result(Outcome.TEMPORARY, f"connection lost: {code.decode()} odd")
    assert peer.connections == 2


@pytest.mark.parametrize("code", [b"200", b"599"])
def test_a_reply_code_at_the_edges_of_smtp_is_read(peers: Callable[..., Peer], code: bytes) -> None:
    peer = peers(answers={"RCPT": code + b" odd"})
    [result] = send(peer.port, "ada@example.com")
    assert result.reply == f"{code.decode()} odd" and peer.connections == 1


def test_a_relay_that_stops_answering_mid_transaction_is_temporary_and_quick(
    peers: Callable[..., Peer],
) -> None:
    peer = peers(answers={"MAIL": SILENCE})
    started = time.monotonic()
    [result] = send(peer.port, "ada@example.com", timeout=0.3)
    assert result == Result(Outcome.TEMPORARY, "connection lost: no reply within 0.3 s")
    assert time.monotonic() - started < 3 and peer.connections == 2
    assert peer.verbs(1) == peer.verbs(2) == ["EHLO", "MAIL"]  # a broken session gets no QUIT


def test_a_relay_that_never_greets_is_fatal_and_quick(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"GREETING": SILENCE})
    started = time.monotonic()
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, timeout=0.3)).open()
    assert str(caught.value) == f"SMTP server 127.0.0.1:{peer.port}: no reply at greeting within 0.3 s"
    assert not isinstance(caught.value, SmtpBusy) and time.monotonic() - started < 2


def test_a_relay_that_stops_answering_at_login_is_fatal(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"AUTH": SILENCE}, extensions=("AUTH PLAIN",))
    with pytest.raises(SmtpFatal, match=r"no reply at login within 0.3 s$"):
        SmtpConnection(smtp_config(peer.port, timeout=0.3, username="editor", password="pw")).open()


# ---------------------------------------------------------------- opening: busy or fatal


@pytest.mark.parametrize(
    ("answers", "reply"),
    [
        (
            {"GREETING": b"421 4.7.0 mx.example: too many connections from 127.0.0.1"},
            "421 4.7.0 mx.example: too many connections from 127.0.0.1",
        ),
        ({"GREETING": b"450 busy \xff"}, "450 busy \ufffd"),
        ({"GREETING": b"400 4.0.0 try later"}, "400 4.0.0 try later"),
        ({"GREETING": CLOSE}, "connection closed by the server at greeting"),
        ({"EHLO": b"421 4.3.2 shutting down"}, "421 4.3.2 shutting down"),
        ({"EHLO": CLOSE}, "connection closed by the server at EHLO"),
        ({"EHLO": b"502 5.5.1 no EHLO", "HELO": b"421 4.3.2 busy"}, "421 4.3.2 busy"),
        (
            {"STARTTLS": b"454 4.7.0 TLS not available due to local problem"},
            "454 4.7.0 TLS not available due to local problem",
        ),
        (
            {"AUTH": b"454 4.7.0 Temporary authentication failure"},
            "454 4.7.0 Temporary authentication failure",
        ),
    ],
)
def test_a_relay_that_cannot_take_the_connection_now_is_busy_not_fatal(
    peers: Callable[..., Peer], answers: dict[str, bytes], reply: str
) -> None:
    peer = peers(answers=answers, extensions=("STARTTLS", "AUTH PLAIN"))
    security = "starttls" if "STARTTLS" in answers else "none"
    smtp = SmtpConnection(smtp_config(peer.port, security=security, username="editor", password="pw"))
    with pytest.raises(SmtpBusy) as caught:
        smtp.send(SENDER, "ada@example.com", MESSAGE)  # send() opens, so it can be busy too
    assert caught.value.reply == reply and not isinstance(caught.value, SmtpFatal)
    assert str(caught.value) == f"SMTP server 127.0.0.1:{peer.port} cannot take a connection now: {reply}"
    assert smtp.conn is None and "MAIL" not in peer.verbs()


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        (
            {"GREETING": b"554 5.3.2 no SMTP service here"},
            "refused the session at greeting: 554 5.3.2 no SMTP service here",
        ),
        (
            {"GREETING": b"SSH-2.0-OpenSSH_9.2"},
            "refused the session at greeting: unreadable reply: 2.0-OpenSSH_9.2",
        ),
        (
            {"EHLO": b"554 5.7.1 go away", "HELO": b"554 5.7.1 go away"},
            "refused the session at EHLO: 554 5.7.1 go away",
        ),
        (
            {"EHLO": b"500 5.5.1 what", "HELO": b"500 5.5.1 what"},
            "refused the session at EHLO: 500 5.5.1 what",
        ),
        (
            {"STARTTLS": b"554 5.7.3 no TLS for you"},
            "refused the session at STARTTLS: 554 5.7.3 no TLS for you",
        ),
        ({"AUTH": CLOSE}, "closed the connection at login"),
    ],
)
def test_a_relay_that_refuses_the_session_is_fatal_with_the_reply_as_text(
    peers: Callable[..., Peer], answers: dict[str, bytes], error: str
) -> None:
    peer = peers(answers=answers, extensions=("STARTTLS", "AUTH PLAIN"))
    security = "starttls" if "STARTTLS" in answers else "none"
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, security=security, username="editor", password="pw")).open()
    assert str(caught.value) == f"SMTP server 127.0.0.1:{peer.port} {error}"


def test_a_refused_login_names_the_user_and_shows_the_reply(peers: Callable[..., Peer]) -> None:
    peer = peers(
        answers={"AUTH": b"535 5.7.8 Authentication credentials invalid"}, extensions=("AUTH PLAIN",)
    )
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, username="editor", password="pw")).open()
    assert str(caught.value) == (
        f"SMTP login as 'editor' at 127.0.0.1:{peer.port} refused: "
        "535 5.7.8 Authentication credentials invalid"
    )


def test_a_login_the_relay_does_not_offer_is_fatal(peers: Callable[..., Peer]) -> None:
    peer = peers()
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, username="editor", password="pw")).open()
    assert str(caught.value) == (
        f"SMTP server 127.0.0.1:{peer.port} refused the session at login: "
        "SMTP AUTH extension not supported by server."
    )


def test_a_login_that_succeeds_then_sends(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"AUTH": b"235 2.7.0 Authentication successful"}, extensions=("AUTH PLAIN",))
    assert send(peer.port, "ada@example.com", username="editor", password="pw")[0].outcome is Outcome.SENT
    assert peer.verbs() == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    [auth] = [c for c in peer.commands() if c.startswith("AUTH")]
    assert base64.b64decode(auth.split()[2]) == b"\0editor\0pw"


@pytest.mark.parametrize(
    "answers",
    [{"EHLO": b"421 4.3.2 busy"}, {"EHLO": b"554 no", "HELO": b"554 no"}, {"AUTH": b"535 5.7.8 bad"}],
    ids=["busy", "refused", "login"],
)
def test_a_session_that_could_not_be_set_up_is_closed_not_left_open(
    peers: Callable[..., Peer], answers: dict[str, bytes]
) -> None:
    peer = peers(answers=answers, extensions=("AUTH PLAIN",))
    with pytest.raises((SmtpBusy, SmtpFatal)) as caught:
        SmtpConnection(smtp_config(peer.port, username="editor", password="pw")).open()
    # Closed at once, not when the garbage collector frees it: a caller may keep the error
    # (and with its traceback the half-open connection) for as long as it likes.
    _wait_for(lambda: peer.hung_up == [1], "the client to close its socket", timeout=2)
    assert caught.value is not None


def test_starttls_that_is_not_offered_is_fatal_before_any_mail(peers: Callable[..., Peer]) -> None:
    peer = peers()
    with pytest.raises(SmtpFatal, match=f"^SMTP server 127.0.0.1:{peer.port} does not offer STARTTLS$"):
        SmtpConnection(smtp_config(peer.port, security="starttls")).open()
    assert peer.verbs() == ["EHLO"]


@pytest.mark.parametrize("refusal", [b"500 5.5.1 command unrecognized", b"502 5.5.1 EHLO not implemented"])
def test_a_server_that_refuses_ehlo_gets_helo_and_no_pipelining(
    peers: Callable[..., Peer], refusal: bytes
) -> None:
    peer = peers(answers={"EHLO": refusal}, extensions=("PIPELINING",))
    assert send(peer.port, "ada@example.com")[0].outcome is Outcome.SENT
    assert peer.verbs() == ["EHLO", "HELO", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    reads = [line.read for line in peer.lines if line.text[:4] in ("MAIL", "RCPT", "DATA")]
    assert len(set(reads)) == 3


def test_nothing_listening_is_fatal_unreachable() -> None:
    port = free_port()
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(port)).open()
    assert str(caught.value) == f"SMTP server 127.0.0.1:{port} unreachable: Connection refused"
    assert not isinstance(caught.value, SmtpBusy)


def test_a_relay_that_never_accepts_the_connection_is_unreachable_and_quick() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=0) as full:
        port = full.getsockname()[1]
        waiting = [socket.socket() for _ in range(3)]  # fill its accept queue: SYNs go unanswered
        for sock in waiting:
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
        started = time.monotonic()
        with pytest.raises(SmtpFatal) as caught:
            SmtpConnection(smtp_config(port, timeout=0.3)).open()
        for sock in waiting:
            sock.close()
    assert str(caught.value) == f"SMTP server 127.0.0.1:{port} unreachable: timed out"
    assert time.monotonic() - started < 2


def test_starttls_upgrades_the_session_and_says_ehlo_again(peers: Callable[..., Peer], tls: Tls) -> None:
    peer = peers(extensions=("STARTTLS",), tls=tls.server)
    assert (
        send(peer.port, "ada@example.com", security="starttls", ca_file=tls.ca_file)[0].outcome
        is Outcome.SENT
    )
    assert peer.verbs() == ["EHLO", "STARTTLS", "EHLO", "MAIL", "RCPT", "DATA", ".", "QUIT"]


def test_implicit_tls_delivers(peers: Callable[..., Peer], tls: Tls) -> None:
    peer = peers(tls=tls.server, implicit_tls=True)
    assert send(peer.port, "ada@example.com", security="ssl", ca_file=tls.ca_file)[0].outcome is Outcome.SENT


def test_implicit_tls_to_a_relay_that_never_greets_is_fatal_and_quick(
    peers: Callable[..., Peer], tls: Tls
) -> None:
    peer = peers(answers={"GREETING": SILENCE}, tls=tls.server, implicit_tls=True)
    started = time.monotonic()
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, security="ssl", ca_file=tls.ca_file, timeout=0.3)).open()
    assert str(caught.value) == f"SMTP server 127.0.0.1:{peer.port}: no reply at greeting within 0.3 s"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("security", ["ssl", "starttls"])
def test_a_certificate_from_an_unknown_ca_is_fatal(
    peers: Callable[..., Peer], tls: Tls, security: str
) -> None:
    peer = peers(extensions=("STARTTLS",), tls=tls.server, implicit_tls=security == "ssl")
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, security=security)).open()  # the system's CAs only
    assert str(caught.value) == (
        f"TLS certificate of 127.0.0.1:{peer.port} not trusted: unable to get local issuer certificate"
    )


def test_implicit_tls_to_a_plain_text_server_is_fatal(peers: Callable[..., Peer]) -> None:
    peer = peers()
    with pytest.raises(SmtpFatal) as caught:
        SmtpConnection(smtp_config(peer.port, security="ssl")).open()
    # OpenSSL's reason, one word: not the Python exception.
    assert re.fullmatch(rf"TLS with 127\.0\.0\.1:{peer.port} failed: [A-Z_]+", str(caught.value)), (
        caught.value
    )


def test_a_ca_file_that_cannot_be_read_is_fatal(tmp_path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(SmtpFatal, match=f"^smtp.ca_file '{missing}': cannot load: "):
        SmtpConnection(smtp_config(free_port(), security="ssl", ca_file=missing)).open()


# ---------------------------------------------------------------- the session


def test_with_pipelining_mail_rcpt_and_data_go_out_in_one_write(peers: Callable[..., Peer]) -> None:
    peer = peers(extensions=("PIPELINING",))
    assert (
        send(peer.port, "ada@example.com", "zoe@example.com")
        == [Result(Outcome.SENT, "250 2.0.0 queued")] * 2
    )
    reads = [line.read for line in peer.lines if line.text[:4] in ("MAIL", "RCPT", "DATA")]
    # One recv() brought each message's three commands: the client did not wait in between.
    assert reads[0] == reads[1] == reads[2] != reads[3] == reads[4] == reads[5]


def test_without_pipelining_each_command_waits_for_its_reply(peers: Callable[..., Peer]) -> None:
    peer = peers()
    assert send(peer.port, "ada@example.com")[0].outcome is Outcome.SENT
    reads = [line.read for line in peer.lines if line.text[:4] in ("MAIL", "RCPT", "DATA")]
    assert len(reads) == len(set(reads)) == 3


def test_data_accepted_after_a_refused_recipient_is_ended_empty_and_reset(peers: Callable[..., Peer]) -> None:
    # RFC 2920 wants DATA refused when no recipient was accepted; a server that takes it
    # anyway gets an empty message end, then RSET, and the next message goes through.
    peer = peers(answers={"RCPT TO:<bad@example.com>": b"550 5.1.1 unknown"}, extensions=("PIPELINING",))
    results = send(peer.port, "bad@example.com", "zoe@example.com")
    assert results == [
        Result(Outcome.PERMANENT, "550 5.1.1 unknown"),
        Result(Outcome.SENT, "250 2.0.0 queued"),
    ]
    assert peer.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", ".", "RSET", "MAIL", "RCPT", "DATA", ".", "QUIT"]
    assert peer.messages == [b"", MESSAGE]


@pytest.mark.parametrize("reset", [b"500 5.5.1 what RSET", CLOSE, SILENCE])
def test_a_session_that_cannot_reset_is_dropped_and_the_next_message_opens_another(
    peers: Callable[..., Peer], reset: bytes
) -> None:
    peer = peers(answers={"RCPT TO:<bad@example.com>": b"550 5.1.1 unknown", "RSET": reset})
    results = send(peer.port, "bad@example.com", "zoe@example.com", timeout=0.3)
    assert [r.outcome for r in results] == [Outcome.PERMANENT, Outcome.SENT]
    assert peer.connections == 2 and peer.verbs(1) == ["EHLO", "MAIL", "RCPT", "RSET"]


@pytest.mark.parametrize(
    "data",
    [
        b".first line starts with a dot\r\nmiddle\r\n.\r\n..two dots\r\nlast line\r\n",
        b"no final line break\r\n.dot",
        # Dots only inside lines, then one at a line start: after 300 dots (past the
        # ones looked at one by one) and after 3 (found by looking).
        b"Subject: a.b\r\n\r\n" + b"x." * 300 + b"\r\n.starts\r\n",
        b"Subject: a.b\r\n\r\nx.y.z\r\n.starts\r\n",
        b"Subject: a.b\r\n\r\nno line starts with a dot. x.y\r\n",
    ],
)
def test_the_message_is_dot_stuffed_and_ended_once(peers: Callable[..., Peer], data: bytes) -> None:
    peer = peers()
    assert send(peer.port, "ada@example.com", data=data)[0].outcome is Outcome.SENT
    stuffed = (
        b"." + data.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b".")
        else data.replace(b"\r\n.", b"\r\n..")
    )
    assert peer.messages == [stuffed if stuffed.endswith(b"\r\n") else stuffed + b"\r\n"]
    assert peer.verbs()[-2:] == [".", "QUIT"]


def test_a_message_round_trips_through_a_real_server(aiosmtpd: SmtpServer) -> None:
    data = b"Subject: dots\r\n\r\n.leading\r\n..double\r\n.\r\nend\r\n"
    assert send(aiosmtpd.port, "ada@example.com", data=data)[0].outcome is Outcome.SENT
    assert aiosmtpd.received[0].data == data and aiosmtpd.received[0].sender == SENDER


@pytest.mark.parametrize(
    "recipient",
    [
        "a@example.com>\r\nRCPT TO:<victim@example.com",
        "a@example.com\nRCPT TO:<victim@example.com>",
        "<a@example.com>",
        "a>b@example.com",
        "zoë@example.com",
        "a\tb@example.com",
    ],
)
def test_a_recipient_address_that_could_forge_a_command_is_never_sent(
    peers: Callable[..., Peer], recipient: str
) -> None:
    peer = peers()
    [result] = send(peer.port, recipient)
    assert result == Result(Outcome.PERMANENT, f"recipient address {recipient!r} is not usable (not sent)")
    assert peer.verbs() == ["EHLO", "QUIT"]


def test_a_sender_address_that_could_forge_a_command_stops_the_run(peers: Callable[..., Peer]) -> None:
    peer = peers()
    sender = "digest@example.org>\r\nRCPT TO:<victim@example.com"
    with SmtpConnection(smtp_config(peer.port)) as smtp:
        result = smtp.send(sender, "ada@example.com", MESSAGE)
    assert result == Result(Outcome.FATAL, f"MAIL FROM: sender address {sender!r} is not usable")
    assert peer.verbs() == ["EHLO", "QUIT"]


def test_plain_addresses_with_any_printable_characters_are_sent_as_they_are(
    peers: Callable[..., Peer],
) -> None:
    peer = peers()
    recipients = [
        "Xavier.X+news@example.com",
        "o'brien@example.com",
        "a!b#c$d%e&f*g=h?i^j_k`l{m|n}o~@example.com",
    ]
    assert [r.outcome for r in send(peer.port, *recipients)] == [Outcome.SENT] * 3
    assert [c for c in peer.commands() if c.startswith("RCPT")] == [f"RCPT TO:<{r}>" for r in recipients]
    assert f"MAIL FROM:<{SENDER}>" in peer.commands()


def test_closing_says_quit_and_a_broken_session_just_closes(peers: Callable[..., Peer]) -> None:
    peer = peers()
    smtp = SmtpConnection(smtp_config(peer.port))
    smtp.open()
    assert smtp.conn is not None and smtp.conn.sock is not None
    assert smtp.conn.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # no Nagle delay
    session = smtp.conn
    smtp.close()
    assert smtp.conn is None and session.sock is None and peer.verbs() == ["EHLO", "QUIT"]
    smtp.close()  # closing twice is harmless
    smtp.open()
    session = smtp.conn
    smtp.close(polite=False)
    assert smtp.conn is None and session is not None and session.sock is None and peer.verbs(2) == ["EHLO"]


def test_closing_a_session_the_server_already_ended_raises_nothing(peers: Callable[..., Peer]) -> None:
    peer = peers(answers={"QUIT": CLOSE})
    smtp = SmtpConnection(smtp_config(peer.port))
    smtp.open()
    peer.stop()  # the server goes away under the open session
    smtp.close()
    assert smtp.conn is None


def test_an_open_connection_is_reused_for_the_next_message(peers: Callable[..., Peer]) -> None:
    peer = peers()
    send(peer.port, "ada@example.com", "grace@example.com", "zoe@example.com")
    assert peer.connections == 1 and len(peer.messages) == 3


# ---------------------------------------------------------------- a real relay: Postfix


@pytest.fixture(scope="module")
def postfix() -> Iterator[Postfix]:
    with private_postfix(reject={REJECTED}) as relay:
        yield relay


def test_postfix_pipelines_and_its_access_map_refuses_one_recipient_without_ending_the_session(
    postfix: Postfix,
) -> None:
    with SmtpConnection(smtp_config(postfix.port)) as smtp:
        first = smtp.send(SENDER, "ada@example.com", MESSAGE)
        assert smtp.conn is not None and smtp.conn.has_extn("pipelining")
        session = smtp.conn
        refused = smtp.send(SENDER, REJECTED, MESSAGE)
        last = smtp.send(SENDER, "zoe@example.com", MESSAGE)
        assert smtp.conn is session  # the same connection throughout
    assert refused == Result(
        Outcome.PERMANENT, f"554 5.7.1 <{REJECTED}>: Recipient address rejected: Access denied"
    )
    assert first.outcome is last.outcome is Outcome.SENT
    assert first.reply.startswith("250 2.0.0 Ok: queued as ")
    # Postfix's own count of the session: the refused transaction was reset, then QUIT.
    _wait_for(lambda: "rset=1 quit=1" in postfix.log, "Postfix to log the session")
    assert "ehlo=1 mail=3 rcpt=2/3 data=2/3 rset=1 quit=1 commands=" in postfix.log
    postfix.wait_until_empty()
    _wait_for(lambda: "zoe@example.com" in postfix.delivered(), "Postfix to deliver")
    assert postfix.delivered()["ada@example.com"] == postfix.delivered()["zoe@example.com"] == 1
    assert REJECTED not in postfix.delivered()


def test_a_message_called_off_after_its_envelope_never_reaches_postfix_and_the_next_one_does(
    postfix: Postfix,
) -> None:
    # The engine's last check runs while Postfix answers MAIL, RCPT and DATA (pipelined):
    # once Postfix has said 354, only a dropped connection abandons the message.
    left = Result(Outcome.SKIPPED, "subscriber no longer active")
    with SmtpConnection(smtp_config(postfix.port)) as smtp:
        called_off = smtp.send(SENDER, "gone@example.com", MESSAGE, before_data=lambda: left)
        assert smtp.conn is None  # dropped, not ended with a "."
        after = smtp.send(SENDER, "stays@example.com", MESSAGE, before_data=lambda: None)
    assert called_off == left and after.outcome is Outcome.SENT
    _wait_for(lambda: "lost connection after DATA" in postfix.log, "Postfix to log the dropped session")
    postfix.wait_until_empty()
    _wait_for(lambda: "stays@example.com" in postfix.delivered(), "Postfix to deliver")
    assert "gone@example.com" not in postfix.delivered()


def test_postfix_over_its_connection_limit_answers_421_which_is_busy_not_fatal() -> None:
    with private_postfix(main_cf_extra={"smtpd_client_connection_count_limit": "1"}) as relay:
        first = SmtpConnection(smtp_config(relay.port))
        first.open()
        second = SmtpConnection(smtp_config(relay.port))
        with pytest.raises(SmtpBusy) as caught:
            second.send(SENDER, "ada@example.com", MESSAGE)
        assert caught.value.reply == f"421 4.7.0 {HOSTNAME} Error: too many connections from 127.0.0.1"
        assert "b'" not in str(caught.value) and second.conn is None
        first.close()

        def opens() -> bool:  # once Postfix has counted the first connection out
            with contextlib.suppress(SmtpBusy):
                second.open()
            return second.conn is not None

        _wait_for(opens, "a connection once the first one closed")
        assert second.send(SENDER, "ada@example.com", MESSAGE).outcome is Outcome.SENT
        second.close()


def test_postfix_message_rate_limit_is_a_temporary_refusal_at_mail_from() -> None:
    with private_postfix(main_cf_extra={"smtpd_client_message_rate_limit": "2"}) as relay:
        results = send(relay.port, "ada@example.com", "grace@example.com", "zoe@example.com")
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT, Outcome.TEMPORARY]
    assert results[2].reply == "450 4.7.1 Error: too much mail from 127.0.0.1"
