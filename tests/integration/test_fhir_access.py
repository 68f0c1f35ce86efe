"""Whose data through FHIR (docs/security.md): one patient cannot reach another's
Appointment or Patient through any read, search, _include or operation, and staff see what
the access matrix gives them; another's object answers exactly like an unknown id."""

import re
from zoneinfo import ZoneInfo

import pytest

from tests.integration.fhir_helpers import api_book, fhir_call
from tests.integration.world import at, day_after_tomorrow, make_world

UNKNOWN = 987654


@pytest.fixture
async def world(client, session, settings):
    """Berlin: patients 0 and 1 booked with its doctor; New York: patient 2."""
    world = await make_world(session, settings.secret_key, patients=3)
    day = day_after_tomorrow()

    world.mine = await api_book(client, world, "patient0", at(day, 9))
    world.theirs = await api_book(client, world, "patient1", at(day, 10))
    ny = ZoneInfo("America/New_York")
    world.ny = await api_book(
        client,
        world,
        "other_desk",
        at(day, 10, tz=ny),
        doctor_id=world.other_doctor_id,
        patient_id=world.patients[2],
    )
    world.day = day
    return world


def said(body, object_id) -> str:
    return re.sub(rf"\b{object_id}\b", "ID", body["issue"][0]["diagnostics"])


async def refused_like_unknown(client, headers, resource_type, object_id):
    theirs = await fhir_call(client, "GET", f"{resource_type}/{object_id}", headers, status=404)
    unknown = await fhir_call(client, "GET", f"{resource_type}/{UNKNOWN}", headers, status=404)
    assert said(theirs, object_id) == said(unknown, UNKNOWN)


async def ids(client, headers, path, **params):
    bundle = await fhir_call(client, "GET", path, headers, params=params)
    return {
        (r["resourceType"], int(r["id"])) for e in bundle.get("entry", []) for r in [e["resource"]]
    }


async def test_a_patient_reaches_only_their_own(client, world):
    me, them = world.patients[0], world.patients[1]
    headers = world.headers("patient0")
    await fhir_call(client, "GET", f"Appointment/{world.mine}", headers)
    await fhir_call(client, "GET", f"Patient/{me}", headers)
    await refused_like_unknown(client, headers, "Appointment", world.theirs)
    await refused_like_unknown(client, headers, "Appointment", world.ny)
    await refused_like_unknown(client, headers, "Patient", them)
    mine = {("Appointment", world.mine)}
    assert await ids(client, headers, "Appointment") == mine
    assert await ids(client, headers, "Appointment", patient=f"Patient/{them}") == set()
    assert await ids(client, headers, "Appointment", _id=f"{world.theirs},{world.ny}") == set()
    assert (
        await ids(client, headers, "Appointment", practitioner=f"Practitioner/{world.doctor_id}")
        == mine
    )
    included = await ids(client, headers, "Appointment", _include="Appointment:patient")
    assert included == mine | {("Patient", me)}
    assert await ids(client, headers, "Patient") == {("Patient", me)}
    assert await ids(client, headers, "Patient", _id=str(them)) == set()
    assert await ids(client, headers, "Patient", name="patient") == {("Patient", me)}
    # Operations: booking for another patient is refused, changing theirs is "unknown".
    for_them = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": at(world.day, 15).isoformat(),
        "participant": [
            {"actor": {"reference": f"Patient/{them}"}, "status": "accepted"},
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"},
        ],
    }
    await fhir_call(client, "POST", "Appointment/$book", headers, status=403, json=for_them)
    cancel = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    theirs = await fhir_call(
        client, "PATCH", f"Appointment/{world.theirs}", headers, status=404, json=cancel
    )
    unknown = await fhir_call(
        client, "PATCH", f"Appointment/{UNKNOWN}", headers, status=404, json=cancel
    )
    assert said(theirs, world.theirs) == said(unknown, UNKNOWN)
    # Free/busy carries no names: a slot or a proposal names no patient.
    for path, params in (
        ("Slot", {"schedule": f"Schedule/{world.doctor_id}", "start": f"ge{world.day}"}),
        ("Appointment/$find", {"practitioner": f"Practitioner/{world.doctor_id}"}),
    ):
        answer = await client.get(f"/fhir/R4/{path}", params=params, headers=headers)
        assert answer.status_code == 200 and "Patient" not in answer.text


