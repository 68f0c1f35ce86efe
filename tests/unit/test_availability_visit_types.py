"""The pure availability function with visit types: lengths, buffers, DST days."""

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from app.scheduling.availability import Interval, TemplateRange, Visit, day_slots
from tests.unit.test_availability_properties import DAYS, ZONES, intervals_on, weekly_ranges

BERLIN = ZoneInfo("Europe/Berlin")
VISITS = st.builds(
    Visit,
    minutes=st.sampled_from([5, 10, 15, 20, 30, 45, 60, 90, 120]),
    buffer_before=st.sampled_from([0, 0, 5, 10, 30]),
    buffer_after=st.sampled_from([0, 0, 5, 15, 60]),
)


def _covered(start: dt.datetime, end: dt.datetime, grid: list[Interval]) -> bool:
    """Whether [start, end) lies in the union of the grid's slots without a hole."""
    cursor = start
    for slot in grid:
        if slot.start <= cursor < slot.end:
            cursor = slot.end
        if cursor >= end:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(data=st.data(), ranges=weekly_ranges(), day=DAYS, tz=st.sampled_from(ZONES), visit=VISITS)
def test_visit_properties(data, ranges, day, tz, visit):
    booked = intervals_on(day, tz, data.draw, data.draw(st.integers(0, 6)))
    blocked = intervals_on(day, tz, data.draw, data.draw(st.integers(0, 2)))
    grid = day_slots(day, ranges, tz)
    grid_intervals = [Interval(s.start, s.end) for s in grid]
    visits = day_slots(day, ranges, tz, booked=booked, blocked=blocked, visit=visit)
    busy = [*booked, *blocked]
    before = dt.timedelta(minutes=visit.buffer_before)
    after = dt.timedelta(minutes=visit.buffer_after)
    grid_starts = {s.start for s in grid}
    for v in visits:
        # On the template's grid, exactly the visit's real length, inside the hours.
        assert v.start in grid_starts
        assert v.end - v.start == dt.timedelta(minutes=visit.minutes)
        assert _covered(v.start, v.end, grid_intervals)
        # Free exactly when the visit with its buffers touches no booking or exception.
        span = Interval(v.start - before, v.end + after)
        assert v.available == (not any(span.overlaps(b) for b in busy))
        assert dt.datetime.fromisoformat(v.start_local) == v.start
        assert dt.datetime.fromisoformat(v.end_local) == v.end
    # Complete: every grid start from which the visit fits in the hours is offered.
    offered = {v.start for v in visits}
    for s in grid:
        end = s.start + dt.timedelta(minutes=visit.minutes)
        assert (s.start in offered) == _covered(s.start, end, grid_intervals)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), day=DAYS, tz=st.sampled_from(ZONES), step=st.sampled_from([10, 15, 30]))
def test_a_visit_of_one_grid_step_without_buffers_is_the_plain_slot(data, day, tz, step):
    ranges = [TemplateRange(day.weekday(), dt.time(7), dt.time(19), step)]
    booked = intervals_on(day, tz, data.draw, data.draw(st.integers(0, 6)))
    plain = day_slots(day, ranges, tz, booked=booked)
    typed = day_slots(day, ranges, tz, booked=booked, visit=Visit(step))
    assert typed == plain


@settings(max_examples=200, deadline=None)
@given(data=st.data(), day=DAYS, tz=st.sampled_from(ZONES), visit=VISITS)
def test_buffers_only_take_times_away(data, day, tz, visit):
    """A time free with buffers is free without them; the buffers never add a time."""
    ranges = [TemplateRange(day.weekday(), dt.time(8), dt.time(18), 15)]
    booked = intervals_on(day, tz, data.draw, data.draw(st.integers(0, 8)))
    bare = day_slots(day, ranges, tz, booked=booked, visit=Visit(visit.minutes))
    buffered = day_slots(day, ranges, tz, booked=booked, visit=visit)
    assert [s.start for s in bare] == [s.start for s in buffered]
    assert all(b.available for a, b in zip(buffered, bare, strict=True) if a.available)


def _local(slots, tz=BERLIN):
    return [
        (s.start.astimezone(tz).strftime("%H:%M"), s.end.astimezone(tz).strftime("%H:%M"))
        for s in slots
    ]


def test_a_thirty_minute_visit_on_a_fifteen_minute_grid_needs_both_steps():
    day = dt.date(2026, 6, 1)  # a Monday
    ranges = [TemplateRange(0, dt.time(9), dt.time(10), 15)]
    slots = day_slots(day, ranges, BERLIN, visit=Visit(30))
    assert _local(slots) == [("09:00", "09:30"), ("09:15", "09:45"), ("09:30", "10:00")]


