"""Walk the CapabilityStatement and call every interaction, search parameter, include
and operation it declares: each must answer with valid resources, and every search by a
parameter with a value that fits the data must find it."""

import datetime as dt

import pytest
from sqlalchemy import update

from db.models import Patient, VisitType
from tasks.fhir_feed import publish_fhir_feed
from tests.integration.fhir_helpers import (
    api_book,
    feed_store,
    fhir_call,
    job_context,
    resources_of,
)
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=2)
    await session.execute(
        update(Patient)
        .where(Patient.id == world.patients[0])
        .values(date_of_birth=dt.date(1990, 5, 17), email="p0@example.test")
    )
    check_up = VisitType(doctor_id=world.doctor_id, name="Check-up", minutes=30)
    session.add(check_up)
    await session.commit()
    world.visit_type = check_up.id
    world.day = day_after_tomorrow()
    world.appointment = await api_book(client, world, "patient0", at(world.day, 9))
    return world


def samples(world, slot_id):
    """For each type: an id to read, and a value per search parameter that finds it."""
    doctor, clinic, patient = world.doctor_id, world.clinic_id, world.patients[0]
    day = world.day.isoformat()
    return {
        "Practitioner": (doctor, {"_id": str(doctor), "name": "berlin"}),
        "PractitionerRole": (
            doctor,
            {
                "_id": str(doctor),
                "practitioner": f"Practitioner/{doctor}",
                "location": f"Location/{clinic}",
                "specialty": "gp",
            },
        ),
        "Location": (clinic, {"_id": str(clinic), "name": "Berlin"}),
        "Schedule": (doctor, {"_id": str(doctor), "actor": f"Practitioner/{doctor}"}),
        "HealthcareService": (
            world.visit_type,
            {
                "_id": str(world.visit_type),
                "name": "check",
                "practitioner": f"Practitioner/{doctor}",
                "location": f"Location/{clinic}",
                "specialty": "gp",
            },
        ),
        "Slot": (
            slot_id,
            {
                "schedule": f"Schedule/{doctor}",
                "start": f"ge{day}",
                "status": "busy",
                # a 30-minute check-up at 09:00 is busy like the plain 09:00 slot
                "service-type": f"HealthcareService/{world.visit_type}",
            },
        ),
        "Appointment": (
            world.appointment,
            {
                "_id": str(world.appointment),
                "patient": f"Patient/{patient}",
                "practitioner": f"Practitioner/{doctor}",
                "location": f"Location/{clinic}",
                "date": day,
                "status": "booked",
            },
        ),
        "Patient": (
            patient,
            {"_id": str(patient), "name": "patient 0", "birthdate": "1990-05-17"},
        ),
    }


async def test_every_declared_interaction_answers(client, world, settings, db, redis):
    headers = world.headers("admin")
    statement = await fhir_call(client, "GET", "metadata", {})
    busy = await fhir_call(
        client,
        "GET",
        "Slot",
        headers,
        params={
            "schedule": f"Schedule/{world.doctor_id}",
            "start": f"ge{world.day}",
            "status": "busy",
        },
    )
    slot_id = resources_of(busy)[0]["id"]
    table = samples(world, slot_id)
    called = []
    for kind in statement["rest"][0]["resource"]:
        name = kind["type"]
        sample_id, values = table[name]
        # Slot search needs its schedule; an admin's Appointment search a narrowing one.
        base = {p: values[p] for p in ("schedule", "practitioner") if p in values}
        base = base if name in ("Slot", "Appointment") else {}
        for interaction in kind["interaction"]:
            code = interaction["code"]
            if code == "read":
                read = await fhir_call(client, "GET", f"{name}/{sample_id}", headers)
                assert read["resourceType"] == name and read["id"] == str(sample_id)
            elif code == "search-type":
                for param in kind["searchParam"]:
                    found = await fhir_call(
                        client,
                        "GET",
                        name,
                        headers,
                        params={**base, param["name"]: values[param["name"]]},
                    )
                    ids = [r["id"] for r in resources_of(found)]
                    assert str(sample_id) in ids, (name, param["name"], ids)
                    called.append((name, param["name"]))
                for include in kind.get("searchInclude", []):
                    found = (
                        await fhir_call(
                            client,
                            "GET",
                            name,
                            headers,
                            params={**base, "_id": str(sample_id), "_include": include},
                        )
                        if name != "Slot"
                        else await fhir_call(
                            client, "GET", name, headers, params={**values, "_include": include}
                        )
                    )
                    assert resources_of(found, "include"), include
                    called.append((name, include))
            elif code == "patch":
                assert name == "Appointment"
                patched = await fhir_call(
                    client,
                    "PATCH",
                    f"Appointment/{sample_id}",
                    headers,
                    json=[{"op": "replace", "path": "/status", "value": "checked-in"}],
                    status=422,  # not on its day: the rules answer, the route works
                )
                assert "day" in patched["issue"][0]["diagnostics"]
            else:
                raise AssertionError(f"undeclared interaction code {code}")
            called.append((name, code))
        for operation in kind.get("operation", []):
            if operation["name"] == "find":
                found = await fhir_call(
                    client,
                    "GET",
                    "Appointment/$find",
                    headers,
                    params={
                        "practitioner": f"Practitioner/{world.doctor_id}",
                        "start": world.day.isoformat(),
                    },
                )
                proposal, candidate = resources_of(found)[:2]
                assert proposal["status"] == "proposed"
            elif operation["name"] == "hold":
                candidate["participant"].append(
                    {"actor": {"reference": f"Patient/{world.patients[1]}"}, "status": "accepted"}
                )
                held = await fhir_call(
                    client, "POST", "Appointment/$hold", headers, status=201, json=candidate
                )
                assert held["status"] == "pending"
            elif operation["name"] == "book":
                booked_hold = await fhir_call(
                    client, "POST", "Appointment/$book", headers, status=201, json=held
                )
                assert booked_hold["id"] == held["id"] and booked_hold["status"] == "booked"
                proposal["participant"].append(
                    {"actor": {"reference": f"Patient/{world.patients[1]}"}, "status": "accepted"}
                )
                booked = await fhir_call(
                    client, "POST", "Appointment/$book", headers, status=201, json=proposal
                )
                assert booked["status"] == "booked"
            else:
                raise AssertionError(f"undeclared operation {operation['name']}")
            called.append((name, operation["name"]))
    for operation in statement["rest"][0].get("operation", []):
        assert operation["name"] == "bulk-publish", operation
        async with feed_store(settings) as store:
            await publish_fhir_feed(job_context(settings, db, redis, store))
            manifest = (await client.get("/fhir/R4/$bulk-publish")).json()
        assert {o["type"] for o in manifest["output"]} == {"Location", "Schedule", "Slot"}
        called.append(("system", operation["name"]))
    assert ("Appointment", "book") in called and ("Slot", "status") in called
    assert ("Appointment", "hold") in called and ("HealthcareService", "read") in called
    assert ("system", "bulk-publish") in called
