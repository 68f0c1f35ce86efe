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
from dataclasses import dataclass
from zoneinfo import ZoneInfo

UTC = dt.UTC


@dataclass(frozen=True, slots=True)
class TemplateRange:
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


@dataclass(frozen=True, slots=True)
class Interval:
    """A half-open span of instants [start, end), e.g. a booking or a leave."""

    start: dt.datetime
    end: dt.datetime

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end


@dataclass(frozen=True, slots=True)
class Slot:
    start: dt.datetime
    end: dt.datetime
    available: bool


def _exists(local: dt.datetime, tz: ZoneInfo) -> bool:
    """False for wall times skipped by a spring-forward change."""
    round_trip = local.astimezone(UTC).astimezone(tz)
    return round_trip.replace(tzinfo=None) == local.replace(tzinfo=None)


def day_grid(day: dt.date, ranges: Iterable[TemplateRange], tz: ZoneInfo) -> list[Interval]:
    """The template's slots on one clinic-local day, as UTC instants, in time order.

    Args:
        day: the clinic-local calendar day.
        ranges: the doctor's weekly ranges (any weekdays; others are ignored).
        tz: the clinic's time zone.

    Returns:
        One interval per slot whose start and end fit in a range on that day.
    """
    candidates: list[tuple[dt.datetime, dt.datetime, dt.datetime | None]] = []
    for r in ranges:
        if not r.applies_on(day):
            continue
        step = dt.timedelta(minutes=r.slot_minutes)
        cursor = dt.datetime.combine(day, r.start)
        wall_end = dt.datetime.combine(day, r.end)
        end_local = wall_end.replace(tzinfo=tz, fold=0)
        range_end = end_local.astimezone(UTC) if _exists(end_local, tz) else None
        while cursor + step <= wall_end:
            local = cursor.replace(tzinfo=tz, fold=0)
            if _exists(local, tz):
                start = local.astimezone(UTC)
                candidates.append((start, start + step, range_end))
            cursor += step
    candidates.sort(key=lambda c: c[0])
    # On a spring-forward day the wall clock jumps an hour: a slot laid out just before the
    # gap lasts its real length and can run past the next slot's start or past the end of
    # its range (01:30 + 45 min ends at 03:15 when 02:00-03:00 is skipped). Such a slot is
    # dropped, so slots never overlap and never outlast the doctor's hours.
    slots: list[Interval] = []
    for i, (start, end, range_end) in enumerate(candidates):
        next_start = candidates[i + 1][0] if i + 1 < len(candidates) else None
        if (next_start is None or end <= next_start) and (range_end is None or end <= range_end):
            slots.append(Interval(start, end))
    return slots


def day_slots(
    day: dt.date,
    ranges: Iterable[TemplateRange],
    tz: ZoneInfo,
    *,
    booked: Sequence[Interval] = (),
    blocked: Sequence[Interval] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> list[Slot]:
    """Every slot of a day with whether it can be booked.

    A slot is unavailable when it overlaps a booking or an exception, starts before
    `not_before` (now plus the minimum notice) or after `not_after` (the horizon).
    Bookings and exceptions are sorted once and swept alongside the sorted slots, so the
    work is O((slots + bookings) log) rather than one comparison per slot and booking.

    Args:
        day: the clinic-local day.
        ranges: the doctor's weekly template.
        tz: the clinic's time zone.
        booked: active appointments overlapping the day.
        blocked: schedule exceptions overlapping the day.
        not_before: earliest bookable start.
        not_after: latest bookable start.

    Returns:
        Slots in time order.
    """
    busy = sorted([*booked, *blocked], key=lambda i: i.start)
    result: list[Slot] = []
    first = 0  # busy intervals before this index end before the current slot starts
    for slot in day_grid(day, ranges, tz):
        while first < len(busy) and busy[first].end <= slot.start:
            first += 1
        taken = False
        i = first
        while i < len(busy) and busy[i].start < slot.end:
            if busy[i].end > slot.start:
                taken = True
                break
            i += 1
        in_window = (not_before is None or slot.start >= not_before) and (
            not_after is None or slot.start <= not_after
        )
        result.append(Slot(slot.start, slot.end, in_window and not taken))
    return result


def local_day_bounds(day: dt.date, tz: ZoneInfo) -> Interval:
    """The instants a clinic-local day spans (23 or 25 hours on change days)."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz).astimezone(UTC)
    return Interval(start, end)
