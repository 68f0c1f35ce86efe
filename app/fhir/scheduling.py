"""Slots, `$find`, `$book` and status changes through FHIR, on the booking engine itself.

Slots are never stored: a Slot search reads the same doctor-days as the pages and
`/api/appointments/available-slots` (`app.scheduling.slots.SlotCache`: one Redis read on
a hit, the availability computation on a miss), and a slot's FHIR status follows the
same rule as the API's `available` flag: free when not taken and within the booking
window (minimum notice, horizon). `$book` is `app.appointments.commands.book`, so the
exclusion constraint, the per-doctor limit, idempotency keys, notifications and live
updates are the API's own; `PATCH` is `commands.change_status`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments import commands
from app.appointments.commands import BookingResult
from app.appointments.rules import BookingRules, check_may_book_type, for_visit_type
from app.concurrently import concurrently
from app.errors import Invalid, NotFound
from app.fhir import holds, resources
from app.fhir.directory import Page, bookable_doctors, doctors_with_clinics, service_doctors
from app.fhir.resources import AppointmentView, Resource
from app.fhir.search import (
    FROM_FHIR_STATUS,
    HELD_STATUS,
    SERVICE_TYPE_SYSTEM,
    SLOT_STATUSES,
    BadSearch,
    Comparison,
    LocalDay,
    Search,
    date_comparisons,
    ids,
    reference_ids,
    service_type_ids,
    window,
)
from app.live.effects import Effects
from app.scheduling.slots import CachedSlot, SlotCache, TypeFacts

MAX_SPAN = dt.timedelta(days=31)  # one Slot search or $find: a month at most
DEFAULT_SPAN = dt.timedelta(days=7)
MAX_FIND_DOCTORS = 50
MAX_REASON = 500
_READERS = 4  # doctors read at once by one request (each miss holds a pooled connection)


@dataclass(frozen=True, slots=True)
class _Found:
    doctor_id: int
    slot: CachedSlot
    status: str
    visit_type: TypeFacts | None = None

    def service(self) -> list[Resource] | None:
        """The slot's visit type as `serviceType` (None: a plain template slot)."""
        kind = self.visit_type
        return None if kind is None else resources.service_type(kind.id, kind.name)


def slot_status(slot: CachedSlot, bookable_from: int, bookable_to: int) -> str:
    """FHIR's status of a cached slot: `busy` when booked, `busy-unavailable` when leave
    or a closure covers it or it lies outside the booking window, else `free`."""
    if slot.blocked:
        return "busy-unavailable"
    if slot.taken:
        return "busy"
    return "free" if bookable_from <= slot.starts <= bookable_to else "busy-unavailable"


async def _doctor_slots(
    cache: SlotCache,
    doctor_id: int,
    comparisons: Sequence[Comparison],
    rules: BookingRules,
    now: dt.datetime,
    visit_type_id: int | None = None,
    role: str = "patient",
) -> list[_Found]:
    """The doctor's slots starting within the comparisons' span (default: the next 7
    days), with their FHIR status; none for an unknown doctor or a visit type not theirs.
    With `visit_type_id`, the visits of that type (its length and buffers, its notice and
    horizon), as the JSON API's available-slots lays them out.

    Days given without a time are the clinic's, whose zone is known only once the cache
    answers: the days read span the UTC reading of the bounds widened by a day either
    side (no zone is 14 hours or more from UTC), and the exact span cuts them afterwards.

    Raises:
        BadSearch: a span over 31 days.
        Forbidden: a staff-only visit type asked for by a patient.
    """
    lo, hi = _span(comparisons, "UTC", now)
    first = (lo - dt.timedelta(days=1)).date()
    count = ((hi + dt.timedelta(days=1)).date() - first).days + 1
    try:  # one Redis read for the span (and one query on a miss), however many days
        timezone, days, kind = await cache.days(
            doctor_id, first, count, visit_type_id=visit_type_id
        )
    except NotFound:
        return []
    check_may_book_type(role, kind)
    rules = for_visit_type(rules, kind)
    lo, hi = _span(comparisons, timezone, now)
    low, high = lo.timestamp(), hi.timestamp()
    bookable_from = int((now + rules.min_notice).timestamp())
    bookable_to = int((now + rules.horizon).timestamp())
    return [
        _Found(doctor_id, s, slot_status(s, bookable_from, bookable_to), kind)
        for day in days
        for s in day.slots
        if low <= s.starts < high
    ]


