"""The waitlist's pages: the join forms' visit-type chooser (patient and desk), and the lists
that name the visit type an entry waits for."""

import html
import re

import pytest
from sqlalchemy import select

from db.models import VisitType, WaitlistEntry
from tests.integration.world import day_after_tomorrow, make_world

HX = {"HX-Request": "true"}


@pytest.fixture
async def world(client, session, settings):
    return await make_world(session, settings.secret_key, patients=2)


@pytest.fixture
async def kinds(session, world):
    """Dr. Berlin's types: two online, one booked by staff only; Dr. NY has none."""
    first = VisitType(doctor_id=world.doctor_id, name="First visit", minutes=30)
    follow = VisitType(doctor_id=world.doctor_id, name="Follow-up", minutes=30)
    jab = VisitType(doctor_id=world.doctor_id, name="Vaccination", minutes=30, online=False)
    session.add_all([first, follow, jab])
    await session.commit()
    return {"first": first.id, "follow": follow.id, "jab": jab.id}


def chooser(page: str) -> dict[str, str]:
    """The visit-type chooser's options: value -> label (as text: escaped or not)."""
    block = re.search(r'<label id="waitlist-kind">.*?</label>', page, re.S)
    assert block, "the form has no visit-type chooser"
    options = re.findall(r'<option value="(\d*)">([^<]*)</option>', block.group(0))
    return {value: html.unescape(label) for value, label in options}


def wish_form(world, **extra):
    day = day_after_tomorrow().isoformat()
    return {"doctor_id": str(world.doctor_id), "from": day, "to": day, **extra}


async def test_the_patient_chooses_among_the_doctors_online_types(client, world, kinds):
    form = await client.get(
        "/me/waitlist/join",
        params={"doctor_id": world.doctor_id},
        headers={**world.headers("patient0"), **HX},
    )
    assert form.status_code == 200, form.text
    options = chooser(form.text)
    assert options == {
        "": "Any: the doctor's usual slots",
        str(kinds["first"]): "First visit (30 min)",
        str(kinds["follow"]): "Follow-up (30 min)",
    }  # the staff-only vaccination is not offered to a patient
    untyped = await client.get(
        "/me/waitlist/join",
        params={"doctor_id": world.other_doctor_id},
        headers={**world.headers("patient0"), **HX},
    )
    assert chooser(untyped.text) == {"": "No particular type"}


async def test_a_patient_joins_for_a_type_and_their_list_names_it(client, world, kinds, session):
    answer = await client.post(
        "/me/waitlist",
        data=wish_form(world, visit_type_id=str(kinds["follow"])),
        headers={**world.headers("patient0"), **HX},
    )
    assert answer.status_code == 200, answer.text
    assert "You are on the waitlist" in answer.text
    entry = await session.scalar(select(WaitlistEntry))
    assert entry is not None and entry.visit_type_id == kinds["follow"]
    page = await client.get("/me/appointments", headers=world.headers("patient0"))
    assert 'Dr. Berlin (<span class="visit-type">Follow-up</span>)' in page.text

    refused = await client.post(
        "/me/waitlist",
        data=wish_form(world, visit_type_id=str(kinds["jab"])),
        headers={**world.headers("patient1"), **HX},
    )
    assert "booked by the clinic&#39;s staff only" in refused.text
    assert len((await session.scalars(select(WaitlistEntry))).all()) == 1


async def test_the_desk_chooses_any_type_and_its_list_names_it(client, world, kinds, session):
    desk = {**world.headers("desk"), **HX}
    page = await client.get("/desk/waitlist", headers=world.headers("desk"))
    assert chooser(page.text) == {"": "No particular type"}  # any doctor: no type
    reloaded = await client.get(
        "/desk/waitlist", params={"doctor_id": world.doctor_id}, headers=desk
    )
    assert set(chooser(reloaded.text)) == {"", *map(str, kinds.values())}
    assert "Vaccination (30 min, staff only)" in reloaded.text

    added = await client.post(
        f"/desk/waitlist?clinic_id={world.clinic_id}",
        data=wish_form(  # as the form sends it: with its clinic and an empty specialty
            world,
            patient_id=str(world.patients[1]),
            visit_type_id=str(kinds["jab"]),
            clinic_id=str(world.clinic_id),
            specialty="",
        ),
        headers=desk,
    )
    assert "Added to the waitlist." in added.text
    assert 'Dr. Berlin (<span class="visit-type">Vaccination</span>)' in added.text
    entry = await session.scalar(select(WaitlistEntry))
    assert entry is not None and entry.visit_type_id == kinds["jab"]

    # Another doctor's type is refused with a reason, not stored.
    other = await client.post(
        f"/desk/waitlist?clinic_id={world.clinic_id}",
        data={
            **wish_form(world, patient_id=str(world.patients[0])),
            "doctor_id": "",
            "specialty": "GP",
            "clinic_id": str(world.clinic_id),
            "visit_type_id": str(kinds["first"]),
        },
        headers=desk,
    )
    assert "give doctor_id with visit_type_id" in other.text
    assert len((await session.scalars(select(WaitlistEntry))).all()) == 1


async def test_a_chooser_for_no_such_doctor_is_a_404(client, world):
    missing = await client.get(
        "/me/waitlist/join", params={"doctor_id": 999999}, headers=world.headers("patient0")
    )
    assert missing.status_code == 404
