"""`mailer feeds`: list RSS and Atom sources, see each one's health, poll them now."""

from __future__ import annotations

import logging
from typing import Any

import click
from rich.table import Table

from mailer.cli.base import App, Listing, _when, command, listing
from mailer.feeds import sources
from mailer.models import Feed


@click.group()
def feeds() -> None:
    """Add, list, remove and poll RSS and Atom feeds."""


def record(f: Feed) -> dict[str, Any]:
    return {
        "id": f.id,
        "url": f.url,
        "listed_url": f.listed_url,
        "name": f.name,
        "theme": f.theme,
        "fetch_full_text": f.fetch_full_text,
        "origin": f.origin,
        "status": f.status,
        "last_polled_at": f.last_polled_at,
        "last_status": f.last_status,
        "last_error": f.last_error,
        "last_notes": f.last_notes.splitlines(),
        "last_imported": f.last_imported,
        "items_imported": f.items_imported,
        "failures": f.failures,
        "next_poll_at": f.next_poll_at,
    }


@command(feeds, "add")
@click.argument("url")
@click.option("--theme", help="Theme slug for every item (else each is chosen by keywords).")
@click.option("--name", default="", help="The source's name in the digest (else the feed's title).")
@click.option("--full-text", is_flag=True, help="Fetch each item's page and extract the whole article.")
def feeds_add(app: App, url: str, theme: str | None, name: str, full_text: bool) -> None:
    """Add a feed; the service polls it within a minute (or run `mailer feeds poll`)."""
    feed = sources.add(app.db, app.cfg, url, theme, name, full_text)
    click.echo(f"feed #{feed.id} added: {feed.url}")


@command(feeds, "list")
@listing
def feeds_list(app: App) -> Listing:
    """Every feed with its health: last poll, HTTP status, problem, items imported."""
    rows = sources.listed(app.db, app.cfg)
    table = Table(
        "id", "name", "url", "status", "last poll", "http", "imported", "next poll", "problem", box=None
    )
    for f in rows:
        table.add_row(
            str(f.id),
            f.name or "-",
            f.url,
            f.status,
            _when(f.last_polled_at, app.cfg),
            str(f.last_status or "-"),
            f"{f.items_imported} ({f.last_imported} last)",
            _when(f.next_poll_at, app.cfg),
            _problem(f.last_error, f.last_notes.splitlines()),
        )
    return Listing([record(f) for f in rows], table, f"{len(rows)} feed(s)")


def _problem(error: str, notes: list[str]) -> str:
    """The error, else the first note, with how many more there are."""
    lines = [line for line in (error, *notes) if line]
    if not lines:
        return "-"
    return lines[0] + (f" (+{len(lines) - 1} more)" if len(lines) > 1 else "")


@command(feeds, "remove")
@click.argument("feed", metavar="URL|ID")
def feeds_remove(app: App, feed: str) -> None:
    """Forget a feed added with `feeds add`; the articles it brought stay."""
    row = sources.remove(app.db, app.cfg, feed)
    click.echo(f"feed #{row.id} removed: {row.url}")


@command(feeds, "poll")
@listing
def feeds_poll(app: App) -> Listing:
    """Poll every active feed now, whether due or not; exit status 1 if one failed."""
    if logging.getLogger().level > logging.INFO:
        # The table and the error lines say it all; the poll's log lines are for the
        # service's log, or for -v.
        logging.getLogger("mailer.feeds").setLevel(logging.ERROR)
    from mailer.feeds import poll  # feedparser, lxml and the extractor: `poll` alone needs them

    reports = poll.poll(app.db, app.cfg, due_only=False)
    table = Table("id", "name", "http", "imported", "known", "too old", "duplicates", "problem", box=None)
    for r in reports:
        table.add_row(
            str(r.id),
            r.name or r.url,
            str(r.http_status or "-"),
            str(r.imported),
            str(r.known),
            str(r.too_old),
            str(r.duplicates),
            _problem(r.error, r.notes),
        )
    imported = sum(r.imported for r in reports)
    return Listing(
        [r.as_dict() for r in reports],
        table,
        f"{imported} article(s) imported from {len(reports)} feed(s)",
        errors=[f"feed {r.url}: {r.error}" for r in reports if r.error],
    )