async def doctors_slots(
    cache: SlotCache,
    doctor_ids: Sequence[int],
    comparisons: Sequence[Comparison],
    rules: BookingRules,
    now: dt.datetime,
    *,
    visit_types: Sequence[int | None] | None = None,
    role: str = "patient",
) -> list[_Found]:
    """The slots of several doctors within the comparisons' span, with their FHIR status
    (see `_doctor_slots`), read at most `_READERS` doctors at once: each cache miss
    holds a pooled connection, and one request must not take the whole pool.

    Args:
        visit_types: for each doctor, the visit type whose visits to lay out (None: the
            plain slots); None: plain slots for all.
    """
    gate = asyncio.Semaphore(_READERS)
    kinds = visit_types if visit_types is not None else [None] * len(doctor_ids)

    async def one(doctor_id: int, kind: int | None) -> list[_Found]:
        async with gate:
            return await _doctor_slots(cache, doctor_id, comparisons, rules, now, kind, role)

    every = await concurrently(*(one(d, k) for d, k in zip(doctor_ids, kinds, strict=True)))
    return [f for found in every for f in found]


def _span(
    comparisons: Sequence[Comparison], timezone: str, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    lo, hi = window(comparisons, timezone)
    if lo is None:
        lo = now if hi is None or hi > now else hi - DEFAULT_SPAN
    if hi is None:
        hi = lo + DEFAULT_SPAN
    # The UTC reading of a local day may be off by up to 14 hours each side.
    if hi - lo > MAX_SPAN + dt.timedelta(days=1):
        raise BadSearch("search at most 31 days of slots at once")
    return lo, max(lo, hi)


async def search_slots(
    session: AsyncSession,
    cache: SlotCache,
    search: Search,
    *,
    rules: BookingRules,
    now: dt.datetime,
    role: str = "patient",
) -> Page:
    """Slots of the schedules named (or of a visit type's doctor), in time order, with
    their status; with `service-type`, the visits of that type.

    Raises:
        BadSearch: neither schedule nor service-type, several service types, a bad
            status or date, a span over 31 days.
        Forbidden: a staff-only visit type asked for by a patient.
    """
    refs = reference_ids(search.any_of("schedule"), "schedule", ["Schedule"])
    kinds = service_type_ids(search.any_of("service-type"))
    if refs is None and kinds is None:
        raise BadSearch(
            "a Slot search needs schedule=Schedule/{id} (one doctor's calendar) or "
            "service-type=HealthcareService/{id}"
        )
    if kinds is not None and len(kinds) != 1:
        raise BadSearch("give one service-type (a visit type) per Slot search")
    statuses = search.any_of("status")
    if statuses is not None and (unknown := set(statuses) - SLOT_STATUSES):
        raise BadSearch(f"status: {', '.join(sorted(unknown))} is no Slot status code")
    comparisons = date_comparisons(search.values("start"), "start")
    if kinds is None:
        assert refs is not None
        doctor_ids = list(dict.fromkeys(refs["Schedule"]))
    else:  # the type's doctor; a schedule named as well must be theirs
        owner = (await service_doctors(session, kinds, "admin")).get(kinds[0])
        doctor_ids = [owner[0]] if owner is not None else []
        if refs is not None:
            doctor_ids = [d for d in doctor_ids if d in refs["Schedule"]]
    visit_types = None if kinds is None else [kinds[0]] * len(doctor_ids)
    found = [
        f
        for f in await doctors_slots(
            cache, doctor_ids, comparisons, rules, now, visit_types=visit_types, role=role
        )
        if statuses is None or f.status in statuses
    ]
    found.sort(key=lambda f: (f.slot.starts, f.doctor_id))
    page = found[search.offset : search.offset + search.count]
    matches = [
        resources.slot(
            f.doctor_id, f.slot.starts, f.slot.start_local, f.slot.end_local, f.status, f.service()
        )
        for f in page
    ]
    included: list[Resource] = []
    if "Slot:schedule" in search.includes and page:
        doctors = await doctors_with_clinics(session, sorted({f.doctor_id for f in page}))
        horizon = rules.horizon
        included = [resources.schedule(d, c, now, horizon) for d, c in doctors]
    more = search.offset + search.count < len(found)
    return Page(matches, more, total=len(found), included=included)


async def read_slot(
    cache: SlotCache, resource_id: str, *, rules: BookingRules, now: dt.datetime
) -> Resource:
    """One slot, computed afresh from its id (the doctor and the start).

    Raises:
        NotFound: not a slot id, or no slot of that doctor starts then.
    """
    parsed = resources.parse_slot_id(resource_id)
    if parsed is not None and _in_calendar(parsed[1]):
        doctor_id, start = parsed
        exact = [Comparison(">=", start), Comparison("<=", start)]
        for found in await _doctor_slots(cache, doctor_id, exact, rules, now):
            s = found.slot
            return resources.slot(doctor_id, s.starts, s.start_local, s.end_local, found.status)
    raise NotFound(f"Slot/{resource_id} is not known")


def _find_bound(search: Search, name: str, end: bool) -> list[Comparison]:
    """$find's `start` (earliest start) or `end` (latest start; a day: all of it)."""
    values = search.any_of(name)
    if values is None:
        return []
    if len(values) != 1 or not values[0][:1].isdigit():
        raise BadSearch(f"{name} takes one date or instant, without a prefix")
    moment = date_comparisons([values], name)[0].moment
    if isinstance(moment, LocalDay):
        if end:
            return [Comparison("<", LocalDay(moment.day, True))]
        return [Comparison(">=", LocalDay(moment.day, False))]
    return [Comparison("<=" if end else ">=", moment)]


async def find(
    session: AsyncSession,
    cache: SlotCache,
    search: Search,
    *,
    rules: BookingRules,
    now: dt.datetime,
    role: str = "patient",
) -> Page:
    """`Appointment/$find`: free slots of the doctors named, or of a clinic's active
    doctors, as proposed Appointments in time order; with `service-type`, free visits of
    those types (each its doctor's), which practitioner and location then narrow.

    Raises:
        BadSearch: none of practitioner, location and service-type, more than 50
            doctors or types, bad dates.
    """
    doctors = reference_ids(search.any_of("practitioner"), "practitioner", ["Practitioner"])
    clinics = reference_ids(search.any_of("location"), "location", ["Location"])
    kinds = service_type_ids(search.any_of("service-type"))
    if doctors is None and clinics is None and kinds is None:
        raise BadSearch(
            "$find needs practitioner=Practitioner/{id}, location=Location/{id} or "
            "service-type=HealthcareService/{id}"
        )
    comparisons = _find_bound(search, "start", False) + _find_bound(search, "end", True)
    visit_types: list[int | None] | None = None
    if kinds is None:
        chosen = await bookable_doctors(
            session,
            (doctors or {}).get("Practitioner", []),
            (clinics or {}).get("Location", []),
            search.any_of("specialty"),
            MAX_FIND_DOCTORS,
        )
    else:
        if len(set(kinds)) > MAX_FIND_DOCTORS:
            raise BadSearch(f"$find covers at most {MAX_FIND_DOCTORS} service types at once")
        owners = await service_doctors(session, sorted(set(kinds)), role)
        wanted_doctors = None if doctors is None else set(doctors["Practitioner"])
        wanted_clinics = None if clinics is None else set(clinics["Location"])
        typed = [
            (kind, d, c)
            for kind, (d, c) in sorted(owners.items())
            if (wanted_doctors is None or d in wanted_doctors)
            and (wanted_clinics is None or c in wanted_clinics)
        ]
        chosen = [(d, c) for _, d, c in typed]
        visit_types = [kind for kind, _, _ in typed]
    clinic_of = dict(chosen)
    found = await doctors_slots(
        cache, [d for d, _ in chosen], comparisons, rules, now, visit_types=visit_types, role=role
    )
    free = [f for f in found if f.status == "free"]
    free.sort(key=lambda f: (f.slot.starts, f.doctor_id, f.visit_type.id if f.visit_type else 0))
    page = free[search.offset : search.offset + search.count]
    matches = [
        resources.proposed_appointment(
            f.doctor_id,
            clinic_of[f.doctor_id],
            f.slot.start_local,
            f.slot.end_local,
            int((f.slot.end - f.slot.start).total_seconds() // 60),
            f.service(),
        )
        for f in page
    ]
    return Page(matches, search.offset + search.count < len(free), total=len(free))


@dataclass(frozen=True, slots=True)
class BookingRequest:
    """What `$book` was asked: the doctor and start, for whom, why."""

    doctor_id: int
    start: dt.datetime
    patient_id: int | None
    reason: str | None
    visit_type_id: int | None = None
    hold_id: int | None = None  # the pending Appointment of a $hold, to book


def booking_request(body: Any) -> BookingRequest:
    """Read a `$book` body: a Parameters resource with the proposed Appointment as
    `appt-resource` (Argonaut), or the Appointment itself. The slot reference (as $find
    gives it) names the doctor and the start; without one, the Practitioner participant
    and `start` do. A Patient participant names whom it is for (patients: themselves).

    Raises:
        BadSearch: not such a body, or neither a slot nor a practitioner and start.
    """
    appointment = body
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        parameters = body.get("parameter")
        found = [
            p.get("resource")
            for p in (parameters if isinstance(parameters, list) else [])
            if isinstance(p, dict) and p.get("name") in ("appt-resource", "appointment")
        ]
        appointment = found[0] if found else None
    if not isinstance(appointment, dict) or appointment.get("resourceType") != "Appointment":
        raise BadSearch("send an Appointment, or Parameters with it as appt-resource")
    participants = appointment.get("participant") or []
    actors = [
        str(p["actor"].get("reference", ""))
        for p in (participants if isinstance(participants, list) else [])
        if isinstance(p, dict) and isinstance(p.get("actor"), dict)
    ]
    patients = reference_ids(
        [a for a in actors if "Patient/" in a] or None, "participant", ["Patient"]
    )
    if patients is not None and not patients["Patient"]:
        raise BadSearch("the Patient participant is not a patient of this server")
    patient_id = patients["Patient"][0] if patients else None
    doctor_id, start = _slot_or_start(appointment, actors)
    reason = _reason(appointment)
    hold_id = None
    if appointment.get("status") == HELD_STATUS and "id" in appointment:
        hold_id = (ids([str(appointment["id"])]) or [0])[0]
    return BookingRequest(doctor_id, start, patient_id, reason, _service_type(appointment), hold_id)


def _service_type(appointment: dict[str, Any]) -> int | None:
    """The visit type of a proposed Appointment's `serviceType` (None: a plain slot).

    Raises:
        BadSearch: a serviceType that names no visit type of this server.
    """
    concepts = appointment.get("serviceType") or []
    if not isinstance(concepts, list):
        raise BadSearch("serviceType is a list of CodeableConcepts")
    found = [
        coding.get("code")
        for concept in concepts
        if isinstance(concept, dict) and isinstance(concept.get("coding"), list)
        for coding in concept["coding"]
        if isinstance(coding, dict) and coding.get("system") == SERVICE_TYPE_SYSTEM
    ]
    if not found:
        return None
    wanted = ids([str(found[0])])
    if len(set(found)) != 1 or not wanted:
        raise BadSearch(f"serviceType: one code of {SERVICE_TYPE_SYSTEM}, a visit type's id")
    return wanted[0]


def _slot_or_start(appointment: dict[str, Any], actors: list[str]) -> tuple[int, dt.datetime]:
    slots = appointment.get("slot") or []
    if not isinstance(slots, list):
        raise BadSearch("slot is a list of references")
    if slots:
        reference = slots[0].get("reference", "") if isinstance(slots[0], dict) else ""
        parsed = resources.parse_slot_id(str(reference).rpartition("Slot/")[2])
        if parsed is None or not _in_calendar(parsed[1]):
            raise BadSearch(f"{reference!r} is not a Slot of this server")
        return parsed
    doctors = [a for a in actors if "Practitioner/" in a]
    refs = reference_ids(doctors[:1] or None, "participant", ["Practitioner"])
    start = appointment.get("start")
    if not refs or not refs["Practitioner"] or not isinstance(start, str):
        raise BadSearch("name a slot, or a Practitioner participant and a start")
    try:
        moment = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
    except ValueError:
        raise BadSearch(
            f"start {start!r} is not an instant like 2026-12-01T09:00:00+01:00"
        ) from None
    if moment.tzinfo is None or not _in_calendar(moment):
        raise BadSearch("start needs a UTC offset and a year from 1900 to 2999")
    return refs["Practitioner"][0], moment


def _in_calendar(moment: dt.datetime) -> bool:
    """Within the days the app computes with (app/routes/inputs.py), a day to spare."""
    return dt.date(1900, 1, 2) <= moment.date() <= dt.date(2999, 12, 30)


def _reason(appointment: dict[str, Any]) -> str | None:
    codes = appointment.get("reasonCode") or []
    first = codes[0] if isinstance(codes, list) and codes else None
    text = first.get("text") if isinstance(first, dict) else None
    text = text or appointment.get("description")
    if text is not None and (not isinstance(text, str) or len(text) > MAX_REASON):
        raise Invalid(f"the reason is text of at most {MAX_REASON} characters")
    return text


def _view(result: BookingResult) -> AppointmentView:
    a = result.appointment
    return AppointmentView(
        a.id,
        a.doctor_id,
        a.patient_id,
        a.clinic_id,
        a.starts_at,
        a.ends_at,
        a.status,
        a.reason,
        a.cancel_reason,
        result.timezone,
        visit_type_id=a.visit_type_id,
    )


async def book(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    request: BookingRequest,
    *,
    rules: BookingRules,
    now: dt.datetime,
    idempotency_key: str | None,
) -> tuple[Resource, bool]:
    """`Appointment/$book` through the booking command, or of a hold (the pending
    Appointment `$hold` answered) through `holds.book_held`. Commits.

    Returns:
        The booked Appointment, and whether it is a replay (an Idempotency-Key retry, or
        a hold this actor has booked already).

    Raises:
        Conflict: the slot is taken (with `alternatives`), or the hold is not the
            actor's to book or has lapsed; and everything `commands.book` raises.
    """
    if request.hold_id is not None:
        held = await holds.book_held(
            session,
            effects,
            actor,
            request.hold_id,
            doctor_id=request.doctor_id,
            start=request.start,
            reason=request.reason,
            rules=rules,
            now=now,
        )
        return resources.appointment(held.view), held.replayed
    result = await commands.book(
        session,
        effects,
        actor,
        doctor_id=request.doctor_id,
        start=request.start,
        patient_id=request.patient_id,
        reason=request.reason,
        idempotency_key=idempotency_key,
        rules=rules,
        now=now,
        visit_type_id=request.visit_type_id,
    )
    return resources.appointment(_view(result)), result.replayed


async def hold(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    request: BookingRequest,
    *,
    rules: BookingRules,
    now: dt.datetime,
    hold_for: dt.timedelta,
) -> tuple[Resource, bool]:
    """`Appointment/$hold`: the candidate held for its patient until `now + hold_for`, as
    a `pending` Appointment with its expiry, and whether it is a retry's (the caller's own
    hold of this slot, answered again). Commits.

    Raises:
        Conflict: the slot is booked or held; and what `holds.hold` raises.
    """
    if request.hold_id is not None:
        raise BadSearch("this Appointment is a hold already: $book it")
    held = await holds.hold(
        session,
        effects,
        actor,
        doctor_id=request.doctor_id,
        start=request.start,
        patient_id=request.patient_id,
        reason=request.reason,
        visit_type_id=request.visit_type_id,
        rules=rules,
        now=now,
        hold_for=hold_for,
    )
    return resources.appointment(held.view), held.replayed


def patched_status(body: Any) -> tuple[str, str | None]:
    """The status (medbook's) and reason a JSON Patch of an Appointment asks for: it may
    replace `/status` and add or replace `/cancelationReason` (`{"text": ...}`), nothing
    else (a move is a new booking: $find, then $book, then cancel).

    Raises:
        BadSearch: not a JSON Patch document.
        Invalid: another path or op, or a status medbook does not set.
    """
    if not isinstance(body, list) or not all(isinstance(op, dict) for op in body):
        raise BadSearch("send a JSON Patch document: a list of operations")
    status: str | None = None
    reason: str | None = None
    for op in body:
        if op.get("op") not in ("replace", "add"):
            raise Invalid("only replace (or add) operations are supported")
        if op.get("path") == "/status":
            code = op.get("value")
            if code not in FROM_FHIR_STATUS:
                allowed = ", ".join(FROM_FHIR_STATUS)
                raise Invalid(f"status {code!r} cannot be set here; one of {allowed}")
            status = FROM_FHIR_STATUS[code]
        elif op.get("path") in ("/cancelationReason", "/cancelationReason/text"):
            value = op.get("value")
            reason = value.get("text") if isinstance(value, dict) else value
            if not isinstance(reason, str) or len(reason) > MAX_REASON:
                raise Invalid(f"cancelationReason is text of at most {MAX_REASON} characters")
        else:
            raise Invalid(
                f"{op.get('path')!r} cannot be patched: only /status and /cancelationReason"
            )
    if status is None:
        raise Invalid("replace /status")
    return status, reason


async def change_status(
    session: AsyncSession,
    effects: Effects,
    actor: Principal,
    resource_id: str,
    status: str,
    reason: str | None,
    *,
    now: dt.datetime,
) -> Resource:
    """Cancel, check in, complete or mark a no-show, as the API's PATCH. Commits.

    Raises:
        NotFound: unknown or not the actor's to see; and what `commands.change_status`
            raises (Forbidden for a status the role may not set, Invalid for a transition).
    """
    if not resource_id.isdigit() or not 1 <= int(resource_id) <= 2**63 - 1:
        raise NotFound(f"Appointment/{resource_id} is not known")
    try:
        result = await commands.change_status(
            session, effects, actor, int(resource_id), status=status, now=now, reason=reason
        )
    except NotFound:
        raise NotFound(f"Appointment/{resource_id} is not known") from None
    return resources.appointment(_view(result))
