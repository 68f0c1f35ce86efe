"""medbook's rows as FHIR R4 resources (plain dicts, ready for JSON). Pure: no I/O.

Ids: Practitioner, PractitionerRole and Schedule share the doctor's id (one role and one
calendar per doctor), Location is the clinic's, Patient and Appointment their rows', and a
Slot is `{doctor id}-{start in epoch seconds}`: slots are computed, never stored, so the
id names the doctor and the time and reading it computes it again (docs/fhir.md).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from app.fhir.search import APPOINTMENT_STATUS, HELD_STATUS, SERVICE_TYPE_SYSTEM
from db.models import Clinic, Doctor, Patient, VisitType

# FHIR's own extension for a Location's time zone (an IANA name, as valueCode).
TIMEZONE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/timezone"
# medbook's own extensions: a visit type's length and buffers and its doctor
# (HealthcareService), and when a hold lapses (the pending Appointment of `$hold`).
EXTENSION = "urn:medbook:fhir:"
VISIT_MINUTES = EXTENSION + "visit-minutes"
BUFFER_BEFORE = EXTENSION + "buffer-before-minutes"
BUFFER_AFTER = EXTENSION + "buffer-after-minutes"
PRACTITIONER = EXTENSION + "practitioner"
HOLD_EXPIRES = EXTENSION + "hold-expires"
STAFF_ONLY = "booked by the clinic's staff only"
_SLOT_ID = re.compile(r"([1-9]\d{0,18})-(\d{1,12})")

Resource = dict[str, Any]


def ref(resource_type: str, resource_id: int | str, display: str | None = None) -> Resource:
    reference: Resource = {"reference": f"{resource_type}/{resource_id}"}
    if display:
        reference["display"] = display
    return reference


def instant(moment: dt.datetime, timezone: str) -> str:
    """An instant in the clinic's local offset, to the second (FHIR's `instant`)."""
    return moment.astimezone(ZoneInfo(timezone)).replace(microsecond=0).isoformat()


def practitioner(doctor: Doctor) -> Resource:
    return {
        "resourceType": "Practitioner",
        "id": str(doctor.id),
        "active": doctor.active,
        "name": [{"text": doctor.full_name}],
    }


def location(clinic: Clinic) -> Resource:
    resource: Resource = {
        "resourceType": "Location",
        "id": str(clinic.id),
        "extension": [{"url": TIMEZONE_EXTENSION, "valueCode": clinic.timezone}],
        "status": "active",
        "name": clinic.name,
        "mode": "instance",
    }
    if clinic.address:
        resource["address"] = {"text": clinic.address}
    return resource


def practitioner_role(doctor: Doctor, clinic: Clinic) -> Resource:
    return {
        "resourceType": "PractitionerRole",
        "id": str(doctor.id),
        "active": doctor.active,
        "practitioner": ref("Practitioner", doctor.id, doctor.full_name),
        "location": [ref("Location", clinic.id, clinic.name)],
        "specialty": [{"text": doctor.specialty}],
    }


def schedule(doctor: Doctor, clinic: Clinic, now: dt.datetime, horizon: dt.timedelta) -> Resource:
    """The doctor's calendar; its planning horizon is what can be booked from now."""
    return {
        "resourceType": "Schedule",
        "id": str(doctor.id),
        "active": doctor.active,
        "specialty": [{"text": doctor.specialty}],
        "actor": [
            ref("Practitioner", doctor.id, doctor.full_name),
            ref("Location", clinic.id, clinic.name),
        ],
        "planningHorizon": {
            "start": instant(now, clinic.timezone),
            "end": instant(now + horizon, clinic.timezone),
        },
    }


def healthcare_service(visit_type: VisitType, doctor: Doctor, clinic: Clinic) -> Resource:
    """A doctor's visit type: its name, the doctor and clinic, its length and buffers."""
    resource: Resource = {
        "resourceType": "HealthcareService",
        "id": str(visit_type.id),
        "extension": [
            {"url": PRACTITIONER, "valueReference": ref("Practitioner", doctor.id)},
            {"url": VISIT_MINUTES, "valueInteger": visit_type.minutes},
            {"url": BUFFER_BEFORE, "valueInteger": visit_type.buffer_before_minutes},
            {"url": BUFFER_AFTER, "valueInteger": visit_type.buffer_after_minutes},
        ],
        "active": doctor.active,
        "type": [{"text": visit_type.name}],
        "specialty": [{"text": doctor.specialty}],
        "location": [ref("Location", clinic.id, clinic.name)],
        "name": visit_type.name,
        "appointmentRequired": True,
    }
    if not visit_type.online:
        resource["comment"] = STAFF_ONLY
    return resource


def service_type(visit_type_id: int, name: str | None = None) -> list[Resource]:
    """A visit type as a Slot's or an Appointment's `serviceType`."""
    concept: Resource = {"coding": [{"system": SERVICE_TYPE_SYSTEM, "code": str(visit_type_id)}]}
    if name:
        concept["text"] = name
    return [concept]


