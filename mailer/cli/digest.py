"""`mailer digest`: the editor's note, preview, send, list, status and retry digests."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import webbrowser
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from mailer import digest as digests
from mailer import notes, shared_settings
from mailer.article_files import read_regular_file
from mailer.cli.base import App, Listing, _json, _when, command, listing
from mailer.errors import InputError
from mailer.models import utcnow


@click.group()
def digest() -> None:
    """Preview, send and inspect digests."""


@command(digest, "note")
@click.argument("text", required=False)
@click.option("--file", "note_file", type=click.Path(dir_okay=False), help="Read it from a Markdown file.")
@click.option("--clear", is_flag=True, help="Remove the note for the next issue.")
def digest_note(app: App, text: str | None, note_file: str | None, clear: bool) -> None:
    """The editor's note (Markdown) at the top of the next issue; without arguments, show it.

    The note goes into the next digest built, and only that one."""
    from mailer.parsing import decode

    if sum((text is not None, note_file is not None, clear)) > 1:
        raise InputError("give one of TEXT, --file FILE or --clear")
    if clear:
        removed = notes.clear_note(app.db)
        click.echo("note for the next issue removed" if removed else "there was no note for the next issue")
        return
    if note_file is not None:
        try:
            text = decode(read_regular_file(Path(note_file)))
        except InputError as exc:
            raise InputError(f"{note_file}: {exc}") from None
    if text is None:
        note = notes.next_note(app.db)
        click.echo(note if note else "no note for the next issue")
        return
    note = notes.set_note(app.db, text)
    click.echo(f"note for the next issue set ({len(note)} characters); `mailer digest preview` shows it")


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
        path = Path(out_file).resolve()
        missing = open_in_browser(path)
        if missing:
            click.echo(f"could not open a browser ({missing}); the preview is in {path}", err=True)


def open_in_browser(path: Path) -> str | None:
    """Show the file in a browser; None when one took it, else why none did.

    Without a display (DISPLAY or WAYLAND_DISPLAY) on Linux and the BSDs, nothing is
    tried: webbrowser would fall back to a text-mode browser taking over the terminal, or
    to nothing at all. $BROWSER, when set, is always tried."""
    graphical = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    x11_platform = sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))
    if x11_platform and not graphical and not os.environ.get("BROWSER"):
        return "no DISPLAY"
    if not webbrowser.open(path.as_uri()):
        return "none found"
    return None


@command(digest, "send")
@click.option("--now", "now_flag", is_flag=True, help="Build (or resume) the digest and deliver it.")
@click.option("--to", "to", metavar="EMAIL", help="Send a test copy to one address; no state changes.")
def digest_send(app: App, now_flag: bool, to: str | None) -> None:
    """Send the digest now, or a test copy."""
    if now_flag == (to is not None):
        raise InputError("give exactly one of --now or --to EMAIL")
    from mailer import campaign, delivery, progress  # the delivery engine: the commands that send

    cfg = app.cfg
    if to is not None:
        sent = delivery.send_test_copy(app.db, cfg, to)
        click.echo(f"test copy of {sent.subject!r} sent to {sent.address}: {sent.reply}")
        return
    shared_settings.check(app.db, cfg)  # its links must be ones every instance can check
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        # Finish and record the message in flight, then stop: no duplicates on restart.
        click.echo(f"{signal.Signals(signum).name}: stopping after the message in flight", err=True)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with progress.reporter(app.db) as on_progress:
        summaries = campaign.send_now(app.db, cfg, utcnow(), stop, on_progress)
    failed = False
    for s in summaries:
        click.echo(progress.summary_line(s))
        if s.stopped:
            click.echo(f"error: digest #{s.issue}: {s.stopped}", err=True)
            failed = True
    if failed:
        sys.exit(1)


@command(digest, "list")
@listing
def digest_list(app: App) -> Listing:
    """Past digests with their delivery counts (--json: every field, subjects in full)."""
    rows = digests.list_digests(app.db)
    table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False)
    for header in ("id", "issue", "slot", "status", "articles", "sent", "pending", "failed"):
        justify = "left" if header in ("slot", "status") else "right"
        table.add_column(header, no_wrap=True, justify=justify)
    # The subject alone gives way to the terminal's width: cut short with "…", never wrapped.
    table.add_column("subject", overflow="ellipsis")
    for r in rows:
        pending = sum(r.counts.get(k, 0) for k in ("queued", "sending", "retry"))
        table.add_row(
            str(r.id),
            str(r.issue or "-"),
            _when(r.slot_at, app.cfg),
            r.status,
            str(r.articles),
            str(r.counts.get("sent", 0)),
            str(pending),
            str(r.counts.get("failed", 0)),
            Text(r.subject or r.note, no_wrap=True, overflow="ellipsis"),
        )
    records = [{**dataclasses.asdict(r), "manual": r.manual} for r in rows]
    return Listing(records, table, f"{len(rows)} digest(s)")


@command(digest, "status")
@click.argument("digest_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True)
def digest_status(app: App, digest_id: int | None, as_json: bool) -> None:
    """Where a digest's delivery stands: queued, sent, retrying, failed, bounced, errors."""
    from mailer import delivery  # the package brings the engine: not for `list` or `preview`

    st = delivery.status_of(app.db, digest_id)
    if as_json:
        back = st.returned
        _json(
            {
                **st.__dict__,
                "returned": {
                    **dataclasses.asdict(back),
                    "bounce_rate": back.bounce_rate,
                    "complaint_rate": back.complaint_rate,
                    "warnings": back.warnings(),
                },
            }
        )
        return
    c = st.counts
    click.echo(f"digest #{st.issue} (id {st.digest_id}, {st.status}): {st.subject}")
    click.echo(
        f"  queued {c['queued'] + c['sending']}, sent {c['sent']}, retrying {c['retry']}, "
        f"failed {c['failed']} (bounced {st.bounced}), skipped {c['skipped']}"
    )
    back = st.returned
    if back.bounced or back.soft or back.complained:
        click.echo(
            f"  after delivery: {back.bounced} bounced later ({back.bounce_rate:.1%}), "
            f"{back.soft} soft bounce(s), {back.complained} complained ({back.complaint_rate:.2%})"
        )
    for warning in back.warnings():
        click.echo(f"  warning: {warning}")
    if st.next_retry_at:
        click.echo(f"  next retry: {_when(st.next_retry_at, app.cfg)}")
    for run in st.runs:
        until = run.expires_at.astimezone(app.cfg.zone)
        click.echo(f"  being delivered by {run.owner} (alive until {until:%H:%M:%S %Z} unless it renews)")
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
    from mailer import delivery  # the package brings the engine: not for `list` or `preview`

    n = delivery.retry_failed(app.db, digest_id)
    click.echo(f"{n} failed deliveries of digest id {digest_id} queued again")
    if n:
        click.echo("they go out with the next `mailer digest send --now` or the service's next tick")
