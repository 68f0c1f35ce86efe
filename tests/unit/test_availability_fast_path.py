"""The grid's arithmetic fast path against the obvious conversions, slot for slot.

`app.scheduling.availability` turns a wall time that occurs once into an instant by subtracting its
offset, and renders it from the wall time; only gap and fold times take the general
`astimezone` conversion. This file keeps the general conversion for every wall time (the
code before the fast path) as an oracle and checks both agree on instants and renderings,
on every transition of several zones, including half-hour and historical odd offsets.
"""

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from app.scheduling.availability import TemplateRange, day_slots
from tests.unit.test_availability_properties import weekly_ranges

UTC = dt.UTC
ZONES = [
    ZoneInfo(z)
    for z in (
        "Europe/Berlin",
        "America/New_York",
        "Australia/Sydney",
        "Australia/Lord_Howe",  # 30-minute changes
        "Asia/Kolkata",  # +05:30, no changes
        "Pacific/Apia",  # skipped 30 December 2011 entirely
        "Europe/Amsterdam",  # +00:19:32 until 1937: an offset with seconds
        "UTC",
    )
]


def transition_days(tz: ZoneInfo, years: range) -> list[dt.date]:
    """Every local day in `years` whose UTC offset at noon differs from the day before."""
    days, day = [], dt.date(years.start, 1, 1)
    previous = dt.datetime.combine(day, dt.time(12), tz).utcoffset()
    while day.year < years.stop:
        day += dt.timedelta(days=1)
        offset = dt.datetime.combine(day, dt.time(12), tz).utcoffset()
        if offset != previous:
            days += [day - dt.timedelta(days=1), day]
        previous = offset
    return days


TRANSITIONS = {tz: transition_days(tz, range(2010, 2028)) for tz in ZONES}
TRANSITIONS[ZoneInfo("Europe/Amsterdam")] += transition_days(
    ZoneInfo("Europe/Amsterdam"), range(1935, 1941)
)


def oracle(day, ranges, tz):
    """Every wall time through `replace` + `astimezone`, as the code did before."""

    def exists(local):
        return local.astimezone(UTC).astimezone(tz).replace(tzinfo=None) == local.replace(
            tzinfo=None
        )

    candidates = []
    for r in ranges:
        if not r.applies_on(day):
            continue
        step = dt.timedelta(minutes=r.slot_minutes)
        cursor = dt.datetime.combine(day, r.start)
        wall_end = dt.datetime.combine(day, r.end)
        end_local = wall_end.replace(tzinfo=tz, fold=0)
        range_end = end_local.astimezone(UTC) if exists(end_local) else None
        while cursor + step <= wall_end:
            local = cursor.replace(tzinfo=tz, fold=0)
            if exists(local):
                start = local.astimezone(UTC)
                candidates.append((start, start + step, range_end))
            cursor += step
    candidates.sort(key=lambda c: c[0])
    slots = []
    for i, (start, end, range_end) in enumerate(candidates):
        next_start = candidates[i + 1][0] if i + 1 < len(candidates) else None
        if (next_start is None or end <= next_start) and (range_end is None or end <= range_end):
            slots.append(
                (start, end, start.astimezone(tz).isoformat(), end.astimezone(tz).isoformat())
            )
    return slots


def ours(day, ranges, tz):
    return [(s.start, s.end, s.start_local, s.end_local) for s in day_slots(day, ranges, tz)]


@st.composite
def zone_and_day(draw):
    tz = draw(st.sampled_from(ZONES))
    any_day = st.dates(dt.date(1990, 1, 1), dt.date(2040, 1, 1))
    changes = TRANSITIONS[tz]
    day = draw(st.one_of(st.sampled_from(changes), any_day) if changes else any_day)
    return tz, day


@settings(max_examples=1500, deadline=None)
@given(ranges=weekly_ranges(), zd=zone_and_day())
def test_fast_path_agrees_with_the_general_conversion(ranges, zd):
    tz, day = zd
    assert ours(day, ranges, tz) == oracle(day, ranges, tz)


def test_every_transition_day_agrees_for_a_round_the_clock_template():
    # Slots every 15 minutes through the whole day, each weekday: every gap and fold of
    # these zones' transitions in the years above falls on one of these walls.
    ranges = [TemplateRange(w, dt.time(0), dt.time(23, 45), 15) for w in range(7)]
    checked = 0
    for tz, days in TRANSITIONS.items():
        for day in days:
            assert ours(day, ranges, tz) == oracle(day, ranges, tz), (tz, day)
            checked += 1
    assert checked > 150  # the transition finder found the changes


def test_renderings_carry_the_offset_in_force():
    berlin = ZoneInfo("Europe/Berlin")
    ranges = [TemplateRange(6, dt.time(1), dt.time(4), 30)]
    autumn = day_slots(dt.date(2026, 10, 25), ranges, berlin)  # 02:00-03:00 twice
    assert [s.start_local for s in autumn] == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T01:30:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:30:00+02:00",
        "2026-10-25T03:00:00+01:00",
        "2026-10-25T03:30:00+01:00",
    ]
    # The first 02:30 (summer time) ends 30 minutes later, when the clock shows 02:00
    # again, in winter time.
    assert autumn[3].end_local == "2026-10-25T02:00:00+01:00"
    spring = day_slots(dt.date(2026, 3, 29), ranges, berlin)  # 02:00-03:00 does not exist
    assert spring[1].start_local == "2026-03-29T01:30:00+01:00"
    assert spring[1].end_local == "2026-03-29T03:00:00+02:00"
