"""`mailer subscribers`: add, import, export, list, unsubscribe and forget subscribers.

`forget` erases a person for good, so it asks first on a terminal; without a terminal
(a script, a pipe) it refuses unless given --yes. `export --out FILE` writes a temporary
file beside FILE and renames it into place: FILE is the whole export or untouched, and
(holding people's addresses) readable by its owner only, as mkstemp creates it.

Only `add --confirm` (the confirmation mail) and `show` (the bounce ledger) import the mail
and bounce machinery, when they run: `list` and the others start without it (issue 13;
tests/test_cli_startup.py).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TextIO

import click
from rich.table import Table

from mailer.cli.base import App, Detail, Listing, _when, command, detail, json_text, listing
from mailer.errors import InputError
from mailer.models import utcnow
from mailer.subscriber_io import record, write_csv
from mailer.subscribers import STATUSES, SubscriberStore, normalise_email


@click.group()
def subscribers() -> None:
    """Add, import, export, list, unsubscribe and forget subscribers."""


@command(subscribers, "add")
@click.argument("email")
@click.option("--name", default="")
@click.option(
    "--confirm",
    is_flag=True,
    help="Mail them the confirmation link instead (double opt-in): pending until they click.",
)
def subscribers_add(app: App, email: str, name: str, confirm: bool) -> None:
    """Add one subscriber (syntax-checked, no DNS look-up)."""
    if confirm:
        from mailer import notices, signup  # the mail's rendering and SMTP: --confirm only

        kind = signup.request(app.db, app.cfg, signup.Signup(email, name), None, utcnow())
        sent = notices.send_due(app.db, app.cfg)
        what = "a confirmation" if kind == notices.CONFIRM else "'already subscribed' (nothing to confirm)"
        queued = "mailed" if sent else "queued (the relay did not take it now; the service retries)"
        click.echo(f"{what} {queued} to {normalise_email(email)}")
        return
    sub, created = SubscriberStore(app.db).add(email, name)
    if created:
        click.echo(f"added {sub.email}")
    else:
        click.echo(f"{sub.email} is already on the list ({sub.status}); nothing changed")


@command(subscribers, "import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--skip-invalid", is_flag=True, help="Import the good rows even if some are bad.")
def subscribers_import(app: App, file: str, skip_invalid: bool) -> None:
    """Import a list of people (all-or-nothing by default).

    \b
    Reads the CSV exports of Mailchimp, listmonk, Substack and Buttondown and of
    `mailer subscribers export`, comma-, semicolon- or tab-separated, or a plain list
    with one address per line. An email column (email, Email Address, E-mail) is
    required; a name comes from name, or First Name and Last Name joined; a status
    column keeps those who unsubscribed unsubscribed. People already on the list are
    left as they are.
    """
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


@command(subscribers, "export")
@click.option("--status", type=click.Choice(STATUSES), help="Only people with this status.")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), help="Write to this file, not stdout.")
def subscribers_export(app: App, status: str | None, fmt: str, out_file: str | None) -> None:
    """Write the list out: CSV (which `subscribers import` reads back) or JSON.

    Every person, or those of one status, with name, status, dates and bounces; --out
    writes the file whole or not at all, readable by its owner only."""
    people = SubscriberStore(app.db).list(status)

    def write(stream: TextIO) -> None:
        if fmt == "csv":
            write_csv(people, stream)
        else:
            stream.write(json_text([record(s) for s in people]) + "\n")

    if out_file is None:
        write(sys.stdout)
        return
    _write_whole(Path(out_file), write)
    click.echo(f"{len(people)} subscriber(s) written to {out_file}")


def _write_whole(path: Path, write: Callable[[TextIO], None]) -> None:
    """`write` into a temporary file beside `path`, then rename it into place."""
    try:
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as stream:
            write(stream)
        os.replace(temp, path)
    except BaseException as exc:
        os.unlink(temp)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise


@command(subscribers, "list")
@click.option("--status", type=click.Choice(STATUSES))
@listing
def subscribers_list(app: App, status: str | None) -> Listing:
    """List subscribers."""
    rows = SubscriberStore(app.db).list(status)
    table = Table("id", "email", "name", "status", "since", box=None)
    for s in rows:
        table.add_row(str(s.id), s.email, s.name, s.status, _when(s.status_changed_at, app.cfg))
    return Listing([record(s) for s in rows], table, f"{len(rows)} subscriber(s)")


@command(subscribers, "show")
@click.argument("email")
@detail
def subscribers_show(app: App, email: str) -> Detail:
    """One subscriber in full, with the consent record of a web sign-up."""
    from mailer.bounces import ledger  # the bounce machinery: `show` alone among these

    sub = SubscriberStore(app.db).get(email)
    rec = record(sub)
    soft = ledger.soft_bounce_count(app.db, sub.id)
    lines = [
        ("email", sub.email),
        ("name", sub.name or "-"),
        ("status", f"{sub.status} since {_when(sub.status_changed_at, app.cfg)}"),
        ("added", _when(sub.created_at, app.cfg)),
        ("signed up", _consent(sub.signup_at, sub.signup_ip, app)),
        ("confirmed", _consent(sub.confirmed_at, sub.confirm_ip, app)),
        ("themes", ", ".join(rec["themes"]) or "all"),
        ("bounces", f"{sub.bounce_count} hard, {soft} soft since the last delivery that did not bounce"),
    ]
    return Detail(rec, lines)


def _consent(at: datetime | None, ip: str | None, app: App) -> str:
    if at is None:
        return "-"
    return f"{_when(at, app.cfg)} from {ip}" if ip else f"{_when(at, app.cfg)} (by the editor)"


@command(subscribers, "remove")
@click.argument("email")
def subscribers_remove(app: App, email: str) -> None:
    """Unsubscribe (the record stays, so an import will not resubscribe them)."""
    sub = SubscriberStore(app.db).unsubscribe(email)
    click.echo(f"{sub.email} unsubscribed")


@command(subscribers, "forget")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (needed without a terminal).")
def subscribers_forget(app: App, email: str, yes: bool) -> None:
    """Erase a person and their delivery records, for good (asks first)."""
    store = SubscriberStore(app.db)
    sub = store.get(email)
    if not yes:
        if not sys.stdin.isatty():
            raise InputError(f"forgetting {sub.email} cannot be undone: pass --yes to confirm")
        who = f"{sub.email} ({sub.name})" if sub.name else sub.email
        click.confirm(f"Erase {who} and their delivery records for good?", abort=True)
    store.forget(sub.email)
    click.echo(f"{sub.email} forgotten")
