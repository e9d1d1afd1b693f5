"""`mailer schedule`: the next send times.

`mailer schedule` alone reads only the config (no database), so it also works before
`mailer init` and is what the config tests start.
"""

from __future__ import annotations

import click

from mailer.cli.base import App, cli, handle_errors
from mailer.models import utcnow
from mailer.scheduler import Schedule


@cli.group("schedule", invoke_without_command=True)
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 100))
@click.pass_context
def schedule(ctx: click.Context, count: int) -> None:
    """Print the next send times in the configured time zone."""
    if ctx.invoked_subcommand is None:
        _show(ctx.obj, count)


@handle_errors
def _show(app: App, count: int) -> None:
    cfg = app.cfg
    click.echo(f"schedule: {cfg.schedule.cron} ({cfg.schedule.timezone})")
    for slot in Schedule.of(cfg).next_slots(utcnow(), count):
        click.echo(
            f"  {slot.local(cfg.schedule.timezone):%a %Y-%m-%d %H:%M %Z}  ({slot.at:%Y-%m-%d %H:%M} UTC)"
        )
