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
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

# Cron numbers days of the week from Sunday = 0 (and 7); APScheduler from Monday = 0.
_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAY_TERM = re.compile(r"^(\d)(?:-(\d))?(/\d+)?$")


def _day_names(field: str) -> str:
    """Translate cron day-of-week numbers to names, which APScheduler reads unambiguously."""
    terms = []
    for term in field.split(","):
        m = _DAY_TERM.match(term)
        if m:
            first, last, step = m.groups()
            for digit in (first, last):
                if digit is not None and int(digit) > 7:
                    raise ValueError(f"day of week {digit} is out of range 0-7")
            name = _CRON_DAYS[int(first)]
            if last is not None:
                name += "-" + _CRON_DAYS[int(last)]
            term = name + (step or "")
        terms.append(term)
    return ",".join(terms)


def make_trigger(cron: str, timezone: str) -> CronTrigger:
    """A CronTrigger from a five-field cron expression; ValueError names what is wrong."""
    fields = cron.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression {cron!r} needs 5 fields, it has {len(fields)}")
    minute, hour, day, month, dow = fields
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
        now = start.astimezone(self.zone)
        last_key = None
        while True:
            fire = self.trigger.get_next_fire_time(previous, now)
            if fire is None:
                return
            slot = self._slot(fire)
            if slot.key != last_key:  # the second 02:30 of a fall-back night is not a new slot
                yield slot
            last_key = slot.key
            previous = fire
            now = fire + timedelta(seconds=1)

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
