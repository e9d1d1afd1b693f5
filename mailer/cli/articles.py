"""`mailer articles`: import, add, list, re-theme, shape the next issue and remove articles."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from mailer.article_files import read_regular_file
from mailer.articles import ArticleStore
from mailer.cli.base import App, Listing, _json, command, listing
from mailer.errors import InputError
from mailer.models import Article


@click.group()
def articles() -> None:
    """Import, add, list, re-theme, pin, hold, edit and remove articles."""


def _article_dict(a: Article) -> dict[str, Any]:
    return {
        "id": a.id,
        "title": a.title,
        "theme": a.theme,
        "url": a.url,
        "source": a.source,
        "author": a.author,
        "published_at": a.published_at,
        "imported_at": a.imported_at,
        "digest_id": a.digest_id,
        "sent_at": a.sent_at,
        "state": a.state,
        "pinned_at": a.pinned_at,
        "held_at": a.held_at,
        "summary": a.summary,
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
@listing
def articles_list(app: App, unsent: bool, theme: str | None) -> Listing:
    """List articles in digest order."""
    rows = ArticleStore(app.db, app.cfg).list(unsent, theme)
    table = Table("id", "theme", "title", "state", box=None)
    for a in rows:
        table.add_row(str(a.id), a.theme, a.title, a.state)
    return Listing([_article_dict(a) for a in rows], table, f"{len(rows)} article(s)")


@command(articles, "set-theme")
@click.argument("article_id", type=int)
@click.argument("slug")
def articles_set_theme(app: App, article_id: int, slug: str) -> None:
    """Move an article to another theme."""
    a = ArticleStore(app.db, app.cfg).set_theme(article_id, slug)
    click.echo(f"article #{a.id} is now in theme {a.theme}")


@command(articles, "pin")
@click.argument("article_id", type=int)
def articles_pin(app: App, article_id: int) -> None:
    """Put an unsent article at the top of its section (and surely in the next issue)."""
    a = ArticleStore(app.db, app.cfg).pin(article_id)
    click.echo(f"article #{a.id} pinned to the top of {a.theme}: {a.title}")


@command(articles, "unpin")
@click.argument("article_id", type=int)
def articles_unpin(app: App, article_id: int) -> None:
    """Let a pinned article take its usual place again."""
    a = ArticleStore(app.db, app.cfg).pin(article_id, pinned=False)
    click.echo(f"article #{a.id} not pinned: {a.title}")


@command(articles, "hold")
@click.argument("article_id", type=int)
def articles_hold(app: App, article_id: int) -> None:
    """Keep an unsent article out of the next issues until it is released."""
    a = ArticleStore(app.db, app.cfg).hold(article_id)
    click.echo(f"article #{a.id} held: no digest takes it until `mailer articles release {a.id}`")


@command(articles, "release")
@click.argument("article_id", type=int)
def articles_release(app: App, article_id: int) -> None:
    """Let a held article go into the next digest again."""
    a = ArticleStore(app.db, app.cfg).hold(article_id, held=False)
    click.echo(f"article #{a.id} released: it can go into the next digest")


@command(articles, "edit")
@click.argument("article_id", type=int)
@click.option("--title", help="A new title.")
@click.option("--summary", help='What the digest shows instead of the opening text ("" for that again).')
def articles_edit(app: App, article_id: int, title: str | None, summary: str | None) -> None:
    """Change an unsent article's title or summary."""
    a = ArticleStore(app.db, app.cfg).edit(article_id, title, summary)
    click.echo(f"edited article #{a.id} [{a.theme}] {a.title}")
    none = "none (the digest shows the opening text)"
    click.echo(f"  summary: {a.summary or none}")


@command(articles, "remove")
@click.argument("article_id", type=int)
def articles_remove(app: App, article_id: int) -> None:
    """Remove an unsent article."""
    a = ArticleStore(app.db, app.cfg).remove(article_id)
    click.echo(f"removed article #{a.id} {a.title}")
