"""Pure availability: weekly template + exceptions + bookings + now -> slots. No I/O.

Templates are clinic-local wall time. Each slot is laid out on the wall clock of its day
and only then turned into an instant, so a 09:00 slot is at 09:00 local on both sides of a
daylight-saving change. Wall times that do not exist (the spring-forward gap) yield no
slot, nor does a slot that would run past the start of the next one across that gap; wall
times that occur twice (fall-back) use their first occurrence.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from zoneinfo import ZoneInfo

UTC = dt.UTC

# The value types below are named tuples: immutable like frozen dataclasses, but built in
# less than half the time, and a cache miss builds a hundred (bench/README.md, "Figures
# behind the code").


class TemplateRange(NamedTuple):
    """One weekly range of working hours, e.g. Mondays 09:00-12:00 in 30-minute slots."""

    weekday: int  # 0 = Monday
    start: dt.time
    end: dt.time
    slot_minutes: int
    valid_from: dt.date | None = None
    valid_to: dt.date | None = None

    def applies_on(self, day: dt.date) -> bool:
        return (
            day.weekday() == self.weekday
            and (self.valid_from is None or day >= self.valid_from)
            and (self.valid_to is None or day <= self.valid_to)
        )


class Visit(NamedTuple):
    """The shape of a visit type: its length and the buffers it blocks before and after
    (preparation, cleaning), in minutes. Its start times follow the template's grid."""

    minutes: int
    buffer_before: int = 0
    buffer_after: int = 0


class Interval(NamedTuple):
    """A half-open span of instants [start, end), e.g. a booking or a leave."""

    start: dt.datetime
    end: dt.datetime

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end


class Slot(NamedTuple):
    """A slot with whether it can be booked; `start_local` / `end_local` are its times in
    ISO 8601 on the clinic's wall clock with the UTC offset then in force."""

    start: dt.datetime
    end: dt.datetime
    available: bool
    start_local: str
    end_local: str


_NAIVE_EPOCH = dt.datetime(1970, 1, 1)
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_OFFSET_SUFFIXES: dict[dt.timedelta, str] = {}


def _offset_suffix(offset: dt.timedelta) -> str:
    """The offset as `datetime.isoformat` writes it: "+01:00", with seconds if it has any."""
    suffix = _OFFSET_SUFFIXES.get(offset)
    if suffix is None:
        probe = dt.datetime(2000, 1, 1, tzinfo=dt.timezone(offset)).isoformat()
        suffix = _OFFSET_SUFFIXES[offset] = probe[19:]
    return suffix


def _unique_offset(wall: dt.datetime, tz: ZoneInfo) -> dt.timedelta | None:
    """The UTC offset of a naive wall time that occurs exactly once; None when it falls in
    a spring-forward gap or a fall-back fold. By PEP 495 a wall time's two readings
    (fold=0 and fold=1) differ there and only there, so comparing them is an exact test:
    two offset look-ups and a `replace`, where the general conversion below takes five
    conversions and replaces."""
    offset = tz.utcoffset(wall)
    return offset if offset == tz.utcoffset(wall.replace(fold=1)) else None


def _exists(local: dt.datetime, tz: ZoneInfo) -> bool:
    """False for wall times skipped by a spring-forward change."""
    round_trip = local.astimezone(UTC).astimezone(tz)
    return round_trip.replace(tzinfo=None) == local.replace(tzinfo=None)


def _instant(wall: dt.datetime, tz: ZoneInfo) -> tuple[dt.datetime, str] | None:
    """A naive clinic-local wall time as (UTC instant, local ISO 8601): its first
    occurrence when it happens twice, None when it does not exist.

    Most wall times occur once, and for them the instant is plain arithmetic on the offset
    (`datetime.replace` and `astimezone` add up to a tenth of a miss's Python time over a
    day's slots); the rare gap or fold takes the general conversion."""
    offset = _unique_offset(wall, tz)
    if offset is not None:
        instant = _UTC_EPOCH + (wall - _NAIVE_EPOCH - offset)
        return instant, wall.isoformat() + _offset_suffix(offset)
    local = wall.replace(tzinfo=tz, fold=0)
    if not _exists(local, tz):
        return None
    return local.astimezone(UTC), local.isoformat()


# A slot as laid out: its instants and their clinic-local renderings.
_Laid = tuple[dt.datetime, dt.datetime, str, str]


