"""The command line's frame: the App, errors as one line and exit 1, output helpers.

Every command is "parse, one library call, print": the command modules of this package
(`subscribers`, `articles`, `digest`...) define the commands and print with the helpers here.

`cli` imports a command's module only when that command runs or shows its help (click's
lazy-loading pattern, `LazyGroup`): `mailer --help` imports click and this module, nothing
heavier, so that it starts in a fraction of the time SQLAlchemy's ORM, pydantic, rich and
the delivery engine take to import. This holds because nothing here imports them at the
top: the App loads the config and the database when a command first asks for them, the
error handler imports mailer.errors once a command failed (the command already imported
it), and rich is imported when something is printed through it. `mailer --help` still
lists every command with its one-line help from `COMMANDS`, which
tests/test_cli_startup.py keeps equal to each command's own docstring, and keeps the heavy
modules out of `mailer --help`'s imports.

A reader that closes stdout early (`mailer articles list | head -1`) is not an error: the
command stops writing and exits with status 141 (128 + SIGPIPE, what a Unix tool killed by
SIGPIPE reports) and prints nothing. SIGPIPE itself stays ignored, as Python sets it: a
default SIGPIPE would also kill `serve` and `digest send` on a socket the peer closed.

About 400 lines, on purpose for now: the frame every command shares (the lazy group and
its COMMANDS map, errors, output decorators); the output helpers (listing, detail, JSON)
are the piece to move out next.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import logging
import os
import select
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from mailer.config import Config
    from mailer.db import Database

F = TypeVar("F", bound=Callable[..., Any])


@functools.cache
def console() -> Console:
    """The console tables are printed on (rich is imported by the first command that prints)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            # rich's own handling exits with status 1: a closed stdout is handled as everywhere.
            _stdout_closed()

    return _Console(highlight=False, soft_wrap=True)


class App:
    """Loaded lazily so `mailer --help` works without a config or database."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._cfg: Config | None = None
        self._db: Database | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            from mailer.config import load_config  # pydantic: only for commands that read the config

            self._cfg = load_config(self.config_path)
        return self._cfg

    @property
    def db(self) -> Database:
        if self._db is None:
            from mailer.db import Database  # SQLAlchemy: only for commands that use the database

            db = Database(self.cfg.database_url)
            try:
                db.migrate()
            except BaseException:
                db.dispose()  # a caller may try again (mailer serve waits for its database)
                raise
            self._db = db
        return self._db


def handle_errors(fn: F) -> F:
    """Every error a user can cause or meet becomes one line on stderr and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        app = next((a for a in args if isinstance(a, App)), None)
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_gone():
                _stdout_closed()
            message = _problem(exc, app)
            if message is None:
                raise
            _fail(message)

    return wrapper  # type: ignore[return-value]


def _problem(exc: Exception, app: App | None) -> str | None:
    """The one line for an error a user can cause or meet; None for a bug (a traceback)."""
    # Imported once a command failed: it has imported them already, `mailer --help` need not.
    from sqlalchemy.exc import SQLAlchemyError

    from mailer.errors import MailerError, database_os_problem, database_problem, is_dbapi_error

    if isinstance(exc, MailerError):
        return str(exc)
    if isinstance(exc, BrokenPipeError):
        return exc.strerror or str(exc)  # some other pipe or socket (a closed stdout exited above)
    if isinstance(exc, SQLAlchemyError):
        return database_problem(exc, _database_url(app))
    if isinstance(exc, OSError):
        # Only while the database is being opened (its folder created) can it be the culprit.
        url = _database_url(app) if app is not None and app._db is None else None
        where = f"{exc.filename}: " if exc.filename else ""
        return (url and database_os_problem(exc, url)) or f"{where}{exc.strerror or exc}"
    if is_dbapi_error(exc):
        # The driver's own exceptions, from raw DB-API connections (the delivery workers).
        return database_problem(exc, _database_url(app))
    return None


