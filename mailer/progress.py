"""Send progress: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from sqlalchemy import func, select

from mailer.db import Database
from mailer.delivery import RunSummary
from mailer.models import DELIVERY_PENDING, Delivery

log = logging.getLogger("mailer.progress")
LOG_EVERY_SECONDS = 5.0


def _pending(db: Database, digest_id: int) -> int:
    with db.session() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    Delivery.digest_id == digest_id, Delivery.status.in_(DELIVERY_PENDING)
                )
            )
            or 0
        )


@contextmanager
def reporter(db: Database, tty: bool | None = None) -> Iterator[Callable[[RunSummary, int], None]]:
    tty = sys.stdout.isatty() if tty is None else tty
    if tty:
        bar = Progress(
            TextColumn("digest #{task.fields[issue]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
        )
        tasks: dict[int, TaskID] = {}
        started: dict[int, float] = {}

        def on_bar(summary: RunSummary, n: int) -> None:
            if summary.digest_id not in tasks:
                tasks[summary.digest_id] = bar.add_task(
                    "send", total=_pending(db, summary.digest_id) + 1, issue=summary.issue, rate=""
                )
                started[summary.digest_id] = time.monotonic()
            done = summary.sent + summary.retry + summary.failed
            rate = done / max(time.monotonic() - started[summary.digest_id], 1e-6)
            bar.update(tasks[summary.digest_id], advance=n, rate=f"{rate:,.0f} msg/s")

        with bar:
            yield on_bar
        return

    last = [time.monotonic()]

    def on_log(summary: RunSummary, n: int) -> None:
        now = time.monotonic()
        if now - last[0] >= LOG_EVERY_SECONDS:
            last[0] = now
            log.info(
                "digest #%s: %d sent, %d to retry, %d failed so far",
                summary.issue,
                summary.sent,
                summary.retry,
                summary.failed,
            )

    yield on_log


def summary_line(s: RunSummary) -> str:
    if s.busy:
        return f"digest #{s.issue}: this process is delivering it already"
    c = s.counts
    state = "finished" if s.finished else "not finished"
    line = (
        f"digest #{s.issue} {state}: this run sent {s.sent}, {s.retry} to retry, {s.failed} failed; "
        f"in total {c.get('sent', 0)} sent, {c.get('retry', 0)} retrying, "
        f"{c.get('queued', 0) + c.get('sending', 0)} queued, {c.get('failed', 0)} failed, "
        f"{c.get('skipped', 0)} skipped"
    )
    if s.seconds and s.sent:
        line += f"; {s.sent / s.seconds:,.0f} msg/s over {s.seconds:.1f} s"
    if c.get("retry"):
        line += " (the service retries them on schedule)"
    if s.quota_until is not None:
        line += f"; hourly quota used up, resuming after {s.quota_until:%H:%M} UTC"
    return line
