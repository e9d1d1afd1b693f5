"""Schedule slots: the cron trigger in the configured zone, and which slot is due.

APScheduler only *triggers*; whether a slot still needs a digest is decided from the
database (mailer.digest.run_due). A slot is identified by its local wall-clock time, so a
DST fall-back that makes the cron trigger fire twice at 02:30 still maps to one slot.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

# Cron numbers days of the week from Sunday = 0 (and 7); APScheduler from Monday = 0. To
# avoid any ambiguity the day-of-week field is expanded here, the cron way, into names.
_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_DAY_TERM = re.compile(r"^(\*|\w+)(?:-(\w+))?(?:/(\d+))?$")


def _day_number(token: str) -> int:
    token = token.lower()
    if token.isdigit() and int(token) <= 7:
        return int(token) % 7
    if token[:3] in _DAY_NAMES and len(token) == 3:
        return _DAY_NAMES.index(token)
    raise ValueError(f"day of week {token!r} is not 0-7 or a day name")


def _day_names(field: str) -> str:
    """A cron day-of-week field as an explicit list of day names, e.g. "1-5" -> mon..fri."""
    days: set[int] = set()
    for term in field.split(","):
        m = _DAY_TERM.match(term)
        if not m:
            raise ValueError(f"day of week {term!r} is not understood")
        first, last, step = m.groups()
        if first == "*":
            lo, hi = 0, 6
        else:
            lo = _day_number(first)
            # 7 is Sunday too, and the natural end of a range such as 1-7.
            hi = (7 if last == "7" else _day_number(last)) if last else (lo if not step else 6)
        if hi < lo:
            raise ValueError(f"day-of-week range {term!r} runs backwards")
        days.update(d % 7 for d in range(lo, hi + 1, int(step or 1)))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def make_trigger(cron: str, timezone: str) -> CronTrigger:
    """A CronTrigger from a five-field cron expression; ValueError names what is wrong."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {cron!r} needs 5 fields, it has {len(fields)}")
    minute, hour, day, month, dow = fields
    if day != "*" and dow != "*":
        # cron runs when EITHER field matches, APScheduler only when both do: refuse
        # rather than send on different days than the expression says.
        raise ValueError(
            f"cron expression {cron!r} restricts both day of month and day of week; restrict only one"
        )
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_day_names(dow),
            timezone=ZoneInfo(timezone),
        )
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None


@dataclass(frozen=True)
class Slot:
    key: str  # local wall-clock time, e.g. "2026-03-02T08:00"
    at: datetime  # the UTC instant

    def local(self, zone: str) -> datetime:
        return self.at.astimezone(ZoneInfo(zone))


class Schedule:
    @classmethod
    def of(cls, cfg: Any) -> Schedule:
        """The configured schedule (`cfg` is a mailer.config.Config)."""
        return cls(cfg.schedule.cron, cfg.schedule.timezone)

    def __init__(self, cron: str, timezone: str) -> None:
        self.cron = cron
        self.timezone = timezone
        self.zone = ZoneInfo(timezone)
        self.trigger = make_trigger(cron, timezone)

    def _slot(self, fire: datetime) -> Slot:
        local = fire.astimezone(self.zone)
        return Slot(local.strftime("%Y-%m-%dT%H:%M"), fire.astimezone(UTC))

    def slots_from(self, start: datetime) -> Iterator[Slot]:
        """Slots at or after `start`, one per local wall-clock time."""
        previous: datetime | None = None
        # Step in UTC: aware-datetime arithmetic in a local zone is wall-clock arithmetic
        # and would walk back into the first pass of a repeated (fall-back) hour.
        now = start.astimezone(UTC)
        last_key = None
        while True:
            # previous_fire_time is not passed: APScheduler would restart from it in wall-clock
            # time and answer the same folded 02:30 again.
            fire = self.trigger.get_next_fire_time(None, now)
            if fire is None:
                return
            if previous is not None and fire <= previous:
                # The trigger answered with a wall-clock time we already passed (a DST fold).
                now += timedelta(hours=1)
                continue
            slot = self._slot(fire)
            if slot.key != last_key:  # the second 02:30 of a fall-back night is not a new slot
                yield slot
            last_key = slot.key
            previous = fire
            now = fire.astimezone(UTC) + timedelta(seconds=1)

    def next_slots(self, after: datetime, count: int) -> list[Slot]:
        out: list[Slot] = []
        for slot in self.slots_from(after):
            if slot.at > after:
                out.append(slot)
            if len(out) >= count:
                break
        return out

    def due_slot(self, now: datetime, grace: timedelta) -> Slot | None:
        """The most recent slot at or before `now` that is at most `grace` old."""
        due = None
        for slot in self.slots_from(now - grace):
            if slot.at > now:
                break
            due = slot
        return due
