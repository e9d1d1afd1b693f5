"""Mailer's own SMTP receiver, the MX of the bounce domain: `mailer serve` runs it when
`[bounces] listen = "host:port"` is set. The same aiosmtpd Controller as the catcher
(mailer.catcher), with its own rules.

Invariants, and why they hold:
* **Never an open relay, never a spam sink.** RCPT accepts only addresses this key made,
  bounces+<token>@domain whose HMAC verifies (mailer.bounces.verp.delivery_of), and the bare
  bounce address, where feedback loops send ARF complaints; any other recipient is refused
  with 550 5.1.1 before a byte of data is taken, and nothing is ever sent on. MAIL accepts
  any sender: bounces come from the null sender <>, complaints from a real address.
* **One delivery per transaction, named by the envelope.** The VERP token given to the
  parser is that of the RCPT address, never one read from the content. A second RCPT with
  another token is deferred (452 4.5.3, RFC 5321 4.5.3.1.10), so the sending MTA delivers it
  in a transaction of its own and one bounce is never credited to two deliveries.
* **Bounces are not bounced.** Once the data is in, the answer is 250 whether or not it was
  a bounce or a complaint: a message that is not one, or cannot be read, is logged in one
  line and dropped. Refusing it would make the sending MTA write a bounce of the bounce
  (to <>, where it dies, or to a forged sender: backscatter).
* **Nothing lost to our own failure.** A database error answers 451 4.3.0, so the MTA keeps
  the message and tries again later; the ledger ignores a report it already holds (its
  event id), so a retry after a partly recorded message changes nothing twice.
* **Bounded, and quiet.** At most MAX_MESSAGE_BYTES per message (aiosmtpd refuses more, and
  advertises the SIZE); parsing and the database run on a worker thread, not on the event
  loop, so one slow transaction does not stall the other sessions. Every error of a session
  is one log line (handle_exception), never a traceback.

The Config is read once per SMTP command from the service's ConfigInForce (or a fixed
Config), so a reload that changes `[bounces] address` applies to the next RCPT; `listen`
itself is bound once, at start.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy.exc import SQLAlchemyError

from mailer.bounces import dsn, ledger, verp
from mailer.bounces.report import Source
from mailer.config import Config, ConfigInForce
from mailer.db import Database
from mailer.errors import ConfigError, MailerError, database_problem, is_dbapi_error
from mailer.models import utcnow
from mailer.tokens import Tokens, load_secret

log = logging.getLogger("mailer.bounces.receiver")

MAX_MESSAGE_BYTES = dsn.MAX_MESSAGE_BYTES  # what the parser reads at most
ACCEPTED = "250 2.0.0 Message accepted"
TRY_LATER = "451 4.3.0 Temporary failure, please try again later"


class _Handler:
    def __init__(self, db: Database, config: Config | ConfigInForce, tokens: Tokens) -> None:
        self.db = db
        self.config = config
        self.tokens = tokens

    def _cfg(self) -> Config:
        return self.config.current if isinstance(self.config, ConfigInForce) else self.config

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        cfg = self._cfg()
        token = verp.token_of(cfg, address)
        if token is not None and self.tokens.verp_delivery(token) is not None:
            taken = {t for t in (verp.token_of(cfg, a) for a in envelope.rcpt_tos) if t}
            if taken and token not in taken:
                return "452 4.5.3 One bounce address per message, send this one separately"
        elif not _is_bounce_address(cfg, address):
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        cfg = self._cfg()
        token = next((t for t in (verp.token_of(cfg, a) for a in envelope.rcpt_tos) if t), None)
        data = envelope.original_content or b""
        return await asyncio.to_thread(self._take, cfg, data, token, envelope.mail_from, envelope.rcpt_tos)

    def _take(self, cfg: Config, data: bytes, token: str | None, sender: str, recipients: list[str]) -> str:
        where = f"message from <{sender.strip('<>')}> to {', '.join(recipients)}"
        try:
            parsed = dsn.parse_mail(data, Source.MX, verp_token=token, received_at=utcnow())
        except Exception as exc:  # never, by contract; if it does, a bounce MX still never bounces
            log.warning("bounce receiver: %s dropped, unreadable: %s: %s", where, type(exc).__name__, exc)
            return ACCEPTED
        if not parsed.reports:
            level = logging.INFO if parsed.problem.startswith(dsn.NOT_A_BOUNCE) else logging.WARNING
            log.log(level, "bounce receiver: %s dropped: %s", where, parsed.problem or "no report in it")
            return ACCEPTED
        try:
            for report in parsed.reports:  # the ledger logs each one
                ledger.record(self.db, cfg, report, self.tokens)
        except (SQLAlchemyError, MailerError) as exc:
            return self._later(exc)
        except Exception as exc:
            if not is_dbapi_error(exc):
                raise
            return self._later(exc)
        return ACCEPTED

    def _later(self, exc: BaseException) -> str:
        problem = str(exc) if isinstance(exc, MailerError) else database_problem(exc, self.db.url)
        log.error("bounce receiver: %s; answered 451, the sender will retry", problem)
        return TRY_LATER

    async def handle_exception(self, error: Exception) -> str:
        log.error("bounce receiver: %s: %s; answered 451", type(error).__name__, error)
        return TRY_LATER


def _is_bounce_address(cfg: Config, address: str) -> bool:
    bounce = cfg.bounces.address.lower()
    return bool(bounce) and address.strip().strip("<>").lower() == bounce


class BounceReceiver:
    def __init__(
        self, db: Database, config: Config | ConfigInForce, tokens: Tokens, host: str, port: int
    ) -> None:
        self.controller = Controller(
            _Handler(db, config, tokens),
            hostname=host,
            port=port,
            data_size_limit=MAX_MESSAGE_BYTES,
            ready_timeout=10,
        )

    @property
    def port(self) -> int:
        return int(self.controller.port)

    def start(self) -> None:
        where = f"{self.controller.hostname}:{self.controller.port}"
        try:
            _check_free(self.controller.hostname, self.controller.port)
            self.controller.start()
        except (OSError, RuntimeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, PermissionError) and self.controller.port < 1024:
                reason += " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)"
            raise MailerError(f"bounce receiver cannot listen on {where}: {reason}") from None

    def stop(self) -> None:
        if self.controller.server is not None:
            self.controller.stop()


def _check_free(host: str, port: int) -> None:
    """Bind and let go each address the server will bind, so a taken port is an OSError now:
    aiosmtpd only reports it after its whole ready_timeout."""
    for family, kind, proto, _, address in socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            sock.bind(address)


def start_receiver(db: Database, config: Config | ConfigInForce) -> BounceReceiver | None:
    """The running receiver when `[bounces] listen` is set, else None. Raises ConfigError
    (no bounce address, no secret key) or MailerError (the port is taken), one line each."""
    cfg = config.current if isinstance(config, ConfigInForce) else config
    if not cfg.bounces.listen:
        return None
    if not cfg.bounces.address:
        raise ConfigError("[bounces] listen needs [bounces] address: the receiver takes mail for it alone")
    host, _, port = cfg.bounces.listen.rpartition(":")
    receiver = BounceReceiver(db, config, Tokens(load_secret(cfg.var_dir)), host.strip("[]"), int(port))
    receiver.start()
    log.info("bounce receiver on %s for %s", cfg.bounces.listen, cfg.bounces.address)
    return receiver
