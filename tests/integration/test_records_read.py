"""A records read is one statement in one round trip: the access decision, the list and
the audit row together, on an autocommit connection (no BEGIN, no COMMIT), committed before
any URL is returned; the API and the panel run the same statement; a refused read writes
only its refusal; a caller already in a transaction keeps its changes with the read's."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from app.access import audit
from app.access.identity import Principal
from app.records import records
from app.services import Services
from db.models import AuditEvent, MedicalRecord
from db.session import session_factory
from tests.integration.statements import watch
from tests.integration.test_records import add_appointment
from tests.integration.world import make_world


@pytest.fixture
async def seen(db):
    statements = watch(db)
    yield statements
    statements.stop()


@pytest.fixture
async def world(session, settings):
    world = await make_world(session, settings.secret_key, patients=2)
    await add_appointment(session, world, world.patients[0], "completed", 9)
    for n in range(3):
        session.add(
            MedicalRecord(
                patient_id=world.patients[0],
                author_doctor_id=world.doctor_id,
                record_type="lab_result",
                title=f"Result {n}",
                storage_key=f"patients/{world.patients[0]}/{n:032x}.pdf",
                content_type="application/pdf",
                size=10,
                sha256="0" * 64,
            )
        )
    await session.commit()
    return world


def is_read(statement: str) -> bool:
    """The compiled READ_AND_AUDIT (its text with $n placeholders)."""
    return "INSERT INTO audit_events" in statement and "FROM g LEFT JOIN r ON true" in statement


def doctor(world) -> Principal:
    user = world.users["doctor"]
    return Principal(user.id, user.email, "doctor", doctor_id=world.doctor_id)


async def audit_rows(engine) -> list[AuditEvent]:
    async with session_factory(engine)() as other:  # another connection: committed rows only
        return list((await other.scalars(select(AuditEvent).order_by(AuditEvent.id))).all())


async def test_a_list_is_one_autocommit_statement_committed_before_it_returns(
    db, world, seen, client
):
    store = Services.of(client.app).documents
    async with session_factory(db)() as session:
        grant, items = await records.list_records(
            session, store, doctor(world), world.patients[0], client_addr="10.0.0.7"
        )
        assert not session.in_transaction()  # the connection went back to the pool
    assert grant.basis == "care" and len(items) == 3
    assert all(item.document_url for item in items)
    await seen.settled()
    assert len(seen) == 1
    statement, in_transaction = seen[0]
    assert is_read(statement)
    assert not in_transaction  # autocommit: no BEGIN before it, no COMMIT after it
    (row,) = await audit_rows(db)
    assert row.action == audit.RECORD_READ and not row.flagged
    assert row.actor_user_id == world.users["doctor"].id and row.patient_id == world.patients[0]
    assert row.details == {
        "record_ids": [item.id for item in items],
        "urls_issued": 3,
        "basis": "care",
        "via": "api",
    }
    assert str(row.client_addr) == "10.0.0.7" and row.subject_type == "medical_record_list"


async def test_the_api_and_the_panel_run_the_same_statement(world, client):
    engine = Services.of(client.app).engine
    seen = watch(engine)
    doctor_headers = world.headers("doctor")
    try:
        api = await client.get(f"/api/patients/{world.patients[0]}/records", headers=doctor_headers)
        panel = await client.get(f"/patients/{world.patients[0]}/records", headers=doctor_headers)
        await seen.settled()
    finally:  # the app outlives the test (conftest.py's SharedApp)
        seen.stop()
    assert api.status_code == 200 and panel.status_code == 200
    reads = [s for s, _ in seen if is_read(s)]
    assert len(reads) == 2


async def test_a_refused_read_writes_its_refusal_and_no_read(db, world, client):
    store = Services.of(client.app).documents
    desk = world.users["desk"]
    async with session_factory(db)() as session:
        with pytest.raises(records.BreakGlassRequired):
            await records.list_records(session, store, doctor(world), world.patients[1])
        with pytest.raises(records.BreakGlassRequired):  # too short to count as a reason
            await records.view_record(
                session, store, doctor(world), world.patients[1], 5, reason="   because  "
            )
        with pytest.raises(records.Forbidden):
            await records.list_records(
                session, store, Principal(desk.id, desk.email, "front_desk"), world.patients[0]
            )
        with pytest.raises(records.NotFound):
            await records.list_records(session, store, doctor(world), 987654, reason="x" * 20)
    rows = await audit_rows(db)
    assert [row.action for row in rows] == [audit.RECORD_REFUSED] * 4
    assert [row.details["reason"] for row in rows] == [
        "not_in_care",
        "not_in_care",
        "wrong_role",
        "not_found",
    ]
    assert [row.patient_id for row in rows] == [world.patients[1]] * 2 + [world.patients[0], None]
    assert [row.subject_id for row in rows] == [None, 5, None, None]
    assert rows[2].actor_user_id == desk.id and rows[2].flagged
    assert rows[3].details["asked_patient_id"] == 987654


async def test_break_glass_is_flagged_with_its_reason(db, world, client):
    store = Services.of(client.app).documents
    async with session_factory(db)() as session:
        grant, items = await records.list_records(
            session, store, doctor(world), world.patients[1], reason="  covering for Dr. Who  "
        )
    assert grant.basis == "break_glass" and items == []
    (row,) = await audit_rows(db)
    assert row.action == audit.BREAK_GLASS and row.flagged
    assert row.details == {
        "record_ids": [],
        "urls_issued": 0,
        "basis": "break_glass",
        "via": "api",
        "reason": "covering for Dr. Who",
    }


async def test_a_caller_in_a_transaction_commits_its_change_with_the_read(db, world, client):
    store = Services.of(client.app).documents
    async with session_factory(db)() as session:
        await session.execute(
            text("UPDATE patients SET phone = '+4930123' WHERE id = :id"), {"id": world.patients[0]}
        )
        assert session.in_transaction()
        view = await records.view_record(
            session, store, doctor(world), world.patients[0], (await first_record(session, world))
        )
        assert not session.in_transaction()
    assert view.title.startswith("Result")
    async with session_factory(db)() as other:
        phone = await other.scalar(
            text("SELECT phone FROM patients WHERE id = :id"), {"id": world.patients[0]}
        )
    assert phone == "+4930123"
    (row,) = await audit_rows(db)
    assert row.subject_type == "medical_record" and row.subject_id == view.id


async def first_record(session, world) -> int:
    return await session.scalar(
        select(func.min(MedicalRecord.id)).where(MedicalRecord.patient_id == world.patients[0])
    )