async def test_staff_see_their_clinic_and_their_schedule(client, world):
    p0, p2 = world.patients[0], world.patients[2]
    desk = world.headers("desk")
    assert await ids(client, desk, "Appointment") == {
        ("Appointment", world.mine),
        ("Appointment", world.theirs),
    }
    await fhir_call(client, "GET", f"Patient/{p0}", desk)
    await refused_like_unknown(client, desk, "Appointment", world.ny)
    await refused_like_unknown(client, desk, "Patient", p2)
    other_desk = world.headers("other_desk")
    assert await ids(client, other_desk, "Appointment", patient=f"Patient/{p0}") == set()
    assert await ids(client, other_desk, "Patient") == {("Patient", p2)}
    doctor = world.headers("doctor")
    assert await ids(client, doctor, "Appointment", _include="Appointment:patient") == {
        ("Appointment", world.mine),
        ("Appointment", world.theirs),
        ("Patient", p0),
        ("Patient", world.patients[1]),
    }
    await refused_like_unknown(client, doctor, "Patient", p2)
    # A doctor may not cancel (their role never sets it): 403, as in the JSON API.
    cancel = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    await fhir_call(client, "PATCH", f"Appointment/{world.mine}", doctor, status=403, json=cancel)
    admin = world.headers("admin")
    everyone = set()
    for clinic in (world.clinic_id, world.other_clinic_id):
        everyone |= await ids(client, admin, "Appointment", location=f"Location/{clinic}")
    assert len(everyone) == 3
    # Unbounded, it would scan the year: an admin narrows the search.
    await fhir_call(client, "GET", "Appointment", admin, status=400)
    assert len(await ids(client, admin, "Patient")) == 3


def candidate(world, hour, patient=None, doctor=None):
    body = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": at(world.day, hour).isoformat(),
        "participant": [
            {
                "actor": {"reference": f"Practitioner/{doctor or world.doctor_id}"},
                "status": "accepted",
            }
        ],
    }
    if patient is not None:
        body["participant"].append(
            {"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}
        )
    return body


async def test_holds_follow_the_booking_access_rules(client, world):
    p0, p1 = world.patients[0], world.patients[1]
    patient0, patient1 = world.headers("patient0"), world.headers("patient1")
    # A patient holds only for themself, and cannot see or book another's hold.
    await fhir_call(
        client, "POST", "Appointment/$hold", patient0, status=403, json=candidate(world, 15, p1)
    )
    held = await fhir_call(
        client, "POST", "Appointment/$hold", patient0, status=201, json=candidate(world, 15, p0)
    )
    theirs = await fhir_call(client, "POST", "Appointment/$book", patient1, status=409, json=held)
    unknown = await fhir_call(
        client, "POST", "Appointment/$book", patient1, status=409, json=held | {"id": str(UNKNOWN)}
    )
    assert said(theirs, held["id"]) == said(unknown, UNKNOWN)
    await refused_like_unknown(client, patient1, "Appointment", held["id"])
    for who in ("patient1", "patient0", "desk", "admin"):  # a hold is nobody's Appointment
        found = await ids(client, world.headers(who), "Appointment", _id=held["id"])
        assert found == set(), who
    # A desk holds for any patient with its own clinic's doctors only, and books those.
    desk, other_desk = world.headers("desk"), world.headers("other_desk")
    await fhir_call(
        client, "POST", "Appointment/$hold", desk, status=422, json=candidate(world, 16)
    )
    by_desk = await fhir_call(
        client, "POST", "Appointment/$hold", desk, status=201, json=candidate(world, 16, p1)
    )
    await fhir_call(
        client, "POST", "Appointment/$hold", other_desk, status=403, json=candidate(world, 17, p1)
    )
    await fhir_call(client, "POST", "Appointment/$book", other_desk, status=409, json=by_desk)
    booked = await fhir_call(client, "POST", "Appointment/$book", desk, status=201, json=by_desk)
    assert booked["status"] == "booked"
    assert ("Appointment", int(booked["id"])) in await ids(client, patient1, "Appointment")
    # Doctors neither hold nor book (403), as they do not book in the JSON API.
    doctor = world.headers("doctor")
    await fhir_call(
        client, "POST", "Appointment/$hold", doctor, status=403, json=candidate(world, 17, p0)
    )
    await fhir_call(client, "POST", "Appointment/$book", doctor, status=403, json=held)
