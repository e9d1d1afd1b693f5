"""Schedule slots: cron in the configured zone, DST weeks, the due slot and its grace."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from mailer.scheduler import Schedule

BERLIN = ZoneInfo("Europe/Berlin")


def _local(slots, zone=BERLIN):
    return [s.at.astimezone(zone) for s in slots]


def test_weekly_slots_fall_on_the_configured_day_and_local_time():
    schedule = Schedule("0 8 * * mon", "Europe/Berlin")
    slots = _local(schedule.next_slots(datetime(2026, 11, 25, tzinfo=UTC), 3))
    assert [(s.strftime("%a"), s.hour, s.minute) for s in slots] == [("Mon", 8, 0)] * 3
    assert [s.date().isoformat() for s in slots] == ["2026-11-30", "2026-12-07", "2026-12-14"]


def test_cron_day_numbers_mean_what_they_mean_in_cron():
    # In cron 1 is Monday; APScheduler would read a bare 1 as Tuesday.
    monday = Schedule("0 8 * * 1", "UTC").next_slots(datetime(2026, 11, 25, tzinfo=UTC), 1)[0]
    sunday = Schedule("0 8 * * 0", "UTC").next_slots(datetime(2026, 11, 25, tzinfo=UTC), 1)[0]
    assert monday.at.strftime("%a") == "Mon"
    assert sunday.at.strftime("%a") == "Sun"


def test_spring_forward_week_keeps_the_local_send_time_and_skips_no_week():
    # 29 March 2026: Berlin goes from CET (+1) to CEST (+2).
    schedule = Schedule("0 8 * * sun", "Europe/Berlin")
    slots = schedule.next_slots(datetime(2026, 3, 20, tzinfo=UTC), 3)
    local = _local(slots)
    assert [s.date().isoformat() for s in local] == ["2026-03-22", "2026-03-29", "2026-04-05"]
    assert all(s.hour == 8 for s in local)
    # The UTC instant moves by an hour: the week is 167 hours long, not 168.
    assert slots[1].at - slots[0].at == timedelta(hours=167)


def test_fall_back_night_gives_one_slot_not_two_when_the_time_repeats():
    # 25 October 2026, 02:30 happens twice in Berlin; APScheduler fires at both.
    schedule = Schedule("30 2 * * sun", "Europe/Berlin")
    slots = schedule.next_slots(datetime(2026, 10, 20, tzinfo=UTC), 3)
    assert [s.key for s in slots] == ["2026-10-25T02:30", "2026-11-01T02:30", "2026-11-08T02:30"]


def test_spring_forward_gap_time_still_gets_its_slot():
    # 02:30 does not exist on 29 March 2026 in Berlin: the slot still happens that night.
    schedule = Schedule("30 2 * * sun", "Europe/Berlin")
    slots = schedule.next_slots(datetime(2026, 3, 25, tzinfo=UTC), 2)
    assert [s.at.astimezone(BERLIN).date().isoformat() for s in slots] == ["2026-03-29", "2026-04-05"]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (datetime(2026, 11, 30, 6, 59, tzinfo=UTC), None),  # a minute before the slot
        (datetime(2026, 11, 30, 7, 0, tzinfo=UTC), "2026-11-30T08:00"),  # on time
        (datetime(2026, 11, 30, 18, 0, tzinfo=UTC), "2026-11-30T08:00"),  # 11 h late: in grace
        (datetime(2026, 11, 30, 20, 0, tzinfo=UTC), None),  # 13 h late: past the grace
    ],
)
def test_due_slot_is_the_latest_past_slot_within_the_grace_period(now, expected):
    schedule = Schedule("0 8 * * mon", "Europe/Berlin")
    slot = schedule.due_slot(now, timedelta(hours=12))
    assert (slot.key if slot else None) == expected


def test_an_expression_restricting_both_day_fields_is_refused():
    # cron would send on the 1st OR on Mondays; APScheduler only on Mondays the 1st.
    with pytest.raises(ValueError, match="restricts both day of month and day of week"):
        Schedule("0 8 1 * mon", "UTC")


def test_a_zero_grace_period_still_sends_the_slot_when_the_job_runs_a_moment_late(
    seeded, tmp_path, smtp_server
):
    from freezegun import freeze_time

    from mailer import campaign
    from mailer.config import load_config
    from tests.conftest import write_config

    cfg = load_config(str(write_config(tmp_path, smtp_server.port, schedule={"grace_hours": 0})))
    with freeze_time(datetime(2026, 11, 30, 7, 0, 2, tzinfo=UTC)):
        campaign.run_due(seeded, cfg, datetime(2026, 11, 30, 7, 0, 2, tzinfo=UTC))
    assert len(smtp_server.received) == 3