def _database_url(app: App | None) -> str | None:
    """The database's URL once the config has loaded (before that no database was touched)."""
    return app._cfg.database_url if app is not None and app._cfg is not None else None


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


# The exit status when the reader of stdout went away: 128 + SIGPIPE, as a shell reports a
# Unix tool that SIGPIPE ended (`set -o pipefail` then sees it; a truncated export is not 0).
STDOUT_CLOSED = 128 + signal.SIGPIPE


def _stdout_gone() -> bool:
    """True when stdout is a pipe whose reader has closed it (poll reports an error on the
    write end of a pipe with no reader), not some other broken pipe (a socket)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _fd, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


def _stdout_closed() -> NoReturn:
    """Stop quietly: nothing more can be written, and what is still buffered goes to
    /dev/null, so that the flush at exit does not report the broken pipe either."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    sys.exit(STDOUT_CLOSED)


def command(group: click.Group | None, name: str | None = None, **kw: Any) -> Callable[[F], F]:
    """A subcommand that receives the App and turns MailerError into a one-line exit 1; with
    no group, a top-level command, which `COMMANDS` names for `cli`."""

    def decorate(fn: F) -> F:
        make = click.command if group is None else group.command
        return make(name, **kw)(click.pass_obj(handle_errors(fn)))  # type: ignore[return-value]

    return decorate


