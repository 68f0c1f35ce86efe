"""Practitioner, PractitionerRole, Schedule and Location: the public directory of doctors
and clinics, searched and read over the request's session.

Every signed-in user may read them, like `/api/doctors` (docs/security.md); inactive
doctors are listed with `active: false`, so references in old appointments still resolve.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments.rules import MAY_BOOK_STAFF_ONLY
from app.errors import NotFound
from app.fhir import resources
from app.fhir.resources import Resource
from app.fhir.search import BadSearch, Search, ids, reference_ids
from db.models import Clinic, Doctor, VisitType

DOCTOR_TYPES = ("Practitioner", "PractitionerRole", "Schedule")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a search: the matches, whether more follow, and `_include`d resources."""

    matches: list[Resource]
    more: bool
    total: int | None = None
    included: list[Resource] = field(default_factory=list)


def contains(column: Any, text: str) -> Any:
    """Case-insensitive "contains", with LIKE's wildcards in `text` taken literally."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return func.lower(column).like(f"%{escaped}%", escape="\\")


def _doctor_filters(query: Select, search: Search) -> Select:
    if (wanted := ids(search.any_of("_id"))) is not None:
        query = query.where(Doctor.id.in_(wanted))
    if (names := search.any_of("name")) is not None:
        query = query.where(or_(*(contains(Doctor.full_name, n) for n in names)))
    return _doctor_links(query, search)


def _doctor_links(query: Select, search: Search) -> Select:
    """The filters on a doctor's links (a query joining Doctor): practitioner, location,
    specialty, actor; those the search gives."""
    refs = reference_ids(search.any_of("practitioner"), "practitioner", ["Practitioner"])
    if refs is not None:
        query = query.where(Doctor.id.in_(refs["Practitioner"]))
    if (refs := reference_ids(search.any_of("location"), "location", ["Location"])) is not None:
        query = query.where(Doctor.clinic_id.in_(refs["Location"]))
    if (specialties := search.any_of("specialty")) is not None:
        wanted_specialties = [s.lower() for s in specialties]
        query = query.where(func.lower(Doctor.specialty).in_(wanted_specialties))
    actors = reference_ids(search.any_of("actor"), "actor", ["Practitioner", "Location"])
    if actors is not None:
        query = query.where(
            or_(Doctor.id.in_(actors["Practitioner"]), Doctor.clinic_id.in_(actors["Location"]))
        )
    return query


async def search_doctors(
    session: AsyncSession, search: Search, *, now: dt.datetime, horizon: dt.timedelta
) -> Page:
    """Practitioners, their roles or their schedules (one of each per doctor), by id."""
    query = _doctor_filters(
        select(Doctor, Clinic).join(Clinic, Clinic.id == Doctor.clinic_id), search
    )
    rows = list(
        await session.execute(
            query.order_by(Doctor.id).offset(search.offset).limit(search.count + 1)
        )
    )
    page = rows[: search.count]
    matches = [doctor_resource(search.resource_type, d, c, now, horizon) for d, c in page]
    included: list[Resource] = []
    if "PractitionerRole:practitioner" in search.includes:
        included += [resources.practitioner(d) for d, _ in page]
    if "PractitionerRole:location" in search.includes:
        clinics = {c.id: c for _, c in page}
        included += [resources.location(c) for c in clinics.values()]
    return Page(matches, len(rows) > search.count, included=included)


def doctor_resource(
    resource_type: str, doctor: Doctor, clinic: Clinic, now: dt.datetime, horizon: dt.timedelta
) -> Resource:
    if resource_type == "Practitioner":
        return resources.practitioner(doctor)
    if resource_type == "PractitionerRole":
        return resources.practitioner_role(doctor, clinic)
    return resources.schedule(doctor, clinic, now, horizon)


async def doctors_with_clinics(
    session: AsyncSession, doctor_ids: Sequence[int]
) -> list[tuple[Doctor, Clinic]]:
    rows = await session.execute(
        select(Doctor, Clinic)
        .join(Clinic, Clinic.id == Doctor.clinic_id)
        .where(Doctor.id.in_(doctor_ids))
        .order_by(Doctor.id)
    )
    return [(d, c) for d, c in rows]


async def read_doctor(
    session: AsyncSession,
    resource_type: str,
    resource_id: str,
    *,
    now: dt.datetime,
    horizon: dt.timedelta,
) -> Resource:
    """One Practitioner, PractitionerRole or Schedule.

    Raises:
        NotFound: no such doctor.
    """
    found = await doctors_with_clinics(session, ids([resource_id]) or [])
    if not found:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    doctor, clinic = found[0]
    return doctor_resource(resource_type, doctor, clinic, now, horizon)


async def search_locations(session: AsyncSession, search: Search) -> Page:
    """Clinics by id or part of the name."""
    query = select(Clinic)
    if (wanted := ids(search.any_of("_id"))) is not None:
        query = query.where(Clinic.id.in_(wanted))
    if (names := search.any_of("name")) is not None:
        query = query.where(or_(*(contains(Clinic.name, n) for n in names)))
    rows = list(
        await session.scalars(
            query.order_by(Clinic.id).offset(search.offset).limit(search.count + 1)
        )
    )
    matches = [resources.location(c) for c in rows[: search.count]]
    return Page(matches, len(rows) > search.count)


async def read_location(session: AsyncSession, resource_id: str) -> Resource:
    """One clinic.

    Raises:
        NotFound: no such clinic.
    """
    wanted = ids([resource_id]) or []
    clinic = await session.get(Clinic, wanted[0]) if wanted else None
    if clinic is None:
        raise NotFound(f"Location/{resource_id} is not known")
    return resources.location(clinic)


async def bookable_doctors(
    session: AsyncSession,
    doctor_ids: Sequence[int],
    clinic_ids: Sequence[int],
    specialties: Sequence[str] | None,
    limit: int,
) -> list[tuple[int, int]]:
    """(doctor, clinic) of the active doctors named or working at the clinics named.

    Raises:
        BadSearch: more than `limit` doctors: name fewer.
    """
    query = select(Doctor.id, Doctor.clinic_id).where(
        Doctor.active.is_(True),
        or_(Doctor.id.in_(doctor_ids), Doctor.clinic_id.in_(clinic_ids)),
    )
    if specialties:
        query = query.where(func.lower(Doctor.specialty).in_([s.lower() for s in specialties]))
    rows = [(d, c) for d, c in await session.execute(query.order_by(Doctor.id).limit(limit + 1))]
    if len(rows) > limit:
        raise BadSearch(f"$find covers at most {limit} doctors at once: name fewer")
    return rows


def _services_query(role: str) -> Select:
    """Visit types with their doctors and clinics; staff-only types only for staff."""
    query = (
        select(VisitType, Doctor, Clinic)
        .join(Doctor, Doctor.id == VisitType.doctor_id)
        .join(Clinic, Clinic.id == Doctor.clinic_id)
    )
    if role not in MAY_BOOK_STAFF_ONLY:
        query = query.where(VisitType.online.is_(True))
    return query


async def search_services(session: AsyncSession, search: Search, role: str) -> Page:
    """HealthcareServices (visit types) by id, name, doctor, clinic or specialty."""
    query = _doctor_links(_services_query(role), search)
    if (wanted := ids(search.any_of("_id"))) is not None:
        query = query.where(VisitType.id.in_(wanted))
    if (names := search.any_of("name")) is not None:
        query = query.where(or_(*(contains(VisitType.name, n) for n in names)))
    rows = list(
        await session.execute(
            query.order_by(VisitType.id).offset(search.offset).limit(search.count + 1)
        )
    )
    matches = [resources.healthcare_service(v, d, c) for v, d, c in rows[: search.count]]
    return Page(matches, len(rows) > search.count)


async def read_service(session: AsyncSession, resource_id: str, role: str) -> Resource:
    """One visit type (a staff-only one only for staff).

    Raises:
        NotFound: no such visit type, or staff-only and the caller is not staff.
    """
    wanted = ids([resource_id]) or [0]
    row = (
        await session.execute(_services_query(role).where(VisitType.id == wanted[0]))
    ).one_or_none()
    if row is None:
        raise NotFound(f"HealthcareService/{resource_id} is not known")
    return resources.healthcare_service(*row)


async def service_doctors(
    session: AsyncSession, visit_type_ids: Sequence[int], role: str
) -> dict[int, tuple[int, int]]:
    """(doctor, clinic) of each visit type the role may book, by visit type id; the
    types of inactive doctors and unknown ones are left out."""
    query = (
        select(VisitType.id, Doctor.id, Doctor.clinic_id)
        .join(Doctor, Doctor.id == VisitType.doctor_id)
        .where(VisitType.id.in_(visit_type_ids), Doctor.active.is_(True))
    )
    if role not in MAY_BOOK_STAFF_ONLY:
        query = query.where(VisitType.online.is_(True))
    return {v: (d, c) for v, d, c in await session.execute(query)}
