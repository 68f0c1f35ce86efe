"""The schema's own guarantees, exercised with raw SQL (no application code in the way)."""

import asyncpg
import pytest

INSERT = """
INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at, status)
VALUES ($1, $2, $3, $4::text::timestamptz, $5::text::timestamptz, $6)
"""


@pytest.fixture
async def conn(db, database_url):
    conn = await asyncpg.connect(database_url)
    clinic = await conn.fetchval(
        "INSERT INTO clinics (name, timezone) VALUES ('C', 'Europe/Berlin') RETURNING id"
    )
    doctors = [
        await conn.fetchval(
            "INSERT INTO doctors (clinic_id, full_name, specialty) VALUES ($1, $2, 'GP') "
            "RETURNING id",
            clinic,
            name,
        )
        for name in ("A", "B")
    ]
    patient = await conn.fetchval("INSERT INTO patients (full_name) VALUES ('P') RETURNING id")
    yield conn, (clinic, doctors, patient)
    await conn.close()


async def book(conn, doctor_index, start, end, status="booked"):
    conn, (clinic, doctors, patient) = conn
    await conn.execute(
        INSERT,
        doctors[doctor_index],
        patient,
        clinic,
        f"2026-06-01 {start}+00",
        f"2026-06-01 {end}+00",
        status,
    )


async def test_overlapping_active_appointments_are_refused(conn):
    await book(conn, 0, "09:00", "09:30")
    with pytest.raises(asyncpg.ExclusionViolationError):
        await book(conn, 0, "09:15", "09:45")  # partial overlap, different length
    with pytest.raises(asyncpg.ExclusionViolationError):
        await book(conn, 0, "09:00", "09:30")  # exact duplicate
    with pytest.raises(asyncpg.ExclusionViolationError):
        await book(conn, 0, "08:00", "10:00", status="checked_in")  # covers it


async def test_adjacent_slots_and_other_doctors_are_fine(conn):
    await book(conn, 0, "09:00", "09:30")
    await book(conn, 0, "09:30", "10:00")  # half-open ranges touch but do not overlap
    await book(conn, 0, "08:30", "09:00")
    await book(conn, 1, "09:00", "09:30")  # same time, other doctor
    assert await conn[0].fetchval("SELECT count(*) FROM appointments") == 4


async def test_a_cancelled_appointment_blocks_nothing(conn):
    await book(conn, 0, "09:00", "09:30", status="cancelled")
    await book(conn, 0, "09:00", "09:30")
    await book(conn, 0, "09:10", "09:20", status="cancelled")
    with pytest.raises(asyncpg.ExclusionViolationError):
        await conn[0].execute(
            "UPDATE appointments SET status = 'booked' WHERE id = "
            "(SELECT max(id) FROM appointments)"
        )


async def test_check_constraints(conn):
    with pytest.raises(asyncpg.CheckViolationError):
        await book(conn, 0, "10:00", "09:00")
    with pytest.raises(asyncpg.CheckViolationError):
        await book(conn, 0, "10:00", "10:30", status="maybe")
    with pytest.raises(asyncpg.CheckViolationError):
        await conn[0].execute(
            "INSERT INTO users (email, password_hash, role) VALUES ('a@b.c', 'x', 'patient')"
        )  # a patient login needs its patient


async def test_emails_are_unique_case_insensitively(conn):
    conn = conn[0]
    await conn.execute(
        "INSERT INTO users (email, password_hash, role) VALUES ('Ann@Example.com', 'x', 'admin')"
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO users (email, password_hash, role) "
            "VALUES ('ann@example.COM', 'x', 'admin')"
        )


async def test_availability_lookup_uses_the_doctor_index(conn):
    conn = conn[0]
    await conn.execute("SET enable_seqscan = off")
    plan = await conn.fetchval(
        "EXPLAIN (FORMAT TEXT) SELECT starts_at, ends_at FROM appointments "
        "WHERE doctor_id = 1 AND starts_at >= now() AND starts_at < now() + interval '1 day' "
        "AND status <> 'cancelled'"
    )
    assert "ix_appointments_doctor_starts" in plan
