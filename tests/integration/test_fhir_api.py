"""The FHIR scheduling API against the real booking engine: directory, slots, $find,
$book, cancel, paging and OperationOutcome errors; every resource validated."""

import asyncio
import datetime as dt
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select

from app.access import audit
from app.fhir import interactions
from db.models import AuditEvent
from tests.integration.fhir_helpers import api_book, conforms, fhir_call, resources_of
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


async def test_metadata_is_public_and_a_valid_capability_statement(client):
    body = await fhir_call(client, "GET", "metadata", {})
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    # Declared from the search table, served from the routes' list: the two agree.
    assert [r["type"] for r in body["rest"][0]["resource"]] == list(interactions.TYPES)


async def test_directory_resources_read_and_search(client, world):
    headers = world.headers("patient0")
    location = await fhir_call(client, "GET", f"Location/{world.clinic_id}", headers)
    assert location["name"] == "Berlin"
    assert location["extension"] == [
        {"url": "http://hl7.org/fhir/StructureDefinition/timezone", "valueCode": "Europe/Berlin"}
    ]
    doctor = await fhir_call(client, "GET", f"Practitioner/{world.doctor_id}", headers)
    assert doctor["name"] == [{"text": "Dr. Berlin"}]
    role = await fhir_call(client, "GET", f"PractitionerRole/{world.doctor_id}", headers)
    assert role["location"][0]["reference"] == f"Location/{world.clinic_id}"
    assert role["specialty"] == [{"text": "GP"}]
    schedule = await fhir_call(client, "GET", f"Schedule/{world.doctor_id}", headers)
    assert {a["reference"] for a in schedule["actor"]} == {
        f"Practitioner/{world.doctor_id}",
        f"Location/{world.clinic_id}",
    }
    found = await fhir_call(
        client, "GET", "Schedule", headers, params={"actor": f"Location/{world.other_clinic_id}"}
    )
    assert [s["id"] for s in resources_of(found)] == [str(world.other_doctor_id)]
    named = await fhir_call(client, "GET", "Practitioner", headers, params={"name": "ny"})
    assert [p["id"] for p in resources_of(named)] == [str(world.other_doctor_id)]
    roles = await fhir_call(
        client,
        "GET",
        "PractitionerRole",
        headers,
        params={"location": f"Location/{world.clinic_id}", "_include": "PractitionerRole:location"},
    )
    assert [r["id"] for r in resources_of(roles)] == [str(world.doctor_id)]
    assert [r["resourceType"] for r in resources_of(roles, "include")] == ["Location"]
    clinics = await fhir_call(client, "GET", "Location", headers, params={"name": "york"})
    assert [c["id"] for c in resources_of(clinics)] == [str(world.other_clinic_id)]


async def api_free(client, world, day):
    answer = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": day.isoformat()},
        headers=world.headers("patient0"),
    )
    return {s["start"] for s in answer.json()["slots"] if s["available"]}


async def slot_search(client, world, day, **extra):
    params = {
        "schedule": f"Schedule/{world.doctor_id}",
        "start": [f"ge{day.isoformat()}", f"lt{(day + dt.timedelta(days=1)).isoformat()}"],
        **extra,
    }
    return await fhir_call(client, "GET", "Slot", world.headers("patient0"), params=params)


async def test_slot_search_is_the_pages_availability(client, world):
    """Free slots are exactly the API's available ones; booking one makes it busy."""
    day = day_after_tomorrow()
    bundle = await slot_search(client, world, day)
    slots = resources_of(bundle)
    assert bundle["total"] == 24 and len(slots) == 24
    assert {s["start"] for s in slots if s["status"] == "free"} == await api_free(
        client, world, day
    )
    start = at(day, 10)
    await api_book(client, world, "patient1", start)
    again = resources_of(await slot_search(client, world, day))
    busy = [s for s in again if s["status"] == "busy"]
    assert [s["start"] for s in busy] == [start.isoformat()]
    free = resources_of(await slot_search(client, world, day, status="free"))
    assert len(free) == 23 and {s["start"] for s in free} == await api_free(client, world, day)
    read = await fhir_call(client, "GET", f"Slot/{busy[0]['id']}", world.headers("patient0"))
    assert read == busy[0]


async def test_slot_paging_links_walk_the_result(client, world):
    day = day_after_tomorrow()
    first = await slot_search(client, world, day, _count="10")
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "previous" not in links and len(resources_of(first)) == 10
    seen = [s["id"] for s in resources_of(first)]
    url = links["next"]
    while url:
        parts = urlsplit(url)
        assert parts.path == "/fhir/R4/Slot"
        page = await fhir_call(client, "GET", f"Slot?{parts.query}", world.headers("patient0"))
        relations = {link["relation"]: link["url"] for link in page["link"]}
        assert "previous" in relations
        seen += [s["id"] for s in resources_of(page)]
        url = relations.get("next")
    assert len(seen) == 24 == len(set(seen))
    only_total = await slot_search(client, world, day, _count="0", _offset="10")
    assert only_total["total"] == 24 and "entry" not in only_total
    assert [link["relation"] for link in only_total["link"]] == ["self"]
    capped = await slot_search(client, world, day, _count="100000")
    assert "_count=500" in capped["link"][0]["url"]