def _lay_out(day: dt.date, ranges: Iterable[TemplateRange], tz: ZoneInfo) -> list[_Laid]:
    """`day_grid`, with each slot's local renderings (see `Slot`)."""
    candidates: list[tuple[dt.datetime, dt.datetime, dt.datetime | None, str, str]] = []
    for r in ranges:
        if not r.applies_on(day):
            continue
        step = dt.timedelta(minutes=r.slot_minutes)
        wall_end = dt.datetime.combine(day, r.end)
        end_of_range = _instant(wall_end, tz)
        range_end = end_of_range[0] if end_of_range is not None else None
        cursor = dt.datetime.combine(day, r.start)
        here = _instant(cursor, tz)
        while cursor + step <= wall_end:
            # Each wall time is converted once: a slot's end is the next slot's start.
            cursor += step
            there = _instant(cursor, tz)
            if here is not None:
                start, start_local = here
                end = start + step  # a slot lasts its length, even across a change
                if there is not None and there[0] == end:
                    end_local = there[1]
                else:
                    end_local = end.astimezone(tz).isoformat()
                candidates.append((start, end, range_end, start_local, end_local))
            here = there
    candidates.sort(key=lambda c: c[0])
    # On a spring-forward day the wall clock jumps an hour: a slot laid out just before the
    # gap lasts its real length and can run past the next slot's start or past the end of
    # its range (01:30 + 45 min ends at 03:15 when 02:00-03:00 is skipped). Such a slot is
    # dropped, so slots never overlap and never outlast the doctor's hours.
    slots: list[_Laid] = []
    for i, (start, end, range_end, start_local, end_local) in enumerate(candidates):
        next_start = candidates[i + 1][0] if i + 1 < len(candidates) else None
        if (next_start is None or end <= next_start) and (range_end is None or end <= range_end):
            slots.append((start, end, start_local, end_local))
    return slots


def day_grid(day: dt.date, ranges: Iterable[TemplateRange], tz: ZoneInfo) -> list[Interval]:
    """The template's slots on one clinic-local day, as UTC instants, in time order.

    Args:
        day: the clinic-local calendar day.
        ranges: the doctor's weekly ranges (any weekdays; others are ignored).
        tz: the clinic's time zone.

    Returns:
        One interval per slot whose start and end fit in a range on that day.
    """
    return [Interval(start, end) for start, end, _, _ in _lay_out(day, ranges, tz)]


def _fit(laid: list[_Laid], visit: Visit, tz: ZoneInfo) -> list[_Laid]:
    """The visits that fit the laid-out grid: one per grid slot from whose start the
    visit's whole length runs through touching grid slots (the doctor's hours without a
    break; on a spring-forward day the slots either side of the gap touch in real time).
    A visit lasts its real length; its end is rendered on the wall clock then in force."""
    length = dt.timedelta(minutes=visit.minutes)
    fitted: list[_Laid] = []
    for i, (start, _, start_local, _) in enumerate(laid):
        end = start + length
        j = i
        while laid[j][1] < end and j + 1 < len(laid) and laid[j + 1][0] == laid[j][1]:
            j += 1
        last_end, last_end_local = laid[j][1], laid[j][3]
        if last_end < end:
            continue  # runs past the hours (or into a break)
        end_local = last_end_local if last_end == end else end.astimezone(tz).isoformat()
        fitted.append((start, end, start_local, end_local))
    return fitted


def day_slots(
    day: dt.date,
    ranges: Iterable[TemplateRange],
    tz: ZoneInfo,
    *,
    booked: Sequence[Interval] = (),
    blocked: Sequence[Interval] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    visit: Visit | None = None,
) -> list[Slot]:
    """Every slot of a day with whether it can be booked.

    A slot is unavailable when it overlaps a booking or an exception, starts before
    `not_before` (now plus the minimum notice) or after `not_after` (the horizon).
    Bookings and exceptions are sorted once and swept alongside the sorted slots, so the
    work is O((slots + bookings) log) rather than one comparison per slot and booking.

    With a `visit` type, each slot is a visit of that length starting on the grid (see
    `_fit`), and what must be free of bookings and exceptions is the visit with its
    buffers: [start - buffer_before, end + buffer_after). Buffers may reach outside the
    doctor's hours (preparing before opening is fine), never into another visit's span.

    Args:
        day: the clinic-local day.
        ranges: the doctor's weekly template.
        tz: the clinic's time zone.
        booked: the spans active appointments block (with their buffers), overlapping
            the day.
        blocked: schedule exceptions overlapping the day.
        not_before: earliest bookable start.
        not_after: latest bookable start.
        visit: the visit type booked; None: the template's own slots, no buffers.

    Returns:
        Slots in time order.
    """
    busy = sorted([*booked, *blocked], key=lambda i: i.start)
    laid = _lay_out(day, ranges, tz)
    before = after = dt.timedelta()
    if visit is not None:
        laid = _fit(laid, visit, tz)
        before = dt.timedelta(minutes=visit.buffer_before)
        after = dt.timedelta(minutes=visit.buffer_after)
    result: list[Slot] = []
    first = 0  # busy intervals before this index end before the current span starts
    for start, end, start_local, end_local in laid:
        span_start, span_end = start - before, end + after
        while first < len(busy) and busy[first].end <= span_start:
            first += 1
        taken = False
        i = first
        while i < len(busy) and busy[i].start < span_end:
            if busy[i].end > span_start:
                taken = True
                break
            i += 1
        in_window = (not_before is None or start >= not_before) and (
            not_after is None or start <= not_after
        )
        result.append(Slot(start, end, in_window and not taken, start_local, end_local))
    return result


def local_day_bounds(day: dt.date, tz: ZoneInfo) -> Interval:
    """The instants a clinic-local day spans (23 or 25 hours on change days)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(UTC)
    return Interval(start, end)
