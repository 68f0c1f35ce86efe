"""The slot grid: clinic-local wall time laid out first, instants second."""

import datetime as dt
from zoneinfo import ZoneInfo

from app.scheduling.availability import (
    Interval,
    TemplateRange,
    day_grid,
    day_slots,
    local_day_bounds,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MORNING = [TemplateRange(d, dt.time(9), dt.time(12), 30) for d in range(7)]


def local_starts(slots, tz):
    return [s.start.astimezone(tz).strftime("%H:%M") for s in slots]


def test_a_morning_range_gives_half_hour_slots():
    grid = day_grid(dt.date(2026, 6, 1), MORNING, BERLIN)
    assert local_starts(grid, BERLIN) == ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]
    assert all(s.end - s.start == dt.timedelta(minutes=30) for s in grid)


def test_dst_days_keep_local_wall_time():
    for tz, days in (
        (BERLIN, (dt.date(2026, 3, 29), dt.date(2026, 10, 25))),
        (NEW_YORK, (dt.date(2026, 3, 8), dt.date(2026, 11, 1))),
    ):
        for day in days:
            grid = day_grid(day, MORNING, tz)
            assert local_starts(grid, tz)[0] == "09:00", (tz, day)
            assert len(grid) == 6


def test_night_range_skips_the_spring_forward_gap_and_keeps_fall_back_once():
    night = [TemplateRange(6, dt.time(1), dt.time(4), 30)]
    spring = day_grid(dt.date(2026, 3, 29), night, BERLIN)  # 02:00-03:00 does not exist
    assert local_starts(spring, BERLIN) == ["01:00", "01:30", "03:00", "03:30"]
    autumn = day_grid(dt.date(2026, 10, 25), night, BERLIN)  # 02:00-03:00 happens twice
    assert len(autumn) == 6
    assert len({s.start for s in autumn}) == 6


def test_day_bounds_are_23_and_25_hours_on_change_days():
    assert local_day_bounds(dt.date(2026, 3, 29), BERLIN).end - local_day_bounds(
        dt.date(2026, 3, 29), BERLIN
    ).start == dt.timedelta(hours=23)
    bounds = local_day_bounds(dt.date(2026, 10, 25), BERLIN)
    assert bounds.end - bounds.start == dt.timedelta(hours=25)


def test_bookings_and_exceptions_make_slots_unavailable():
    day = dt.date(2026, 6, 1)
    grid = day_grid(day, MORNING, BERLIN)
    booked = [Interval(grid[1].start, grid[1].end)]
    leave = [Interval(grid[3].start + dt.timedelta(minutes=10), grid[4].end)]
    slots = day_slots(day, MORNING, BERLIN, booked=booked, blocked=leave)
    assert [s.available for s in slots] == [True, False, True, False, False, True]


def test_validity_dates_limit_a_range():
    ranged = [TemplateRange(0, dt.time(9), dt.time(10), 30, valid_from=dt.date(2026, 6, 8))]
    assert day_grid(dt.date(2026, 6, 1), ranged, BERLIN) == []
    assert len(day_grid(dt.date(2026, 6, 8), ranged, BERLIN)) == 2
