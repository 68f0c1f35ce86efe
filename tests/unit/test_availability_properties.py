"""Property tests of the pure availability function (hypothesis)."""

import datetime as dt
from itertools import pairwise
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from app.scheduling.availability import Interval, TemplateRange, day_slots

ZONES = [ZoneInfo(z) for z in ("Europe/Berlin", "America/New_York", "Australia/Sydney", "UTC")]
# Days around every 2026 transition of these zones, plus ordinary days.
DAYS = st.one_of(
    st.sampled_from(
        [
            dt.date(2026, 3, 8),
            dt.date(2026, 3, 29),
            dt.date(2026, 4, 5),
            dt.date(2026, 10, 4),
            dt.date(2026, 10, 25),
            dt.date(2026, 11, 1),
        ]
    ),
    st.dates(dt.date(2026, 1, 1), dt.date(2027, 12, 31)),
)


@st.composite
def weekly_ranges(draw):
    """Non-overlapping ranges per weekday, anywhere in the 24 hours (night shifts too)."""
    ranges = []
    for weekday in range(7):
        cursor = draw(st.integers(0, 12 * 60))
        for _ in range(draw(st.integers(0, 3))):
            slot = draw(st.sampled_from([10, 15, 20, 30, 45, 60]))
            length = slot * draw(st.integers(1, 8))
            if cursor + length > 24 * 60 - 1:
                break
            start = dt.time(cursor // 60, cursor % 60)
            end_minutes = cursor + length
            end = dt.time(end_minutes // 60, end_minutes % 60) if end_minutes < 1440 else None
            if end is None:
                break
            ranges.append(TemplateRange(weekday, start, end, slot))
            cursor = end_minutes + draw(st.integers(0, 120))
    return ranges


def intervals_on(day, tz, draw, count):
    base = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)
    result = []
    for _ in range(count):
        start = base + dt.timedelta(minutes=draw(st.integers(-120, 26 * 60)))
        result.append(Interval(start, start + dt.timedelta(minutes=draw(st.integers(1, 240)))))
    return result


@settings(max_examples=300, deadline=None)
@given(data=st.data(), ranges=weekly_ranges(), day=DAYS, tz=st.sampled_from(ZONES))
def test_slot_properties(data, ranges, day, tz):
    booked = intervals_on(day, tz, data.draw, data.draw(st.integers(0, 6)))
    blocked = intervals_on(day, tz, data.draw, data.draw(st.integers(0, 2)))
    slots = day_slots(day, ranges, tz, booked=booked, blocked=blocked)
    busy = [*booked, *blocked]

    for slot in slots:
        interval = Interval(slot.start, slot.end)
        # Free slots overlap no booking and no exception; taken ones overlap something.
        assert slot.available == (not any(interval.overlaps(b) for b in busy))
        # Every slot lies inside a template range of that weekday, in local wall time.
        local = slot.start.astimezone(tz)
        assert local.date() == day
        minutes = local.hour * 60 + local.minute
        assert any(
            r.weekday == day.weekday()
            and r.start.hour * 60 + r.start.minute <= minutes
            and minutes + r.slot_minutes <= r.end.hour * 60 + r.end.minute
            and (minutes - r.start.hour * 60 - r.start.minute) % r.slot_minutes == 0
            for r in ranges
        )
    starts = [s.start for s in slots]
    assert starts == sorted(starts)
    assert all(a.end <= b.start for a, b in pairwise(slots))


def _real(wall: dt.datetime, tz: ZoneInfo) -> dt.datetime | None:
    """The instant of a wall time, or None when the clocks skip it."""
    aware = wall.replace(tzinfo=tz)
    instant = aware.astimezone(dt.UTC)
    return instant if instant.astimezone(tz).replace(tzinfo=None) == wall else None


@settings(max_examples=300, deadline=None)
@given(ranges=weekly_ranges(), day=DAYS, tz=st.sampled_from(ZONES))
def test_grid_is_complete_on_ordinary_wall_times(ranges, day, tz):
    """Each wall time the template names is a slot, unless the clocks skip it, or its
    slot would run past the next slot or the range's end across the spring-forward gap."""
    slots = day_slots(day, ranges, tz)
    got = {s.start for s in slots}
    wanted = []  # (start, end, end of its range) for every existing wall time
    for r in ranges:
        if r.weekday != day.weekday():
            continue
        step = dt.timedelta(minutes=r.slot_minutes)
        range_end = _real(dt.datetime.combine(day, r.end), tz)
        cursor = dt.datetime.combine(day, r.start)
        while cursor + step <= dt.datetime.combine(day, r.end):
            if (instant := _real(cursor, tz)) is not None:
                wanted.append((instant, instant + step, range_end))
            cursor += step
    wanted.sort()
    for i, (start, end, range_end) in enumerate(wanted):
        fits = (i + 1 == len(wanted) or end <= wanted[i + 1][0]) and (
            range_end is None or end <= range_end
        )
        assert (start in got) == fits
    assert len(wanted) - len(slots) <= 1  # at most the one slot that runs into the gap


def test_a_slot_across_the_spring_forward_gap_is_dropped_not_overlapped():
    """Found by hypothesis: New York, 2026-03-08, 00:00-03:45 in 45-minute slots."""
    tz = ZoneInfo("America/New_York")
    ranges = [TemplateRange(6, dt.time(0), dt.time(3, 45), 45)]
    slots = day_slots(dt.date(2026, 3, 8), ranges, tz)
    starts = [s.start.astimezone(tz).strftime("%H:%M") for s in slots]
    assert starts == ["00:00", "00:45", "03:00"]  # 01:30-02:15 would end inside the gap
    assert all(a.end <= b.start for a, b in pairwise(slots))


@given(window_start=st.integers(0, 24 * 60), window_len=st.integers(0, 24 * 60))
def test_notice_and_horizon_window(window_start, window_len):
    tz = ZoneInfo("Europe/Berlin")
    day = dt.date(2026, 6, 1)
    ranges = [TemplateRange(0, dt.time(0), dt.time(23, 30), 30)]
    base = dt.datetime.combine(day, dt.time(), tzinfo=tz)
    lo = base + dt.timedelta(minutes=window_start)
    hi = lo + dt.timedelta(minutes=window_len)
    for slot in day_slots(day, ranges, tz, not_before=lo, not_after=hi):
        assert slot.available == (lo <= slot.start <= hi)
