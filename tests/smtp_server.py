"""A real SMTP server on loopback (aiosmtpd) for tests, which can misbehave on purpose."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    at: float = 0.0  # time.monotonic() when the server accepted it
    peer: tuple[str, int] | None = None  # the client's address and port: one per connection

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


# A rule gets (stage, address) with stage "MAIL", "RCPT" or "DATA" and returns an SMTP
# reply such as "451 4.3.0 try later" to refuse, None to accept as usual, or DROP to
# hang up on the client without a reply.
DROP = "DROP"
Rule = Callable[[str, str], str | None]


@dataclass
class Handler:
    received: list[Received] = field(default_factory=list)
    rule: Rule | None = None
    delay: float = 0.0  # seconds to wait before accepting each message
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _reply(self, stage: str, address: str) -> str | None:
        return self.rule(stage, address) if self.rule else None

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        refusal = self._reply("MAIL", address)
        if refusal:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        refusal = self._reply("RCPT", address)
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        refusal = self._reply("DATA", envelope.rcpt_tos[0] if envelope.rcpt_tos else "")
        if refusal:
            return refusal
        if self.delay:  # a relay that takes its time (per connection: the others go on)
            await asyncio.sleep(self.delay)
        with self.lock:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    time.monotonic(),
                    peer=tuple(session.peer) if session.peer else None,
                )
            )
        return "250 2.0.0 queued"

    def to(self, address: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if address in r.recipients]


@dataclass
class PipeliningHandler(Handler):
    """Also advertises PIPELINING (RFC 2920). aiosmtpd reads one command line at a time
    from its stream buffer, so it answers pipelined commands in order without change."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


def free_port() -> int:
    """A port nobody listens on now (aiosmtpd's readiness check cannot use port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SmtpServer:
    def __init__(self, pipelining: bool = False, **controller_kw: Any) -> None:
        self.pipelining = pipelining
        self.handler = PipeliningHandler() if pipelining else Handler()
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=free_port(), **controller_kw)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def stop(self) -> None:
        if self.controller.server is not None:
            self.controller.stop()

    @property
    def received(self) -> list[Received]:
        return self.handler.received
