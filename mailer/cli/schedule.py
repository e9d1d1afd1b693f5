"""`mailer schedule`: the next send times; `schedule skip [--undo]` for the next slot.

`mailer schedule` alone reads only the config (no database), so it also works before
`mailer init` and is what the config tests start; `skip` records the skipped slot in the
database (mailer.digest.skip_slot), where the scheduler's build for that slot finds it.
"""

from __future__ import annotations

import click

from mailer.cli.base import App, _when, command, handle_errors
from mailer.models import utcnow
from mailer.scheduler import Schedule


@click.group("schedule", invoke_without_command=True)
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 100))
@click.pass_context
def schedule(ctx: click.Context, count: int) -> None:
    """Print the next send times in the configured time zone (`schedule skip`: skip the next)."""
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


@command(schedule, "skip")
@click.option("--undo", is_flag=True, help="Send in the next slot after all.")
def schedule_skip(app: App, undo: bool) -> None:
    """Skip the next slot: no digest then (shown in `digest list`); its articles wait."""
    from mailer import campaign  # with the delivery engine, which `mailer schedule` does not need

    if undo:
        slot = campaign.unskip_next(app.db, app.cfg, utcnow())
        click.echo(f"the slot {_when(slot.at, app.cfg)} is no longer skipped")
        return
    d = campaign.skip_next(app.db, app.cfg, utcnow())
    click.echo(f"the slot {_when(d.slot_at, app.cfg)} is skipped: no digest then")
