"""Which days of leave or a closure reach the slot cache and open pages (pure)."""

import datetime as dt
from zoneinfo import ZoneInfo

from app.scheduling.schedules import INVALIDATE_DAYS_BACK, changed_days
from app.scheduling.slots import local_days
from app.scheduling.visit_types import MAX_HORIZON_DAYS

ZONE = "Europe/Berlin"
NOW = dt.datetime(2026, 3, 10, 9, 30, tzinfo=dt.UTC)
TODAY = dt.date(2026, 3, 10)


def at(day: dt.date, hour: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour), ZoneInfo(ZONE))


def test_leave_within_the_horizon_reaches_every_day_it_touches():
    starts, ends = at(TODAY + dt.timedelta(days=3), 14), at(TODAY + dt.timedelta(days=9), 12)
    assert changed_days(starts, ends, ZONE, NOW) == local_days(starts, ends, ZONE)


def test_a_closure_over_centuries_reaches_only_the_days_anyone_can_book():
    days = changed_days(at(dt.date(1900, 1, 1)), at(dt.date(2999, 12, 31)), ZONE, NOW)
    assert days[0] == TODAY - dt.timedelta(days=INVALIDATE_DAYS_BACK)
    assert days[-1] == TODAY + dt.timedelta(days=MAX_HORIZON_DAYS)
    assert len(days) == INVALIDATE_DAYS_BACK + MAX_HORIZON_DAYS + 1  # consecutive days
    assert days == sorted(set(days))


def test_leave_long_past_or_far_ahead_reaches_no_day():
    past = changed_days(at(dt.date(2020, 1, 1)), at(dt.date(2020, 2, 1)), ZONE, NOW)
    far = TODAY + dt.timedelta(days=MAX_HORIZON_DAYS + 5)
    ahead = changed_days(at(far), at(far + dt.timedelta(days=3)), ZONE, NOW)
    assert past == [] and ahead == []


def test_the_window_is_the_clinic_s_local_days():
    # 23:30 UTC on the 10th is already the 11th in Berlin: yesterday there is the 10th.
    late = dt.datetime(2026, 3, 10, 23, 30, tzinfo=dt.UTC)
    days = changed_days(at(dt.date(2026, 3, 1)), at(dt.date(2026, 3, 20)), ZONE, late)
    assert days[0] == dt.date(2026, 3, 10)
