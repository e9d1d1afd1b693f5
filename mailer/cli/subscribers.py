"""`mailer subscribers`: add, import, list, unsubscribe and forget subscribers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from mailer.cli.base import App, _json, _when, cli, command, out
from mailer.models import Subscriber
from mailer.subscribers import STATUSES, SubscriberStore


@cli.group()
def subscribers() -> None:
    """Add, import, list, unsubscribe and forget subscribers."""


def _subscriber_dict(s: Subscriber) -> dict[str, Any]:
    return {
        "id": s.id,
        "email": s.email,
        "name": s.name,
        "status": s.status,
        "created_at": s.created_at,
        "status_changed_at": s.status_changed_at,
        "bounce_count": s.bounce_count,
    }


@command(subscribers, "add")
@click.argument("email")
@click.option("--name", default="")
def subscribers_add(app: App, email: str, name: str) -> None:
    """Add one subscriber (syntax-checked, no DNS look-up)."""
    sub, created = SubscriberStore(app.db).add(email, name)
    if created:
        click.echo(f"added {sub.email}")
    else:
        click.echo(f"{sub.email} is already on the list ({sub.status}); nothing changed")


@command(subscribers, "import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--skip-invalid", is_flag=True, help="Import the good rows even if some are bad.")
def subscribers_import(app: App, file: str, skip_invalid: bool) -> None:
    """Import a CSV with columns email,name (all-or-nothing by default)."""
    report = SubscriberStore(app.db).import_csv(Path(file), skip_invalid)
    for err in report.errors:
        click.echo(err, err=True)
    if not report.imported:
        click.echo(
            f"error: {file}: {len(report.errors)} bad row(s); nothing imported "
            "(fix them, or use --skip-invalid)",
            err=True,
        )
        sys.exit(1)
    skipped = f", {len(report.errors)} bad row(s) skipped" if report.errors else ""
    click.echo(f"{report.added} added, {report.existing} already on the list{skipped}")


@command(subscribers, "list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--json", "as_json", is_flag=True)
def subscribers_list(app: App, status: str | None, as_json: bool) -> None:
    """List subscribers."""
    rows = SubscriberStore(app.db).list(status)
    if as_json:
        _json([_subscriber_dict(s) for s in rows])
        return
    table = Table("id", "email", "name", "status", "since", box=None)
    for s in rows:
        table.add_row(str(s.id), s.email, s.name, s.status, _when(s.status_changed_at, app.cfg))
    out.print(table)
    click.echo(f"{len(rows)} subscriber(s)")


@command(subscribers, "remove")
@click.argument("email")
def subscribers_remove(app: App, email: str) -> None:
    """Unsubscribe (the record stays, so an import will not resubscribe them)."""
    sub = SubscriberStore(app.db).unsubscribe(email)
    click.echo(f"{sub.email} unsubscribed")


@command(subscribers, "forget")
@click.argument("email")
def subscribers_forget(app: App, email: str) -> None:
    """Erase a person and their delivery records."""
    SubscriberStore(app.db).forget(email)
    click.echo(f"{email.strip()} forgotten")
