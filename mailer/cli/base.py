"""The command line's frame: the App, errors as one line and exit 1, output helpers.

Every command is "parse, one library call, print": the command modules of this package
(`serve`, `articles`, `subscribers`, `digest`) register on `cli` and print with the
helpers here.

A reader that closes stdout early (`mailer articles list | head -1`) is not an error: the
command stops writing and exits with status 141 (128 + SIGPIPE, what a Unix tool killed by
SIGPIPE reports) and prints nothing. SIGPIPE itself stays ignored, as Python sets it: a
default SIGPIPE would also kill `serve` and `digest send` on a socket the peer closed.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import select
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from mailer.config import Config, load_config
from mailer.db import Database
from mailer.errors import MailerError, database_os_problem, database_problem, is_dbapi_error

F = TypeVar("F", bound=Callable[..., Any])


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich's own handling exits with status 1: a closed stdout is handled as everywhere.
        _stdout_closed()


out = _Console(highlight=False, soft_wrap=True)


class App:
    """Loaded lazily so `mailer --help` works without a config or database."""

    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._cfg: Config | None = None
        self._db: Database | None = None

    @property
    def cfg(self) -> Config:
        if self._cfg is None:
            self._cfg = load_config(self.config_path)
        return self._cfg

    @property
    def db(self) -> Database:
        if self._db is None:
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
        except MailerError as exc:
            _fail(str(exc))
        except BrokenPipeError as exc:
            if _stdout_gone():
                _stdout_closed()
            _fail(exc.strerror or str(exc))  # some other pipe or socket
        except SQLAlchemyError as exc:
            _fail(database_problem(exc, _database_url(app)))
        except OSError as exc:
            # Only while the database is being opened (its folder created) can it be the culprit.
            url = _database_url(app) if app is not None and app._db is None else None
            where = f"{exc.filename}: " if exc.filename else ""
            _fail((url and database_os_problem(exc, url)) or f"{where}{exc.strerror or exc}")
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            # The driver's own exceptions, from raw DB-API connections (the delivery workers).
            if not is_dbapi_error(exc):
                raise
            _fail(database_problem(exc, _database_url(app)))

    return wrapper  # type: ignore[return-value]


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


def command(group: click.Group, name: str | None = None, **kw: Any) -> Callable[[F], F]:
    """A subcommand that receives the App and turns MailerError into a one-line exit 1."""

    def decorate(fn: F) -> F:
        return group.command(name, **kw)(click.pass_obj(handle_errors(fn)))  # type: ignore[return-value]

    return decorate


@click.group()
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
            out.print(result.table)
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
    """Run the CLI; usage errors too are one line on stderr and exit status 1."""
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
