"""`mailer doctor`: parse the options, run mailer.doctor's checks, print one line each.

The output is the shared `detail` decorator's: one "check: verdict  what was found; fix:
what to do" line per check (never cut to the terminal's width), or with --json the whole
report as one JSON object. The exit status is 1 when any check is an error, 0 otherwise
(warnings alone are 0): `_exit_1_on_error` exits after `detail` has printed.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from mailer.cli.base import App, Detail, command, detail

if TYPE_CHECKING:
    from mailer.doctor import Check

_FAILED = "mailer.doctor.failed"  # set in the click context's meta by the command


def _exit_1_on_error(fn: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)
        if click.get_current_context().meta.get(_FAILED):
            sys.exit(1)

    return wrapper


def _dns_server(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    from mailer.doctor import parse_dns_server

    try:
        return parse_dns_server(value) if value else None
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@command(None, "doctor")
@_exit_1_on_error
@detail
@click.option(
    "--dns-server",
    metavar="HOST[:PORT]",
    callback=_dns_server,
    help="Ask this DNS server (an IP address, port 53 unless given) instead of the system's resolver.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 60),
    default=5.0,
    show_default=True,
    help="Seconds each network step (relay, DNS, HTTPS) may take.",
)
def doctor_cmd(app: App, dns_server: tuple[str, int] | None, timeout: float) -> Detail:
    """Check the sending setup before anything is sent.

    The config, the database, the secret key, the relay (TLS, login, SIZE), DNS (SPF,
    DMARC, DKIM), the unsubscribe URL and Gmail's and Yahoo's bulk-sender rules: one line
    each, ok, warning or error, with the fix. Nothing is changed and nothing is sent (the
    relay session ends with QUIT). Exit status 1 when a check is an error."""
    from mailer import doctor

    report = doctor.run(app.config_path, doctor.Options(dns_server, timeout))
    click.get_current_context().meta[_FAILED] = report.failed
    lines = [(c.name, _line(c)) for c in report.checks]
    lines.append(("summary", report.summary()))
    return Detail(report.as_dict(), lines)


def _line(check: Check) -> str:
    text = f"{check.verdict:<7} {check.detail}"
    return f"{text}; fix: {check.fix}" if check.fix else text
