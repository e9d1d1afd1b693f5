"""What the scheduler and `digest send --now` trigger: build the due digest, deliver it.

Everything is decided from the database, so calling these again (a restart, a second
service, the cron trigger firing twice on a DST night) is always safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from mailer import delivery
from mailer import digest as digests
from mailer.config import Config
from mailer.db import Database
from mailer.delivery import RunSummary
from mailer.models import utcnow
from mailer.scheduler import Schedule

MIN_GRACE = timedelta(minutes=5)


def deliver_unfinished(
    db: Database,
    cfg: Config,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
    ignore_backoff: bool = False,
    on_wait: Callable[[RunSummary], None] | None = None,
) -> list[RunSummary]:
    """Deliver (resume) every digest that has not finished, oldest first. A digest whose
    last run stopped on a relay-wide problem waits for its back-off, unless asked not to.
    With `on_wait`, a digest held by another run is taken over if that run is gone
    (`on_wait` is told before the wait, which lasts at most one lease)."""
    out = []
    for d in digests.unfinished(db):
        if stop is not None and stop.is_set():
            break
        summary = delivery.deliver(db, cfg, d.id, stop, on_progress, ignore_backoff)
        if on_wait is not None and summary.busy:
            summary = _take_over_if_gone(db, cfg, summary, stop, on_progress, on_wait)
        out.append(summary)
    return out


def _take_over_if_gone(
    db: Database,
    cfg: Config,
    busy: RunSummary,
    stop: threading.Event | None,
    on_progress: Callable[[RunSummary, int], None] | None,
    on_wait: Callable[[RunSummary], None],
) -> RunSummary:
    """Another run holds the digest. A live one renews its lease well before it runs out;
    a dead one cannot. So wait until the lease runs out and try once more: either the
    lease was renewed (busy again: the other run is alive) or this run takes over."""
    holder = busy.holder
    if holder is None or holder.until is None:
        return busy
    wait = (holder.until - utcnow()).total_seconds() + 1
    if wait > cfg.delivery.lease_seconds + 5:  # not a lease this config writes: don't hang
        return busy
    on_wait(busy)
    if (stop or threading.Event()).wait(max(wait, 0)):
        return busy
    return delivery.deliver(db, cfg, busy.digest_id, stop, on_progress, ignore_backoff=True)


def run_due(
    db: Database,
    cfg: Config,
    now: datetime,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
) -> list[RunSummary]:
    """The scheduled job: build the digest of the due slot (if any, once), then deliver."""
    schedule = Schedule.of(cfg)
    # At least a few minutes: the job itself runs a moment after the slot's instant.
    grace = max(timedelta(hours=cfg.schedule.grace_hours), MIN_GRACE)
    slot = schedule.due_slot(now, grace)
    if slot is not None:
        digests.build(db, cfg, slot)
    return deliver_unfinished(db, cfg, stop, on_progress)


def send_now(
    db: Database,
    cfg: Config,
    now: datetime,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
    on_wait: Callable[[RunSummary], None] | None = None,
) -> list[RunSummary]:
    """`digest send --now`: resume an unfinished digest, or build one for this moment.
    The editor asked for it now, so a back-off from an earlier failed run is ignored, and
    a run that died holding the digest is taken over as soon as its lease runs out."""
    if not digests.unfinished(db):
        digests.build(db, cfg, digests.manual_slot(now), record_skip=False)
    return deliver_unfinished(db, cfg, stop, on_progress, ignore_backoff=True, on_wait=on_wait)
