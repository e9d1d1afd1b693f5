"""The command line: parse, call a core function, print. Errors are one line and exit 1.

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
import threading
import webbrowser
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from mailer import campaign, delivery, demo, progress
from mailer import digest as digests
from mailer.articles import ArticleStore, read_regular_file
from mailer.config import Config, load_config
from mailer.db import Database
from mailer.errors import InputError, MailerError, database_os_problem, database_problem, is_dbapi_error
from mailer.models import Article, Subscriber, utcnow
from mailer.scheduler import Schedule
from mailer.subscribers import STATUSES, SubscriberStore

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
            self._db = Database(self.cfg.database_url)
            self._db.migrate()
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


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _when(value: datetime | None, cfg: Config) -> str:
    if value is None:
        return "-"
    return value.astimezone(cfg.zone).strftime("%Y-%m-%d %H:%M %Z")


# ---------------------------------------------------------------- setup and service


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


# ---------------------------------------------------------------- articles


@cli.group()
def articles() -> None:
    """Import, add, list, re-theme and remove articles."""


def _article_dict(a: Article) -> dict[str, Any]:
    return {
        "id": a.id,
        "title": a.title,
        "theme": a.theme,
        "url": a.url,
        "source": a.source,
        "published_at": a.published_at,
        "imported_at": a.imported_at,
        "digest_id": a.digest_id,
        "sent_at": a.sent_at,
        "paragraphs": len(a.paragraphs),
    }


@command(articles, "import")
@click.argument("paths", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def articles_import(app: App, paths: tuple[str, ...], as_json: bool) -> None:
    """Import .txt files and folders of them; prints what each file added or skipped."""
    reports = ArticleStore(app.db, app.cfg).import_paths(list(paths))
    if as_json:
        _json([r.as_dict() for r in reports])
        # The JSON carries the errors too; stderr still gets its one line per bad file.
        for r in reports:
            if r.error:
                click.echo(f"{r.path}: error: {r.error}", err=True)
    else:
        for r in reports:
            if r.error:
                click.echo(f"{r.path}: error: {r.error}", err=True)
                continue
            click.echo(f"{r.path}: {r.added} added, {r.duplicates} duplicate(s)")
            for reason in r.skipped:
                click.echo(f"  skipped: {reason}")
        total = sum(r.added for r in reports)
        click.echo(f"total: {total} added from {len(reports)} file(s)")
    if any(r.error for r in reports):
        sys.exit(1)


@command(articles, "add")
@click.option("--title", required=True)
@click.option("--body", help="The text; paragraphs separated by blank lines.")
@click.option("--body-file", type=click.Path(dir_okay=False), help="Read the text from a file.")
@click.option("--url", help="Where the full article lives (http or https).")
@click.option("--theme", help="Theme slug (else chosen by keywords).")
@click.option("--published", type=click.DateTime(), help="Publication time (UTC).")
def articles_add(
    app: App,
    title: str,
    body: str | None,
    body_file: str | None,
    url: str | None,
    theme: str | None,
    published: datetime | None,
) -> None:
    """Add one article."""
    from mailer.parsing import decode

    if (body is None) == (body_file is None):
        raise InputError("give exactly one of --body or --body-file")
    if body_file is not None:
        # Like `articles import`: a regular file within the size limit, never /dev/zero or a FIFO.
        try:
            text = decode(read_regular_file(Path(body_file)))
        except InputError as exc:
            raise InputError(f"{body_file}: {exc}") from None
    else:
        text = body or ""
    from datetime import UTC

    a = ArticleStore(app.db, app.cfg).add(
        title, text, url, theme, published.replace(tzinfo=UTC) if published else None
    )
    click.echo(f"added article #{a.id} [{a.theme}] {a.title}")


@command(articles, "list")
@click.option("--unsent", is_flag=True, help="Only articles not yet in a digest.")
@click.option("--theme", help="Only this theme.")
@click.option("--json", "as_json", is_flag=True)
def articles_list(app: App, unsent: bool, theme: str | None, as_json: bool) -> None:
    """List articles in digest order."""
    rows = ArticleStore(app.db, app.cfg).list(unsent, theme)
    if as_json:
        _json([_article_dict(a) for a in rows])
        return
    table = Table("id", "theme", "title", "state", box=None)
    for a in rows:
        state = "sent" if a.sent_at else (f"digest #{a.digest_id}" if a.digest_id else "unsent")
        table.add_row(str(a.id), a.theme, a.title, state)
    out.print(table)
    click.echo(f"{len(rows)} article(s)")


@command(articles, "set-theme")
@click.argument("article_id", type=int)
@click.argument("slug")
def articles_set_theme(app: App, article_id: int, slug: str) -> None:
    """Move an article to another theme."""
    a = ArticleStore(app.db, app.cfg).set_theme(article_id, slug)
    click.echo(f"article #{a.id} is now in theme {a.theme}")


@command(articles, "remove")
@click.argument("article_id", type=int)
def articles_remove(app: App, article_id: int) -> None:
    """Remove an unsent article."""
    a = ArticleStore(app.db, app.cfg).remove(article_id)
    click.echo(f"removed article #{a.id} {a.title}")


# ---------------------------------------------------------------- subscribers


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


# ---------------------------------------------------------------- digest


@cli.group()
def digest() -> None:
    """Preview, send and inspect digests."""


@command(digest, "preview")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write to this file.")
@click.option("--open", "open_browser", is_flag=True, help="Open it in a browser.")
@click.option("--text", "as_text", is_flag=True, help="The plain-text part instead of HTML.")
def digest_preview(app: App, out_file: str | None, open_browser: bool, as_text: bool) -> None:
    """Render the next digest without changing anything."""
    p = digests.preview(app.db, app.cfg)
    if p is None:
        raise InputError("nothing to preview: there are no unsent articles")
    body = p.text if as_text else p.html
    if out_file is None and open_browser:
        out_file = str(app.cfg.var_dir / ("preview.txt" if as_text else "preview.html"))
    if out_file is None:
        click.echo(body)
        return
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    Path(out_file).write_text(body, encoding="utf-8")
    click.echo(f"{p.subject} ({p.article_count} articles) written to {out_file}")
    if open_browser:
        webbrowser.open(Path(out_file).resolve().as_uri())


@command(digest, "send")
@click.option("--now", "now_flag", is_flag=True, help="Build (or resume) the digest and deliver it.")
@click.option("--to", "to", metavar="EMAIL", help="Send a test copy to one address; no state changes.")
def digest_send(app: App, now_flag: bool, to: str | None) -> None:
    """Send the digest now, or a test copy."""
    from mailer.subscribers import normalise_email

    if now_flag == (to is not None):
        raise InputError("give exactly one of --now or --to EMAIL")
    cfg = app.cfg
    if to is not None:
        address = normalise_email(to)
        p = digests.preview(app.db, cfg)
        if p is None:
            raise InputError("nothing to send: there are no unsent articles")
        reply = delivery.send_test(cfg, p.html, p.text, p.subject, address)
        click.echo(f"test copy of {p.subject!r} sent to {address}: {reply}")
        return
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        # Finish and record the message in flight, then stop: no duplicates on restart.
        click.echo(f"{signal.Signals(signum).name}: stopping after the message in flight", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    def _waiting(summary: delivery.RunSummary) -> None:
        click.echo(f"{progress.summary_line(summary)}; taking over if it has stopped", err=True)

    with progress.reporter(app.db) as on_progress:
        summaries = campaign.send_now(app.db, cfg, utcnow(), stop, on_progress, on_wait=_waiting)
    failed = False
    for s in summaries:
        click.echo(progress.summary_line(s))
        if s.stopped:
            click.echo(f"error: digest #{s.issue}: {s.stopped}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@command(digest, "list")
@click.option("--json", "as_json", is_flag=True)
def digest_list(app: App, as_json: bool) -> None:
    """Past digests with their delivery counts."""
    rows = digests.list_digests(app.db)
    if as_json:
        _json([r.__dict__ for r in rows])
        return
    table = Table(
        "id",
        "issue",
        "slot",
        "status",
        "articles",
        "sent",
        "pending",
        "failed",
        "subject",
        box=None,
    )
    for r in rows:
        pending = sum(r.counts.get(k, 0) for k in ("queued", "sending", "retry"))
        table.add_row(
            str(r.id),
            str(r.issue or "-"),
            r.slot,
            r.status,
            str(r.articles),
            str(r.counts.get("sent", 0)),
            str(pending),
            str(r.counts.get("failed", 0)),
            r.subject or r.note,
        )
    out.print(table)
    click.echo(f"{len(rows)} digest(s)")


@command(digest, "status")
@click.argument("digest_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True)
def digest_status(app: App, digest_id: int | None, as_json: bool) -> None:
    """Where a digest's delivery stands: queued, sent, retrying, failed, bounced, errors."""
    st = delivery.status_of(app.db, digest_id)
    if as_json:
        _json(st.__dict__)
        return
    c = st.counts
    click.echo(f"digest #{st.issue} (id {st.digest_id}, {st.status}): {st.subject}")
    click.echo(
        f"  queued {c['queued'] + c['sending']}, sent {c['sent']}, retrying {c['retry']}, "
        f"failed {c['failed']} (bounced {st.bounced}), skipped {c['skipped']}"
    )
    if st.next_retry_at:
        click.echo(f"  next retry: {_when(st.next_retry_at, app.cfg)}")
    if st.lease_owner and st.lease_until:
        until = st.lease_until.astimezone(app.cfg.zone)
        click.echo(
            f"  being delivered by {st.lease_owner}, lease until {until:%H:%M:%S %Z}"
            " (a run that stops renewing it is taken over then)"
        )
    if st.last_error:
        click.echo(f"  last run stopped: {st.last_error}")
        if st.next_run_at:
            click.echo(f"  the service tries again at {_when(st.next_run_at, app.cfg)}")
    for reply, n in st.errors:
        click.echo(f"  {n} x {reply}")


@command(digest, "retry")
@click.argument("digest_id", type=int)
def digest_retry(app: App, digest_id: int) -> None:
    """Put a digest's failed deliveries back in the queue (active subscribers only)."""
    n = delivery.retry_failed(app.db, digest_id)
    click.echo(f"{n} failed deliveries of digest id {digest_id} queued again")
    if n:
        click.echo("they go out with the next `mailer digest send --now` or the service's next tick")


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