async def test_find_book_then_taken_then_cancel(client, world, session):
    day = day_after_tomorrow()
    headers = world.headers("patient0")
    found = await fhir_call(
        client,
        "GET",
        "Appointment/$find",
        headers,
        params={
            "location": f"Location/{world.clinic_id}",
            "start": day.isoformat(),
            "end": day.isoformat(),
        },
    )
    proposed = resources_of(found)
    assert found["total"] == 24 and all(p["status"] == "proposed" for p in proposed)
    choice = proposed[3]
    booked = await fhir_call(
        client,
        "POST",
        "Appointment/$book",
        headers,
        status=201,
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "appt-resource", "resource": choice}],
        },
    )
    assert booked["status"] == "booked" and booked["start"] == choice["start"]
    assert {p["actor"]["reference"] for p in booked["participant"]} >= {
        f"Patient/{world.patients[0]}",
        f"Practitioner/{world.doctor_id}",
    }
    taken = await fhir_call(
        client, "POST", "Appointment/$book", world.headers("patient1"), status=409, json=choice
    )
    assert taken["issue"][0]["code"] == "conflict"
    assert any(i["severity"] == "information" for i in taken["issue"])  # free alternatives
    again = resources_of(
        await fhir_call(
            client,
            "GET",
            "Appointment/$find",
            headers,
            params={
                "practitioner": f"Practitioner/{world.doctor_id}",
                "start": day.isoformat(),
                "end": day.isoformat(),
            },
        )
    )
    assert choice["start"] not in {p["start"] for p in again} and len(again) == 23
    cancelled = await fhir_call(
        client,
        "PATCH",
        f"Appointment/{booked['id']}",
        headers,
        json=[
            {"op": "replace", "path": "/status", "value": "cancelled"},
            {"op": "add", "path": "/cancelationReason", "value": {"text": "feeling better"}},
        ],
        content=None,
    )
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelationReason"] == {"text": "feeling better"}
    free = {s["start"] for s in resources_of(await slot_search(client, world, day, status="free"))}
    assert choice["start"] in free


async def test_parallel_books_of_one_slot_make_one_appointment(client, world):
    """The exclusion constraint decides: one 201, every other request a 409."""
    day = day_after_tomorrow()
    body = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": at(day, 11).isoformat(),
        "participant": [
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"}
        ],
    }
    answers = await asyncio.gather(
        *(
            client.post(
                "/fhir/R4/Appointment/$book", json=body, headers=world.headers(f"patient{i}")
            )
            for i in range(3)
        )
    )
    assert sorted(a.status_code for a in answers) == [201, 409, 409]
    for answer in answers:
        conforms(answer.json())


async def test_errors_are_operation_outcomes(client, world):
    headers = world.headers("patient0")
    await fhir_call(client, "GET", "Slot", headers, status=400)  # no schedule
    bad = await fhir_call(
        client,
        "GET",
        "Slot",
        headers,
        status=400,
        params={"schedule": f"Schedule/{world.doctor_id}", "start": "ge2026-13-45"},
    )
    assert bad["issue"][0]["code"] == "invalid"
    too_long = {
        "schedule": f"Schedule/{world.doctor_id}",
        "start": ["ge2027-01-01", "lt2027-03-01"],
    }
    await fhir_call(client, "GET", "Slot", headers, status=400, params=too_long)
    lenient = await fhir_call(client, "GET", "Practitioner", headers, params={"colour": "blue"})
    assert "colour" not in lenient["link"][0]["url"]
    strict = {**headers, "Prefer": "handling=strict"}
    await fhir_call(client, "GET", "Practitioner", strict, status=400, params={"colour": "blue"})
    await fhir_call(client, "GET", "Practitioner", headers, status=400, params={"name:exact": "x"})
    unsigned = await fhir_call(client, "GET", "Practitioner", {}, status=401)
    assert unsigned["issue"][0]["code"] == "login"
    await fhir_call(
        client, "POST", "Appointment/$book", world.headers("doctor"), status=403, json={}
    )
    await fhir_call(client, "GET", "Practitioner/987654", headers, status=404)
    await fhir_call(client, "GET", "Slot/not-a-slot", headers, status=404)
    await fhir_call(client, "POST", "Appointment/$book", headers, status=400, content=b"{")
    past = {
        "resourceType": "Appointment",
        "status": "proposed",
        "start": "2020-01-01T09:00:00+01:00",
        "participant": [
            {"actor": {"reference": f"Practitioner/{world.doctor_id}"}, "status": "accepted"}
        ],
    }
    await fhir_call(client, "POST", "Appointment/$book", headers, status=422, json=past)
    await fhir_call(
        client,
        "PATCH",
        "Appointment/1",
        headers,
        status=422,
        json=[{"op": "replace", "path": "/status", "value": "arrived"}],
    )