# Every top-level command: where it lives ("module:attribute") and its one-line help as
# `mailer --help` lists it, so that listing them imports none (a test keeps each equal to
# the first paragraph of its command's docstring).
COMMANDS: dict[str, tuple[str, str]] = {
    "articles": (
        "mailer.cli.articles:articles",
        "Import, add, list, re-theme, pin, hold, edit and remove articles.",
    ),
    "backup": (
        "mailer.cli.backup:backup_cmd",
        "Back up the database to FILE, even while the service runs.",
    ),
    "bounces": (
        "mailer.cli.bounces:bounces",
        "Bounces and spam complaints received (VERP, the bounce mailbox or MX, webhooks).",
    ),
    "digest": ("mailer.cli.digest:digest", "Preview, send and inspect digests."),
    "doctor": ("mailer.cli.doctor:doctor_cmd", "Check the sending setup before anything is sent."),
    "feeds": ("mailer.cli.feeds:feeds", "Add, list, remove and poll RSS and Atom feeds."),
    "init": (
        "mailer.cli.serve:init_cmd",
        "Create or upgrade the database (and optionally load the demo data).",
    ),
    "restore": (
        "mailer.cli.backup:restore_cmd",
        "Replace the database with a backup made by `mailer backup`.",
    ),
    "schedule": (
        "mailer.cli.schedule:schedule",
        "Print the next send times in the configured time zone (`schedule skip`: skip the next).",
    ),
    "serve": (
        "mailer.cli.serve:serve_cmd",
        "Run the scheduler, the web server and (if configured) the mail catcher.",
    ),
    "settings": ("mailer.cli.serve:settings", "The settings every instance on one database must agree on."),
    "subscribers": (
        "mailer.cli.subscribers:subscribers",
        "Add, import, export, list, unsubscribe and forget subscribers.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands in `lazy_commands` are imported when first looked up (to run
    one, or show its help), and listed in the help from the help text given with them."""

    def __init__(self, *args: Any, lazy_commands: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands
        self.collector_held = False  # main() holds it back until the command is resolved

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, attr = self.lazy_commands[cmd_name][0].split(":")
            cmd = getattr(importlib.import_module(module), attr)
            if not isinstance(cmd, click.Command):
                raise TypeError(f"{module}:{attr} is not a click command")
            self.add_command(cmd, cmd_name)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        resolved = super().resolve_command(ctx, args)  # imports the command: see main()
        if self.collector_held:
            self.collector_held = False
            gc.freeze()
            gc.enable()
        return resolved

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Click's list of commands, a command not imported yet listed from its given help."""
        listed = [(name, self._listed(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, cmd) for name, cmd in listed if cmd is not None and not cmd.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])

    def _listed(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self.lazy_commands:
            return self.get_command(ctx, name)
        return click.Command(name, help=self.lazy_commands[name][1])  # shortened as click does


@click.group(cls=LazyGroup, lazy_commands=COMMANDS)
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="Config file (else $MAILER_CONFIG, else ./config.toml).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log progress to stderr.")
@click.version_option(package_name="mailer")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: bool) -> None:
    """mailer: a self-hosted themed weekly digest newsletter."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Library chatter (migrations, the SMTP server's per-connection lines, the
    # scheduler's job bookkeeping) stays out of the way unless something goes wrong.
    for noisy in ("alembic", "mail.log", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    ctx.obj = App(config_path)


@dataclass
class Listing:
    """What a listing command returns; `listing` prints it."""

    records: list[dict[str, Any]]  # --json prints these, every field in full
    table: Table  # what a person reads: the columns that fit the terminal
    footer: str  # e.g. "3 subscriber(s)"
    # One line per record that failed (a feed that did not answer): on stderr after the
    # output, JSON or not, and the exit status is 1.
    errors: list[str] = field(default_factory=list)


def listing(fn: Callable[..., Listing]) -> Callable[..., None]:
    """The one `--json` of every listing command: the command returns a Listing, and this
    prints its records as JSON with --json, else its table and footer."""

    @click.option("--json", "as_json", is_flag=True, help="Print the records as JSON, in full.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> None:
        result = fn(*args, **kwargs)
        if as_json:
            _json(result.records)
        else:
            console().print(result.table)
            click.echo(result.footer)
        for line in result.errors:
            click.echo(f"error: {line}", err=True)
        if result.errors:
            sys.exit(1)

    return wrapper


@dataclass
class Detail:
    """What a command showing one thing returns; `detail` prints it."""

    record: dict[str, Any]  # --json prints this, every field in full
    lines: list[tuple[str, str]]  # what a person reads: label, value


def detail(fn: Callable[..., Detail]) -> Callable[..., None]:
    """`listing`'s counterpart for one record: --json prints it as a JSON object, else
    one "label: value" line per field."""

    @click.option("--json", "as_json", is_flag=True, help="Print the record as JSON, in full.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, **kwargs: Any) -> None:
        result = fn(*args, **kwargs)
        if as_json:
            _json(result.record)
            return
        width = max((len(label) for label, _ in result.lines), default=0)
        for label, value in result.lines:
            click.echo(f"{label + ':':<{width + 1}} {value}")

    return wrapper


def _json(data: Any) -> None:
    click.echo(json_text(data))


def json_text(data: Any) -> str:
    """The JSON every command prints: indented, UTF-8 as is, datetimes in ISO 8601."""
    return json.dumps(data, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _when(value: datetime | None, cfg: Config) -> str:
    if value is None:
        return "-"
    return value.astimezone(cfg.zone).strftime("%Y-%m-%d %H:%M %Z")


def main() -> None:
    """Run the CLI; usage errors too are one line on stderr and exit status 1.

    Importing a command's modules makes over a hundred thousand objects that live as long
    as the process (modules, classes, functions, SQLAlchemy's and pydantic's own tables):
    the cyclic collector's passes over them, while they are made, later and at exit, free
    nothing and cost about a fifth of a short command's time. So the collector is off until
    `cli` has resolved (imported) the command, then what exists is frozen (gc.freeze: left
    out of every later pass; the gc module's documented disable, freeze, enable) and the
    collector runs for what the command itself makes. The tests' in-process runs do not come
    through here and keep the collector as it was."""
    gc.disable()
    cli.collector_held = True
    try:
        try:
            cli.main(prog_name="mailer", standalone_mode=False)
        finally:
            # Output still buffered meets a closed pipe here, after the command returned.
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
