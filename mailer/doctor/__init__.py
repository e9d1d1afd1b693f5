"""`mailer doctor`: is the sending setup right, before anything is sent?

Each check is one `Check`: a name, a verdict (ok, warning, error), what was found and,
when something is wrong, the fix. `run` makes them all, in this order:

* here and in `local`: the config loads (a broken one is the only line, since nothing
  else can be checked without it), the database answers and its schema is at the head
  revision, the secret key that signs unsubscribe links is there and long enough;
* `relay`: a session with the relay as delivery opens it (mailer.smtp: EHLO, STARTTLS or
  implicit TLS with the certificate verified against smtp.ca_file, AUTH), then QUIT with
  nothing sent; and the size of the next digest's message against the relay's SIZE;
* `dns`: SPF (at the envelope sender's domain), DMARC and the DKIM public keys (at
  `<selector>._domainkey.<domain>`, compared with the private keys);
* `web`: the List-Unsubscribe URL is https and its page answers;
* `rules`: what Gmail's and Yahoo's bulk-sender rules (February 2024) require, and which
  of those the lines before show missing.

Nothing is changed: the database is not migrated or created, the secret key is not
generated, no message is sent (the session ends with QUIT before MAIL FROM).

The network checks (relay, DNS, HTTPS) run side by side, each step with `Options.timeout`
(5 s), so a dead relay, DNS server or web server costs one timeout, not one per check; the
first DNS query that times out ends the DNS checks ("not checked") instead of waiting for
each. `Options.dns_server` (`--dns-server HOST[:PORT]`) asks that server instead of the
system's resolver: a test zone, or a resolver one trusts more than the local one.

The embedded default (the built-in mail catcher as the relay) is a demo, not a broken
production setup: its relay line says so as a warning, and every DNS, unsubscribe-URL and
bulk-sender finding that would be an error is a warning instead, marked "(the catcher is
not a real relay)". So `mailer doctor` on a fresh checkout exits 0 and still shows what a
real setup would need; configure a relay (`[catcher] enabled = false`) and they count.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailer.config import Config

DEFAULT_TIMEOUT = 5.0
DEMO_NOTE = "(the catcher is not a real relay)"


class Verdict(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str  # "relay", "SPF", ...
    verdict: Verdict
    detail: str  # what was found
    fix: str = ""  # what to do, when the verdict is not ok

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "verdict": str(self.verdict), "detail": self.detail, "fix": self.fix}


def ok(name: str, detail: str) -> Check:
    return Check(name, Verdict.OK, detail)


def warning(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Verdict.WARNING, detail, fix)


def error(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, Verdict.ERROR, detail, fix)


@dataclass(frozen=True)
class Options:
    # (host, port) of the DNS server to ask; None: the system's resolver.
    dns_server: tuple[str, int] | None = None
    timeout: float = DEFAULT_TIMEOUT  # seconds, per network step


@dataclass(frozen=True)
class Report:
    checks: list[Check]
    demo: bool = False  # the relay is the built-in mail catcher

    @property
    def errors(self) -> int:
        return sum(c.verdict is Verdict.ERROR for c in self.checks)

    @property
    def warnings(self) -> int:
        return sum(c.verdict is Verdict.WARNING for c in self.checks)

    @property
    def failed(self) -> bool:
        return self.errors > 0

    def summary(self) -> str:
        if not self.errors and not self.warnings:
            return f"all {len(self.checks)} checks ok"
        return f"{self.errors} error(s), {self.warnings} warning(s) in {len(self.checks)} checks"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "errors": self.errors,
            "warnings": self.warnings,
            "catcher": self.demo,
            "checks": [c.as_dict() for c in self.checks],
        }


def parse_dns_server(value: str) -> tuple[str, int]:
    """ "127.0.0.1:5353", "127.0.0.1" (port 53), "[::1]:5353" or "::1"; ValueError else."""
    host, port = value.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r} is not HOST[:PORT]")
            port = rest[1:]
    elif host.count(":") == 1:
        host, port = host.split(":")
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: the DNS server must be an IP address (HOST[:PORT])") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r}: bad port {port!r}")
    return host, int(port)


def is_catcher(cfg: Config) -> bool:
    """The relay is the built-in mail catcher (the embedded default)."""
    from mailer.settings import is_loopback

    return cfg.catcher.enabled and cfg.smtp.port == cfg.catcher.port and is_loopback(cfg.smtp.host)


def run(config_path: str | None, options: Options = Options()) -> Report:
    """Every check, in the order of the module docstring; nothing is changed."""
    from mailer.doctor import dns, local, relay, rules, web

    cfg, loaded = local.config(config_path)
    if cfg is None:
        return Report([loaded])
    database = local.database(cfg)
    groups: list[Callable[[], list[Check]]] = [
        lambda: relay.checks(cfg, options, database_ok=database.verdict is Verdict.OK),
        lambda: dns.checks(cfg, options),
        lambda: [web.unsubscribe(cfg, options)],
    ]
    with ThreadPoolExecutor(len(groups), thread_name_prefix="doctor") as pool:
        found = [check for future in [pool.submit(g) for g in groups] for check in future.result()]
    checks = [loaded, database, local.secret_key(cfg), *found]
    checks.append(rules.bulk_senders(cfg, checks))
    demo = is_catcher(cfg)
    if demo:
        checks = [_as_demo(c) if c.name in rules.REAL_RELAY_CHECKS else c for c in checks]
    return Report(checks, demo)


def _as_demo(check: Check) -> Check:
    """An error that only matters with a real relay, as a warning (see the docstring)."""
    if check.verdict is not Verdict.ERROR:
        return check
    return dataclasses.replace(check, verdict=Verdict.WARNING, detail=f"{check.detail} {DEMO_NOTE}")