async def test_reads_of_patients_and_appointments_are_audited(client, world, session):
    day = day_after_tomorrow()
    appointment_id = await api_book(client, world, "patient0", at(day, 9))
    headers = world.headers("desk")
    await fhir_call(client, "GET", f"Appointment/{appointment_id}", headers)
    await fhir_call(client, "GET", f"Patient/{world.patients[0]}", headers)
    await fhir_call(
        client,
        "GET",
        "Appointment",
        headers,
        params={
            "practitioner": f"Practitioner/{world.doctor_id}",
            "_include": "Appointment:patient",
        },
    )
    events = (
        await session.execute(
            select(
                AuditEvent.subject_type,
                AuditEvent.subject_id,
                AuditEvent.patient_id,
                AuditEvent.details,
            )
            .where(AuditEvent.action == audit.FHIR_READ)
            .order_by(AuditEvent.id)
        )
    ).all()
    patient = world.patients[0]
    assert [(e[0], e[1], e[2], e[3]["interaction"]) for e in events] == [
        ("Appointment", appointment_id, patient, "read"),
        ("Patient", patient, patient, "read"),
        ("Appointment", appointment_id, patient, "search"),
        ("Patient", patient, patient, "include"),
    ]


BAD_BODIES = [
    [],
    "text",
    {"resourceType": "Patient"},
    {"resourceType": "Parameters", "parameter": {"name": "appt-resource"}},
    {"resourceType": "Parameters", "parameter": [{"name": "appt-resource", "resource": 1}]},
    {"resourceType": "Appointment", "slot": {"reference": "Slot/1-1"}},
    {"resourceType": "Appointment", "slot": [{"reference": "Slot/1-253402300799"}]},
    {"resourceType": "Appointment", "slot": [{"reference": "Slot/99999999999999999999-1"}]},
    {"resourceType": "Appointment", "slot": ["Slot/1-1"]},
    {"resourceType": "Appointment", "participant": {"actor": "x"}, "start": "2030-01-01"},
    {
        "resourceType": "Appointment",
        "participant": [{"actor": {"reference": "Practitioner/1"}}],
        "start": "9999-12-31T23:59:59+00:00",
    },
    {
        "resourceType": "Appointment",
        "participant": [{"actor": {"reference": "Practitioner/1"}}],
        "start": "2030-01-01T09:00:00",
    },
    {
        "resourceType": "Appointment",
        "participant": [{"actor": {"reference": "Patient/abc"}}],
        "slot": [{"reference": "Slot/1-1"}],
    },
    {"resourceType": "Appointment", "reasonCode": {"text": 5}, "slot": [{"reference": "Slot/1-1"}]},
]

BAD_QUERIES = [
    ("Slot", {"schedule": "Schedule/1", "start": "ge9999-12-31"}),
    ("Slot", {"schedule": "Practitioner/1"}),
    ("Slot", {"schedule": "Schedule/1", "status": "maybe"}),
    ("Slot", {"schedule": "Schedule/1", "start": "ne2026-12-01"}),
    ("Slot", {"schedule": "Schedule/1", "start": "2026-12-01T09:00"}),
    ("Appointment", {"date": "ge2026-12-01T09:00:00+25:00"}),
    ("Appointment", {"status": "nonsense"}),
    ("Appointment", {"patient": "Group/1"}),
    ("Appointment", {"_count": "-1"}),
    ("Appointment", {"_offset": "99999999"}),
    ("Appointment", {"_include": "Appointment:everything"}),
    ("Appointment", {"_format": "xml"}),
    ("Patient", {"birthdate": "ge2000-01-01T00:00:00Z"}),
    ("Appointment/$find", {"start": "2026-12-01"}),
    ("Appointment/$find", {"practitioner": "Practitioner/1", "start": "ge2026-12-01"}),
    ("Appointment/$find", {"practitioner": "Practitioner/1", "end": ["2026-12-01", "2026-12-02"]}),
]


async def test_bad_input_is_a_4xx_operation_outcome_never_a_5xx(client, world):
    headers = world.headers("patient0")
    for body in BAD_BODIES:
        answer = await client.post("/fhir/R4/Appointment/$book", json=body, headers=headers)
        assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
        conforms(answer.json())
    for path, params in BAD_QUERIES:
        answer = await client.get(f"/fhir/R4/{path}", params=params, headers=headers)
        assert answer.status_code == 400, (path, params, answer.status_code, answer.text)
        conforms(answer.json())
    for content_type in ("application/fhir+json", "application/json-patch+json"):
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"reason": "a\\u0000b"}'):
            answer = await client.post(
                "/fhir/R4/Appointment/$book",
                content=body,
                headers={**headers, "Content-Type": content_type},
            )
            assert answer.status_code == 400, answer.text
            conforms(answer.json())
    empty = {"schedule": "Schedule/1", "start": ["ge2999-12-30", "lt1900-01-02"]}
    assert "entry" not in await fhir_call(client, "GET", "Slot", headers, params=empty)
    for body in ({"op": "replace"}, [{"op": "move", "path": "/status"}], [{"path": "/start"}]):
        answer = await client.patch("/fhir/R4/Appointment/1", json=body, headers=headers)
        assert 400 <= answer.status_code < 500, (body, answer.text)
        conforms(answer.json())
