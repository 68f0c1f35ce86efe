"""Read and search of each resource type: which domain function serves which type.

The web handlers (app/routes/fhir.py) call these two with a `Caller`; each type's own
rules (who sees what, what is audited) live in directory.py, people.py and scheduling.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.access.identity import Principal
from app.appointments.rules import BookingRules
from app.fhir import directory, people, scheduling
from app.fhir.directory import Page
from app.fhir.resources import Resource
from app.fhir.search import Search
from app.scheduling.slots import SlotCache

TYPES = (
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Schedule",
    "HealthcareService",
    "Slot",
    "Appointment",
    "Patient",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, and what a request brings: its session, the slot cache, the rules."""

    session: AsyncSession
    cache: SlotCache
    actor: Principal
    rules: BookingRules
    now: dt.datetime
    client_addr: str | None


async def search(caller: Caller, search: Search) -> Page:
    """One page of a search of `search.resource_type`.

    Raises:
        BadSearch: parameters the type cannot answer.
    """
    kind, session = search.resource_type, caller.session
    if kind in directory.DOCTOR_TYPES:
        return await directory.search_doctors(
            session, search, now=caller.now, horizon=caller.rules.horizon
        )
    if kind == "Location":
        return await directory.search_locations(session, search)
    if kind == "HealthcareService":
        return await directory.search_services(session, search, caller.actor.role)
    if kind == "Slot":
        return await scheduling.search_slots(
            session,
            caller.cache,
            search,
            rules=caller.rules,
            now=caller.now,
            role=caller.actor.role,
        )
    if kind == "Appointment":
        return await people.search_appointments(session, caller.actor, search, caller.client_addr)
    return await people.search_patients(session, caller.actor, search, caller.client_addr)


async def read(caller: Caller, kind: str, resource_id: str) -> Resource:
    """One resource of type `kind`.

    Raises:
        NotFound: unknown, or (Patient, Appointment) not the caller's to see.
    """
    session = caller.session
    if kind in directory.DOCTOR_TYPES:
        return await directory.read_doctor(
            session, kind, resource_id, now=caller.now, horizon=caller.rules.horizon
        )
    if kind == "Location":
        return await directory.read_location(session, resource_id)
    if kind == "HealthcareService":
        return await directory.read_service(session, resource_id, caller.actor.role)
    if kind == "Slot":
        return await scheduling.read_slot(
            caller.cache, resource_id, rules=caller.rules, now=caller.now
        )
    if kind == "Appointment":
        return await people.read_appointment(session, caller.actor, resource_id, caller.client_addr)
    return await people.read_patient(session, caller.actor, resource_id, caller.client_addr)
