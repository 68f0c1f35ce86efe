"""Visit types through FHIR: HealthcareService read and search, Slot search and $find by
`service-type` (the JSON API's own availability), and $book of a typed proposal."""

import datetime as dt

import pytest

from db.models import VisitType
from tests.integration.fhir_helpers import fhir_call, resources_of
from tests.integration.world import at, day_after_tomorrow, make_world

SYSTEM = "urn:medbook:fhir:healthcare-service"


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=2)
    # A 60-minute first visit with 15 minutes of cleaning after it, a staff-only
    # procedure, and a type of the New York doctor.
    first = VisitType(
        doctor_id=world.doctor_id, name="First visit", minutes=60, buffer_after_minutes=15
    )
    procedure = VisitType(doctor_id=world.doctor_id, name="Procedure", minutes=30, online=False)
    other = VisitType(doctor_id=world.other_doctor_id, name="Check-up", minutes=30)
    session.add_all([first, procedure, other])
    await session.commit()
    world.first, world.procedure, world.other_type = first.id, procedure.id, other.id
    world.day = day_after_tomorrow()
    return world


async def test_healthcare_services_read_and_search(client, world):
    patient = world.headers("patient0")
    service = await fhir_call(client, "GET", f"HealthcareService/{world.first}", patient)
    assert service["name"] == "First visit"
    assert service["location"][0]["reference"] == f"Location/{world.clinic_id}"
    extensions = {e["url"]: e for e in service["extension"]}
    assert extensions["urn:medbook:fhir:visit-minutes"]["valueInteger"] == 60
    assert extensions["urn:medbook:fhir:buffer-after-minutes"]["valueInteger"] == 15
    assert extensions["urn:medbook:fhir:practitioner"]["valueReference"] == {
        "reference": f"Practitioner/{world.doctor_id}"
    }
    # A staff-only type: unknown to patients, listed to staff.
    await fhir_call(client, "GET", f"HealthcareService/{world.procedure}", patient, status=404)
    desk = await fhir_call(
        client, "GET", f"HealthcareService/{world.procedure}", world.headers("desk")
    )
    assert desk["comment"] == "booked by the clinic's staff only"

    async def ids(who, **params):
        found = await fhir_call(
            client, "GET", "HealthcareService", world.headers(who), params=params
        )
        return [r["id"] for r in resources_of(found)]

    berlin = f"Location/{world.clinic_id}"
    assert await ids("patient0", location=berlin) == [str(world.first)]
    assert await ids("desk", location=berlin) == [str(world.first), str(world.procedure)]
    assert await ids("patient0", practitioner=f"Practitioner/{world.other_doctor_id}") == [
        str(world.other_type)
    ]
    assert await ids("patient0", specialty="gp") == [str(world.first), str(world.other_type)]
    assert await ids("patient0", name="check") == [str(world.other_type)]


async def api_typed(client, world, visit_type_id, who="patient0"):
    answer = await client.get(
        "/api/appointments/available-slots",
        params={
            "doctor_id": world.doctor_id,
            "date": world.day.isoformat(),
            "visit_type_id": visit_type_id,
        },
        headers=world.headers(who),
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["slots"]


async def test_slot_search_by_service_type_equals_the_json_api(client, world):
    # A booking at 12:00 makes the first visits that would overlap it (or its buffer) busy.
    taken = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": at(world.day, 12).isoformat()},
        headers=world.headers("patient1"),
    )
    assert taken.status_code == 201, taken.text
    api = await api_typed(client, world, world.first)
    params = {
        "service-type": f"HealthcareService/{world.first}",
        "start": [f"ge{world.day}", f"lt{world.day + dt.timedelta(days=1)}"],
    }
    found = await fhir_call(client, "GET", "Slot", world.headers("patient0"), params=params)
    slots = resources_of(found)
    assert [(s["start"], s["end"]) for s in slots] == [(s["start"], s["end"]) for s in api]
    assert [s["status"] == "free" for s in slots] == [s["available"] for s in api]
    assert any(s["status"] == "busy" for s in slots) and any(s["status"] == "free" for s in slots)
    assert all(
        s["serviceType"][0]["coding"][0] == {"system": SYSTEM, "code": str(world.first)}
        for s in slots
    )
    assert {s["schedule"]["reference"] for s in slots} == {f"Schedule/{world.doctor_id}"}
    # The same with the schedule named too, and the token form; another doctor's schedule
    # has no visits of this type.
    both = await fhir_call(
        client,
        "GET",
        "Slot",
        world.headers("patient0"),
        params={
            **params,
            "schedule": f"Schedule/{world.doctor_id}",
            "service-type": f"{SYSTEM}|{world.first}",
        },
    )
    assert resources_of(both) == slots
    none = await fhir_call(
        client,
        "GET",
        "Slot",
        world.headers("patient0"),
        params={**params, "schedule": f"Schedule/{world.other_doctor_id}"},
    )
    assert resources_of(none) == []
    # A staff-only type: 403 for a patient, as in the JSON API; the desk sees its slots.
    staff_only = {**params, "service-type": f"HealthcareService/{world.procedure}"}
    await fhir_call(client, "GET", "Slot", world.headers("patient0"), params=staff_only, status=403)
    desk = await fhir_call(client, "GET", "Slot", world.headers("desk"), params=staff_only)
    api_desk = await api_typed(client, world, world.procedure, "desk")
    assert [s["start"] for s in resources_of(desk)] == [s["start"] for s in api_desk]
    bad = {**params, "service-type": "Location/1"}
    await fhir_call(client, "GET", "Slot", world.headers("patient0"), params=bad, status=400)


async def test_find_and_book_by_service_type(client, world):
    headers = world.headers("patient0")
    both = f"HealthcareService/{world.first},HealthcareService/{world.other_type}"
    day = world.day.isoformat()

    async def find(**params):
        found = await fhir_call(client, "GET", "Appointment/$find", headers, params=params)
        return resources_of(found)

    proposals = await find(**{"service-type": both, "start": day, "end": day})
    by_type = {p["serviceType"][0]["coding"][0]["code"] for p in proposals}
    assert by_type == {str(world.first), str(world.other_type)}
    firsts = [p for p in proposals if p["serviceType"][0]["coding"][0]["code"] == str(world.first)]
    assert {p["minutesDuration"] for p in firsts} == {60}
    api = [s["start"] for s in await api_typed(client, world, world.first) if s["available"]]
    assert [p["start"] for p in firsts] == api
    # Narrowed to a clinic: only the Berlin doctor's type.
    berlin = await find(
        **{"service-type": both, "location": f"Location/{world.clinic_id}", "start": day}
    )
    assert {p["serviceType"][0]["coding"][0]["code"] for p in berlin} == {str(world.first)}
    # A patient's $find leaves staff-only types out.
    hidden = await find(**{"service-type": f"HealthcareService/{world.procedure}", "start": day})
    assert hidden == []
    # $book of a typed proposal books a visit of that type (60 minutes, its buffer).
    booked = await fhir_call(
        client, "POST", "Appointment/$book", headers, status=201, json=firsts[0]
    )
    assert booked["serviceType"][0]["coding"][0]["code"] == str(world.first)
    assert booked["minutesDuration"] == 60
    api_row = await client.get(f"/api/appointments/{booked['id']}", headers=headers)
    assert api_row.json()["visit_type_id"] == world.first
    read = await fhir_call(client, "GET", f"Appointment/{booked['id']}", headers)
    assert read["serviceType"] == [{"coding": [{"system": SYSTEM, "code": str(world.first)}]}]
