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
from mailer.errors import InputError
from mailer.models import Digest
from mailer.scheduler import Schedule, Slot

MIN_GRACE = timedelta(minutes=5)


def deliver_unfinished(
    db: Database,
    cfg: Config,
    stop: threading.Event | None = None,
    on_progress: Callable[[RunSummary, int], None] | None = None,
    ignore_backoff: bool = False,
) -> list[RunSummary]:
    """Deliver (resume) every digest that has not finished, oldest first, beside any other
    runs working on it. A digest whose last run stopped on a relay-wide problem waits for
    its back-off, unless asked not to."""
    out = []
    for d in digests.unfinished(db):
        if stop is not None and stop.is_set():
            break
        out.append(delivery.deliver(db, cfg, d.id, stop, on_progress, ignore_backoff))
    return out


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
) -> list[RunSummary]:
    """`digest send --now`: resume an unfinished digest (joining any runs delivering it
    now, here or on other hosts), or build one for this moment. The editor asked for it
    now, so a back-off from an earlier failed run is ignored."""
    if not digests.unfinished(db):
        digests.build(db, cfg, digests.manual_slot(now), record_skip=False, manual=True)
    return deliver_unfinished(db, cfg, stop, on_progress, ignore_backoff=True)


def next_slot(cfg: Config, now: datetime) -> Slot:
    """The schedule's next slot after `now` (an InputError if the schedule has none)."""
    upcoming = Schedule.of(cfg).next_slots(now, 1)
    if not upcoming:
        raise InputError(f"the schedule {cfg.schedule.cron!r} has no next slot")
    return upcoming[0]


def skip_next(db: Database, cfg: Config, now: datetime) -> Digest:
    """`schedule skip`: the next slot sends nothing (a `skipped` digest row for it now)."""
    return digests.skip_slot(db, next_slot(cfg, now))


def unskip_next(db: Database, cfg: Config, now: datetime) -> Slot:
    """`schedule skip --undo`: the next slot sends as scheduled again."""
    slot = next_slot(cfg, now)
    digests.unskip_slot(db, slot)
    return slot
