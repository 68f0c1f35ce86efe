"""The restore drill of docs/deploy.md ("Backups and restore"): seed a database of its own
with appointments and a record whose document is on disk, back up both (pg_dump -Fc, a
copy of the documents folder), lose both, restore them (pg_restore into a new database,
the folder copied back), start medbook against the restored database and check that it
serves the same appointments and the record's document."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import shutil
import subprocess

import asyncpg
import httpx
import pytest

from app.records.documents import URL_PATH, new_key
from app.settings import async_database_url, plain_database_url
from app.storage import DiskStore
from conftest import LiveServer, _recreate, run_database_name, with_database
from db.models import Appointment, MedicalRecord
from db.session import create_engine, session_factory
from tests.integration.world import World, at, day_after_tomorrow, make_world

PDF = b"%PDF-1.4\n% the drill's discharge letter\n%%EOF\n"


@pytest.fixture
async def databases():
    """Names for the seeded and the restored database; both dropped afterwards."""
    admin = os.environ["TEST_ADMIN_DATABASE_URL"]
    names = (run_database_name("drill"), run_database_name("restored"))
    yield admin, names
    for name in names:
        await _recreate(admin, name, drop_only=True)


async def seed(
    settings, url: str, documents: DiskStore
) -> tuple[World, list[tuple[int, dt.datetime, str]], int]:
    """A world, three appointments of patient0 and one record with its document."""
    engine = create_engine(
        dataclasses.replace(settings, database_url=async_database_url(url)),
        application_name="drill",
    )
    try:
        async with session_factory(engine)() as session:
            world = await make_world(session, settings.secret_key, patients=2)
            day = day_after_tomorrow()
            rows = [
                Appointment(
                    doctor_id=world.doctor_id,
                    patient_id=world.patients[0],
                    clinic_id=world.clinic_id,
                    starts_at=at(day, hour),
                    ends_at=at(day, hour, 30),
                    status=status,
                )
                for hour, status in ((9, "booked"), (11, "cancelled"), (15, "booked"))
            ]
            key = new_key(world.patients[0], "pdf")
            await documents.put(key, PDF, "application/pdf")
            record = MedicalRecord(
                patient_id=world.patients[0],
                author_doctor_id=world.doctor_id,
                record_type="note",
                title="Discharge letter",
                storage_key=key,
                content_type="application/pdf",
                size=len(PDF),
                sha256="0" * 64,
            )
            session.add_all([*rows, record])
            await session.commit()
            booked = [(a.id, a.starts_at.astimezone(dt.UTC), a.status) for a in rows]
            return world, booked, record.id
    finally:
        await engine.dispose()


def run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{command[0]}: {done.stderr}"


async def test_dump_drop_restore_and_serve_the_same_data(settings, redis, databases, tmp_path):
    admin, (seeded_name, restored_name) = databases
    seeded, restored = with_database(admin, seeded_name), with_database(admin, restored_name)
    data_dir = tmp_path / "data"
    documents = DiskStore(data_dir / "documents", settings.secret_key, URL_PATH)
    await _recreate(admin, seeded_name, template=os.environ["TEST_TEMPLATE_DATABASE"])  # migrated
    world, booked, record_id = await seed(settings, seeded, documents)

    # Back up: the database first, then the documents (docs/deploy.md says why).
    dump = tmp_path / "medbook.dump"
    run("pg_dump", "--format=custom", "--no-owner", f"--file={dump}", plain_database_url(seeded))
    run("pg_restore", "--list", str(dump))
    shutil.copytree(data_dir / "documents", tmp_path / "backup" / "documents")

    # Lose both.
    await _recreate(admin, seeded_name, drop_only=True)
    shutil.rmtree(data_dir / "documents")

    # Restore both.
    await _recreate(admin, restored_name)
    run(
        "pg_restore",
        "--no-owner",
        "--exit-on-error",
        f"--dbname={plain_database_url(restored)}",
        str(dump),
    )
    shutil.copytree(tmp_path / "backup" / "documents", data_dir / "documents")
    conn = await asyncpg.connect(plain_database_url(restored))
    try:  # the audit table came back append-only
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_events")
    finally:
        await conn.close()

    server = await asyncio.to_thread(
        LiveServer, env={"DATABASE_URL": restored, "MEDBOOK_DATA_DIR": str(data_dir)}
    )
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            mine = await http.get("/api/appointments", headers=world.headers("patient0"))
            assert mine.status_code == 200, mine.text
            served = sorted(
                (item["id"], dt.datetime.fromisoformat(item["start"]), item["status"])
                for item in mine.json()["items"]
            )
            assert served == sorted(booked)
            listed = await http.get(
                f"/api/patients/{world.patients[0]}/records", headers=world.headers("doctor")
            )
            assert listed.status_code == 200, listed.text
            (record,) = listed.json()["records"]
            assert (record["id"], record["title"]) == (record_id, "Discharge letter")
            document = await http.get(record["document_url"])
            assert document.status_code == 200 and document.content == PDF
    finally:
        await asyncio.to_thread(server.stop)
