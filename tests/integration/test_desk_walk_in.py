"""The walk-in form over HTTP (issue #23 items 7, 10, 11): a new patient registered at the
desk, a stale choice never booked, the confirmation naming who was booked, and a reason
taking the desk beyond the per-doctor limit."""

import re

import pytest
from sqlalchemy import func, select

from app.appointments.walk_ins import PATIENT_REGISTERED, shown_by
from db.models import Appointment, AuditEvent, Patient
from tests.integration.test_live_pages import htmx, sign_in
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=3)


def walk_in_form(world, patient_id, q, time="10:00", **extra):
    return {
        "patient_id": str(patient_id),
        "q": q,
        "doctor_id": str(world.doctor_id),
        "date": day_after_tomorrow().isoformat(),
        "time": time,
        **extra,
    }


@pytest.mark.parametrize(
    ("name", "search", "shown"),
    [
        ("Lena Fischer", "fis", True),
        ("Lena Fischer-Lang", "lang", True),
        ("Lena Fischer", "LENA f", True),
        ("Lena Fischer", "isch", False),  # inside a word: the search does not list it
        ("Lena Fischer", "", False),
        ("Lena Fischer", "l", False),  # one letter lists nobody
    ],
)
def test_what_the_search_shows(name, search, shown):
    assert shown_by(name, search) is shown


async def test_a_new_patient_is_registered_and_booked_at_once(client, world, session):
    token = await sign_in(client, "desk@t.test")
    nobody = await client.get("/desk/patients", params={"q": "Nowak"}, headers=htmx(token))
    assert "No patient found for “Nowak”" in nobody.text
    assert 'id="new-patient-name"' in nobody.text and 'value="Nowak"' in nobody.text
    short = await client.get("/desk/patients", params={"q": "N"}, headers=htmx(token))
    assert "at least two letters" in short.text and "No patient found" not in short.text

    form = {"full_name": "  Jan   Nowak ", "date_of_birth": "1980-02-29", "email": "jan@t.test"}
    registered = await client.post("/desk/patients", data=form, headers=htmx(token))
    assert registered.status_code == 200
    assert "Registered Jan Nowak: selected for the walk-in." in registered.text
    patient = await session.scalar(select(Patient).where(Patient.full_name == "Jan Nowak"))
    assert patient is not None and patient.notify_by == "email"
    # The search box now says the name and the new patient is ticked.
    assert re.search(rf'value="{patient.id}" required checked', registered.text)
    assert 'id="patient-q"' in registered.text and 'value="Jan Nowak"' in registered.text
    event = await session.scalar(select(AuditEvent).where(AuditEvent.action == PATIENT_REGISTERED))
    assert event.subject_id == patient.id and event.actor_user_id == world.users["desk"].id

    again = await client.post("/desk/patients", data=form, headers=htmx(token))
    assert "is registered: search for them" in again.text and 'class="error"' in again.text
    for bad, why in (
        ({**form, "full_name": " "}, "full name"),
        ({**form, "full_name": "Ann Lee", "date_of_birth": "2999-01-01"}, "past date"),
        ({**form, "full_name": "Ann Lee", "date_of_birth": "soon"}, "date of birth"),
        ({**form, "full_name": "Ann Lee", "email": "not-an-address"}, "e-mail"),
    ):
        answer = await client.post("/desk/patients", data=bad, headers=htmx(token))
        assert answer.status_code == 200 and why in answer.text, answer.text
    assert await session.scalar(select(func.count()).select_from(Patient)) == 4

    booked = await client.post(
        "/desk/walk-in", data=walk_in_form(world, patient.id, "Jan Nowak"), headers=htmx(token)
    )
    assert "Booked at 10:00 for Jan Nowak with Dr. Berlin (appointment" in booked.text


async def test_patients_and_doctors_may_not_register_patients(client, world, session):
    for email in ("p0@t.test", "doc@t.test"):
        client.cookies.clear()
        token = await sign_in(client, email)
        answer = await client.post(
            "/desk/patients",
            data={"full_name": "Eve Mallory", "date_of_birth": "1990-01-01"},
            headers=htmx(token),
        )
        assert answer.status_code == 403
    assert await session.scalar(select(func.count()).select_from(Patient)) == 3


async def test_a_choice_the_search_no_longer_shows_is_never_booked(client, world, session):
    token = await sign_in(client, "desk@t.test")
    chosen = world.patients[1]  # "Patient 1"
    for q in ("", "Patient 2x", "Zed"):  # cleared, or typed on past the choice
        answer = await client.post(
            "/desk/walk-in", data=walk_in_form(world, chosen, q), headers=htmx(token)
        )
        assert "the patient search has changed: choose the patient again" in answer.text
    assert await session.scalar(select(func.count()).select_from(Appointment)) == 0
    unknown = await client.post(
        "/desk/walk-in", data=walk_in_form(world, 999999, "Patient"), headers=htmx(token)
    )
    assert "choose the patient again" in unknown.text
    booked = await client.post(
        "/desk/walk-in", data=walk_in_form(world, chosen, "patient 1"), headers=htmx(token)
    )
    assert "Booked at 10:00 for Patient 1 with Dr. Berlin" in booked.text
    assert await session.scalar(select(Appointment.patient_id)) == chosen


async def test_the_walk_in_form_goes_beyond_the_limit_with_a_reason(client, world, session):
    token = await sign_in(client, "desk@t.test")
    patient = world.patients[0]
    for time in ("09:00", "09:30", "10:00"):
        answer = await client.post(
            "/desk/walk-in",
            data=walk_in_form(world, patient, "Patient 0", time),
            headers=htmx(token),
        )
        assert "Booked at" in answer.text, answer.text
    refused = await client.post(
        "/desk/walk-in",
        data=walk_in_form(world, patient, "Patient 0", "11:00"),
        headers=htmx(token),
    )
    # In the desk's words: the form's field, never the API's name for it.
    assert "may hold at most 3 future appointments with one doctor" in refused.text
    assert "say why in &#34;Beyond the patient&#39;s booking limit because&#34;" in refused.text
    assert "override_reason" not in refused.text
    allowed = await client.post(
        "/desk/walk-in",
        data=walk_in_form(world, patient, "Patient 0", "11:00", override_reason="post-op checks"),
        headers=htmx(token),
    )
    assert "Booked at 11:00 for Patient 0" in allowed.text
    starts = set(await session.scalars(select(Appointment.starts_at)))
    assert at(day_after_tomorrow(), 11) in starts and len(starts) == 4
