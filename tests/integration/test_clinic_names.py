"""Two clinics may not share a name (compared without case and spaces), through the API,
the admin page and a race of two requests."""

import asyncio
import os
import uuid

import asyncpg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app.errors import Conflict
from app.scheduling import directory
from conftest import _recreate, with_database
from db import migrate
from db.models import Clinic
from db.session import session_factory
from tests.integration.auth_helpers import bearer, browser_login, csrf_from, make_user


@pytest.fixture
async def admin_headers(session, settings):
    return bearer(settings, await make_user(session, "admin", "root@example.test"))


async def clinic_names(session) -> list[str]:
    return list(await session.scalars(select(Clinic.name).order_by(Clinic.id)))


@pytest.mark.parametrize(
    "twin", ["Praxis Mitte", "praxis mitte", "  PRAXIS   Mitte ", "PraxisMitte"]
)
async def test_a_name_equal_but_for_case_and_spaces_is_refused(
    client, session, admin_headers, twin
):
    first = {"name": "Praxis Mitte", "timezone": "Europe/Berlin"}
    assert (await client.post("/api/clinics", json=first, headers=admin_headers)).status_code == 201
    again = await client.post(
        "/api/clinics", json={"name": twin, "timezone": "Europe/Berlin"}, headers=admin_headers
    )
    assert again.status_code == 409
    assert "'Praxis Mitte' already exists" in again.json()["detail"]
    assert await clinic_names(session) == ["Praxis Mitte"]


async def test_clinics_told_apart_by_their_city_are_accepted(client, session, admin_headers):
    for name in ("Praxis Mitte Berlin", "Praxis  Mitte   Hamburg "):
        answer = await client.post(
            "/api/clinics", json={"name": name, "timezone": "Europe/Berlin"}, headers=admin_headers
        )
        assert answer.status_code == 201
    # Stored with its spaces tidied, as a patient will read it.
    assert await clinic_names(session) == ["Praxis Mitte Berlin", "Praxis Mitte Hamburg"]


async def test_the_admin_page_shows_the_clash_in_the_form(client, session):
    await make_user(session, "admin", "root@example.test")
    assert (await browser_login(client, "root@example.test")).status_code == 200
    form = {"name": "Spreeufer", "timezone": "Europe/Berlin", "address": ""}
    token = csrf_from((await client.get("/admin/clinics")).text)
    assert (
        "Added Spreeufer"
        in (await client.post("/admin/clinics", data={**form, "csrf_token": token})).text
    )
    form["name"] = "spree ufer"
    token = csrf_from((await client.get("/admin/clinics")).text)
    clash = await client.post("/admin/clinics", data={**form, "csrf_token": token})
    assert clash.status_code == 200
    assert 'role="alert"' in clash.text and "already exists" in clash.text
    assert 'value="spree ufer"' in clash.text  # what was typed, to change it
    assert await clinic_names(session) == ["Spreeufer"]


async def test_two_parallel_creates_give_one_201_and_one_409(client, session, admin_headers):
    body = {"name": "Twin Clinic", "timezone": "Europe/Berlin"}
    answers = await asyncio.gather(
        *(client.post("/api/clinics", json=body, headers=admin_headers) for _ in range(2))
    )
    assert sorted(a.status_code for a in answers) == [201, 409]
    assert await clinic_names(session) == ["Twin Clinic"]


async def test_a_clinic_committed_after_the_check_still_refuses_the_second(db):
    """The unique index decides when both requests pass the check: the second insert
    waits for the first transaction, then fails, and the caller is told 409."""
    async with db.connect() as first:
        await first.execute(
            text("INSERT INTO clinics (name, timezone) VALUES ('Twin Clinic', 'Europe/Berlin')")
        )  # not committed yet: invisible to the check below
        async with session_factory(db)() as second:
            creating = asyncio.create_task(
                directory.create_clinic(second, name="twin clinic", timezone="Europe/Berlin")
            )
            await _until_waiting_for_a_lock(db)
            assert not creating.done()
            await first.commit()
            with pytest.raises(Conflict, match="'twin clinic' already exists"):
                await creating
    async with session_factory(db)() as check:
        assert await clinic_names(check) == ["Twin Clinic"]


async def test_the_database_refuses_a_twin_written_past_the_domain(session):
    session.add_all([Clinic(name="Mitte", timezone="UTC"), Clinic(name=" mit te", timezone="UTC")])
    with pytest.raises(IntegrityError, match="uq_clinics_name_key"):
        await session.commit()
    await session.rollback()
    assert await session.scalar(select(func.count()).select_from(Clinic)) == 0


async def _until_waiting_for_a_lock(engine) -> None:
    async with engine.connect() as conn:
        while not await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND query LIKE 'INSERT INTO clinics%'"
            )
        ):
            await conn.rollback()  # a fresh snapshot of pg_stat_activity each time
            await asyncio.sleep(0.02)


async def test_the_migration_keeps_existing_twins_apart_by_their_id():
    admin = os.environ["TEST_ADMIN_DATABASE_URL"]
    name = f"medbook_clinic_names_{uuid.uuid4().hex[:8]}"
    await _recreate(admin, name)
    url = with_database(admin, name)
    try:
        await asyncio.to_thread(migrate.upgrade, url, "0006")
        conn = await asyncpg.connect(url)
        try:
            for clinic in ("Mitte", "mitte", "Spree", "M itte"):
                await conn.execute(
                    "INSERT INTO clinics (name, timezone) VALUES ($1, 'UTC')", clinic
                )
            await asyncio.to_thread(migrate.upgrade, url, "0011")
            rows = await conn.fetch("SELECT id, name FROM clinics ORDER BY id")
        finally:
            await conn.close()
        assert [r["name"] for r in rows] == ["Mitte", "mitte (#2)", "Spree", "M itte (#4)"]
    finally:
        await _recreate(admin, name, drop_only=True)