def test_a_buffer_keeps_the_next_visit_out_and_a_booking_after_it_too():
    day = dt.date(2026, 6, 1)
    ranges = [TemplateRange(0, dt.time(9), dt.time(12), 15)]
    start = dt.datetime(2026, 6, 1, 10, 0, tzinfo=BERLIN).astimezone(dt.UTC)
    # A visit booked 10:00-10:30 with a 15-minute buffer after it blocks until 10:45.
    booked = [Interval(start, start + dt.timedelta(minutes=45))]
    slots = day_slots(day, ranges, BERLIN, booked=booked, visit=Visit(15, 0, 10))
    free = {s.start.astimezone(BERLIN).strftime("%H:%M") for s in slots if s.available}
    # 09:45 + 15 + 10 after runs into 10:00; 10:45 is the first start after the buffer.
    assert "09:30" in free and "09:45" not in free and "10:30" not in free
    assert "10:45" in free
    # A 10-minute preparation before: 10:45 would start preparing inside the buffer.
    slots = day_slots(day, ranges, BERLIN, booked=booked, visit=Visit(15, 10, 0))
    free = {s.start.astimezone(BERLIN).strftime("%H:%M") for s in slots if s.available}
    assert "09:45" in free and "10:45" not in free and "11:00" in free


def test_a_visit_does_not_span_a_lunch_break():
    day = dt.date(2026, 6, 1)
    ranges = [
        TemplateRange(0, dt.time(9), dt.time(12), 30),
        TemplateRange(0, dt.time(13), dt.time(15), 30),
    ]
    starts = [s for s, _ in _local(day_slots(day, ranges, BERLIN, visit=Visit(60)))]
    assert "11:30" not in starts and "11:00" in starts and "14:00" in starts
    assert "14:30" not in starts


def test_spring_forward_day_keeps_wall_times_and_real_lengths():
    day = dt.date(2026, 3, 29)  # Berlin: 02:00 -> 03:00
    ranges = [
        TemplateRange(6, dt.time(9), dt.time(11), 15),
        TemplateRange(6, dt.time(0), dt.time(5), 30),
    ]
    slots = day_slots(day, ranges, BERLIN, visit=Visit(60, 0, 15))
    local = _local(slots)
    assert ("09:00", "10:00") in local and ("10:00", "11:00") in local
    assert ("10:15", "11:15") not in local  # would run past the hours
    assert slots[[s for s, _ in local].index("09:00")].start == dt.datetime(
        2026, 3, 29, 7, 0, tzinfo=dt.UTC
    )  # summer time: UTC+2
    # In the night range the gap is skipped: 01:30 + 60 real minutes ends at 03:30.
    assert ("01:30", "03:30") in local
    assert all(s.end - s.start == dt.timedelta(minutes=60) for s in slots)
    assert not any(s.start.astimezone(BERLIN).hour == 2 for s in slots)


def test_fall_back_day_keeps_wall_times_and_real_lengths():
    day = dt.date(2026, 10, 25)  # Berlin: 03:00 -> 02:00
    ranges = [
        TemplateRange(6, dt.time(9), dt.time(11), 15),
        TemplateRange(6, dt.time(0), dt.time(5), 30),
    ]
    slots = day_slots(day, ranges, BERLIN, visit=Visit(30, 5, 5))
    local = _local(slots)
    nine = slots[[s for s, _ in local].index("09:00")]
    assert nine.start == dt.datetime(2026, 10, 25, 8, 0, tzinfo=dt.UTC)  # winter time: UTC+1
    assert nine.start_local == "2026-10-25T09:00:00+01:00"
    assert nine.end_local == "2026-10-25T09:30:00+01:00"
    assert all(s.end - s.start == dt.timedelta(minutes=30) for s in slots)
    # The repeated hour is used once: no two visits start at the same instant.
    assert len({s.start for s in slots}) == len(slots)
    # A visit booked 09:00-09:30 (+5 after) keeps 09:30 out, not 09:45.
    booked = [Interval(nine.start, nine.start + dt.timedelta(minutes=35))]
    taken = day_slots(day, ranges, BERLIN, booked=booked, visit=Visit(30, 5, 5))
    free = {s.start_local[11:16] for s in taken if s.available}
    assert "09:30" not in free and "09:45" in free
