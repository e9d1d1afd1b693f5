"""`mailer bounces`: what came back after delivery, newest first."""

from __future__ import annotations

from dataclasses import asdict

import click
from rich.table import Table

from mailer.bounces import ledger
from mailer.bounces.mailbox import poll_mailbox
from mailer.bounces.report import BounceKind
from mailer.cli.base import App, Listing, _when, command, listing
from mailer.errors import InputError


@click.group()
def bounces() -> None:
    """Bounces and spam complaints received (VERP, the bounce mailbox or MX, webhooks)."""


@command(bounces, "list")
@click.option("--kind", type=click.Choice([k.value for k in BounceKind]), help="Only this kind.")
@click.option("--limit", type=click.IntRange(1), default=200, show_default=True)
@listing
def bounces_list(app: App, kind: str | None, limit: int) -> Listing:
    """The newest bounces and complaints, with the reader and digest each was matched to."""
    rows = ledger.listed(app.db, limit, kind)
    table = Table("id", "received", "kind", "status", "reader", "digest", "source", "diagnostic", box=None)
    for r in rows:
        table.add_row(
            str(r.id),
            _when(r.received_at, app.cfg),  # type: ignore[arg-type]
            r.kind,
            r.status or "-",
            (r.email or "-") + ("" if r.matched else " (no match)"),
            f"#{r.digest_id}" if r.digest_id else "-",
            r.source,
            r.diagnostic or "-",
        )
    return Listing([asdict(r) for r in rows], table, f"{len(rows)} bounce(s) and complaint(s)")


@command(bounces, "poll")
def bounces_poll(app: App) -> None:
    """Read the bounce mailbox ([bounces] imap_url) now, as the service does on its own."""
    if not app.cfg.bounces.imap_url:
        raise InputError("no bounce mailbox: set [bounces] imap_url (and MAILER_BOUNCES_IMAP_PASSWORD)")
    report = poll_mailbox(app.db, app.cfg)
    click.echo(report.summary)
    for problem in report.problems:
        click.echo(f"  {problem}")
