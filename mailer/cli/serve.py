"""Setting up and running: init, serve, settings (`schedule` is in mailer.cli.schedule).

`mailer serve` with `[log] format = "json"` writes its log as one JSON object per line
(JsonLogFormatter) on stderr, where `cli` set up the plain lines: the formatter is swapped
on the root logger's handlers once the config has loaded, before the first line of the
service (its wait for the database included). A reload does not change it (a restart does).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from datetime import UTC, datetime

import click
from sqlalchemy.exc import SQLAlchemyError

from mailer import demo, shared_settings
from mailer.cli.base import App, command
from mailer.errors import database_problem


@command(None, "init")
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


@command(None, "serve")
@click.option(
    "--demo", "with_demo", is_flag=True, help="A new database first gets seeds/ and three demo readers."
)
def serve_cmd(app: App, with_demo: bool) -> None:
    """Run the scheduler, the web server and (if configured) the mail catcher."""
    from mailer import service

    logging.getLogger().setLevel(logging.INFO)
    if app.cfg.log.format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonLogFormatter())
    new = wait_for_database(app)
    shared_settings.check(app.db, app.cfg)
    if with_demo:
        for line in demo.load(app.db, app.cfg, new):
            click.echo(line)
    service.serve(app.db, app.cfg)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record, on one line: time (ISO 8601, UTC), level, logger,
    message, and exc_info (the traceback's text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, str] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False)


DATABASE_BACKOFF_SECONDS = [1, 2, 5, 10, 30]


def wait_for_database(app: App) -> bool:
    """A service outlives its database's restarts: while the server cannot be reached it
    logs one line and tries again with back-off (a command would exit instead). Problems
    a retry cannot fix (a bad URL, no driver, a schema from a newer mailer) still stop it.
    Returns whether the database was new (no schema before this start: demo.is_new)."""
    log = logging.getLogger("mailer.service")
    for attempt in itertools.count():
        try:
            new = demo.is_new(app.cfg)  # before app.db migrates it
            app.db  # noqa: B018 (connects and migrates)
            return new
        except (SQLAlchemyError, OSError) as exc:
            wait = DATABASE_BACKOFF_SECONDS[min(attempt, len(DATABASE_BACKOFF_SECONDS) - 1)]
            log.error("%s; trying again in %s s", database_problem(exc, app.cfg.database_url), wait)
            time.sleep(wait)


@click.group()
def settings() -> None:
    """The settings every instance on one database must agree on."""


@command(settings, "adopt")
def settings_adopt(app: App) -> None:
    """Make this config's secret key and schedule the ones every instance must use."""
    changed = shared_settings.adopt(app.db, app.cfg)
    click.echo(f"now stored for all instances: {', '.join(changed)}" if changed else "nothing to change")