def slot_id(doctor_id: int, start: dt.datetime) -> str:
    return f"{doctor_id}-{int(start.timestamp())}"


def parse_slot_id(text: str) -> tuple[int, dt.datetime] | None:
    """(doctor id, start) of a Slot id; None for a text that is no Slot id of ours."""
    match = _SLOT_ID.fullmatch(text)
    if not match or int(match[1]) > 2**63 - 1:
        return None
    try:
        return int(match[1]), dt.datetime.fromtimestamp(int(match[2]), dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def slot(
    doctor_id: int,
    starts: int,
    start_local: str,
    end_local: str,
    status: str,
    service: list[Resource] | None = None,
) -> Resource:
    """A slot from the availability cache: its start in epoch seconds and its clinic-local
    renderings (no time-zone arithmetic here: a 4-week search builds hundreds); with
    `service`, a visit of that type (`service_type`)."""
    resource: Resource = {"resourceType": "Slot", "id": f"{doctor_id}-{starts}"}
    if service:
        resource["serviceType"] = service
    resource |= {
        "schedule": {"reference": f"Schedule/{doctor_id}"},
        "status": status,
        "start": start_local,
        "end": end_local,
    }
    return resource


def patient(row: Patient) -> Resource:
    resource: Resource = {
        "resourceType": "Patient",
        "id": str(row.id),
        "name": [{"text": row.full_name}],
    }
    telecom = [
        {"system": system, "value": value}
        for system, value in (("email", row.email), ("phone", row.phone))
        if value
    ]
    if telecom:
        resource["telecom"] = telecom
    if row.date_of_birth:
        resource["birthDate"] = row.date_of_birth.isoformat()
    return resource


@dataclass(frozen=True, slots=True)
class AppointmentView:
    """An appointment with what its resource shows; names are None when not loaded."""

    id: int
    doctor_id: int
    patient_id: int
    clinic_id: int
    starts_at: dt.datetime
    ends_at: dt.datetime
    status: str
    reason: str | None
    cancel_reason: str | None
    timezone: str
    doctor_name: str | None = None
    patient_name: str | None = None
    clinic_name: str | None = None
    visit_type_id: int | None = None
    hold_expires_at: dt.datetime | None = None


def appointment(view: AppointmentView) -> Resource:
    """A booking, or a hold (`pending`, with the instant it lapses as an extension)."""
    status = HELD_STATUS if view.status == "held" else APPOINTMENT_STATUS[view.status]
    participant = {"cancelled": "declined", HELD_STATUS: "tentative"}.get(status, "accepted")
    resource: Resource = {"resourceType": "Appointment", "id": str(view.id)}
    if view.hold_expires_at is not None:
        expires = instant(view.hold_expires_at, view.timezone)
        resource["extension"] = [{"url": HOLD_EXPIRES, "valueInstant": expires}]
    resource["status"] = status
    if view.visit_type_id is not None:
        resource["serviceType"] = service_type(view.visit_type_id)
    resource |= {
        "start": instant(view.starts_at, view.timezone),
        "end": instant(view.ends_at, view.timezone),
        "minutesDuration": int((view.ends_at - view.starts_at).total_seconds() // 60),
        "slot": [ref("Slot", slot_id(view.doctor_id, view.starts_at))],
        "participant": [
            {
                "actor": ref("Patient", view.patient_id, view.patient_name),
                "required": "required",
                "status": participant,
            },
            {
                "actor": ref("Practitioner", view.doctor_id, view.doctor_name),
                "required": "required",
                "status": participant,
            },
            {
                "actor": ref("Location", view.clinic_id, view.clinic_name),
                "required": "required",
                "status": participant,
            },
        ],
    }
    if view.reason:
        resource["reasonCode"] = [{"text": view.reason}]
    if status == "cancelled" and view.cancel_reason:
        resource["cancelationReason"] = {"text": view.cancel_reason}
    return resource


def proposed_appointment(
    doctor_id: int,
    clinic_id: int,
    start_local: str,
    end_local: str,
    minutes: int,
    service: list[Resource] | None = None,
) -> Resource:
    """A free slot offered by $find: an Appointment with status `proposed` and no id,
    which $hold and $book take back (its slot reference names the doctor and the time,
    its `serviceType` the visit type)."""
    start = dt.datetime.fromisoformat(start_local)
    resource: Resource = {"resourceType": "Appointment", "status": "proposed"}
    if service:
        resource["serviceType"] = service
    return resource | {
        "start": start_local,
        "end": end_local,
        "minutesDuration": minutes,
        "slot": [ref("Slot", slot_id(doctor_id, start))],
        "participant": [
            {
                "actor": ref("Practitioner", doctor_id),
                "required": "required",
                "status": "accepted",
            },
            {"actor": ref("Location", clinic_id), "required": "required", "status": "accepted"},
        ],
    }
