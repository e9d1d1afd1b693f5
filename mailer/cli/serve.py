"""Setting up and running: init, serve, schedule."""

from __future__ import annotations

import logging

import click

from mailer import demo
from mailer.cli.base import App, cli, command
from mailer.models import utcnow
from mailer.scheduler import Schedule


@command(cli, "init")
@click.option(
    "--demo", "with_demo", is_flag=True, help="A new database also gets seeds/ and three demo readers."
)
def init_cmd(app: App, with_demo: bool) -> None:
    """Create or upgrade the database (and optionally load the demo data)."""
    new = with_demo and demo.is_new(app.cfg)
    db = app.db
    click.echo(f"database ready: {db.url}")
    if with_demo:
        for line in demo.load(db, app.cfg, new):
            click.echo(line)


@command(cli, "serve")
@click.option(
    "--demo", "with_demo", is_flag=True, help="A new database first gets seeds/ and three demo readers."
)
def serve_cmd(app: App, with_demo: bool) -> None:
    """Run the scheduler, the web server and (if configured) the mail catcher."""
    from mailer import service

    logging.getLogger().setLevel(logging.INFO)
    if with_demo:
        new = demo.is_new(app.cfg)
        for line in demo.load(app.db, app.cfg, new):
            click.echo(line)
    service.serve(app.db, app.cfg)


@command(cli, "schedule")
@click.option("--count", default=5, show_default=True, type=click.IntRange(1, 100))
def schedule_cmd(app: App, count: int) -> None:
    """Print the next send times in the configured time zone."""
    cfg = app.cfg
    schedule = Schedule.of(cfg)
    click.echo(f"schedule: {cfg.schedule.cron} ({cfg.schedule.timezone})")
    for slot in schedule.next_slots(utcnow(), count):
        click.echo(
            f"  {slot.local(cfg.schedule.timezone):%a %Y-%m-%d %H:%M %Z}  ({slot.at:%Y-%m-%d %H:%M} UTC)"
        )
