"""Migrations: upgrade from empty, downgrade to base, upgrade again."""

import asyncio
import os
import uuid

import asyncpg
import pytest

from conftest import _recreate, with_database
from db import migrate


async def tables(url):
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        )
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_up_down_up():
    admin = os.environ["TEST_ADMIN_DATABASE_URL"]
    name = f"medbook_migrations_{uuid.uuid4().hex[:8]}"
    await _recreate(admin, name)
    url = with_database(admin, name)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        assert "(head)" in await asyncio.to_thread(migrate.current, url)
        assert {"appointments", "clinics", "users", "notifications"} <= await tables(url)

        await asyncio.to_thread(migrate.downgrade, url, "base")
        assert await asyncio.to_thread(migrate.current, url) == ""
        assert await tables(url) <= {"alembic_version"}

        await asyncio.to_thread(migrate.upgrade, url)
        assert "(head)" in await asyncio.to_thread(migrate.current, url)
        assert "appointments" in await tables(url)
    finally:
        await _recreate(admin, name, drop_only=True)


async def test_bookings_made_before_visit_types_keep_their_times_and_still_exclude():
    """Issue 18's migration (0013) adds buffers and the stored `blocked` span that
    `no_overlap` compares: a booking made before it keeps its row and times, gets no type
    and no buffers (its span is its time), and still refuses an overlapping booking."""
    admin = os.environ["TEST_ADMIN_DATABASE_URL"]
    name = f"medbook_migrations_{uuid.uuid4().hex[:8]}"
    await _recreate(admin, name)
    url = with_database(admin, name)
    try:
        await asyncio.to_thread(migrate.upgrade, url, "0012")
        conn = await asyncpg.connect(url)
        try:
            clinic = await conn.fetchval(
                "INSERT INTO clinics (name, timezone) VALUES ('B', 'Europe/Berlin') RETURNING id"
            )
            doctor = await conn.fetchval(
                "INSERT INTO doctors (clinic_id, full_name, specialty) VALUES ($1, 'D', 'GP')"
                " RETURNING id",
                clinic,
            )
            patient = await conn.fetchval(
                "INSERT INTO patients (full_name) VALUES ('P') RETURNING id"
            )
            booking = await conn.fetchval(
                "INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at, ends_at)"
                " VALUES ($1, $2, $3, '2030-01-07 09:00+00', '2030-01-07 09:30+00') RETURNING id",
                doctor,
                patient,
                clinic,
            )
        finally:
            await conn.close()

        await asyncio.to_thread(migrate.upgrade, url)
        conn = await asyncpg.connect(url)
        try:
            row = await conn.fetchrow(
                "SELECT starts_at, ends_at, status, visit_type_id, buffer_before_minutes,"
                " buffer_after_minutes, lower(blocked) AS lo, upper(blocked) AS hi"
                " FROM appointments WHERE id = $1",
                booking,
            )
            assert row["status"] == "booked" and row["visit_type_id"] is None
            assert (row["buffer_before_minutes"], row["buffer_after_minutes"]) == (0, 0)
            assert (row["lo"], row["hi"]) == (row["starts_at"], row["ends_at"])
            with pytest.raises(asyncpg.exceptions.ExclusionViolationError):
                await conn.execute(
                    "INSERT INTO appointments (doctor_id, patient_id, clinic_id, starts_at,"
                    " ends_at) VALUES ($1, $2, $3, '2030-01-07 09:15+00', '2030-01-07 09:45+00')",
                    doctor,
                    patient,
                    clinic,
                )
        finally:
            await conn.close()
    finally:
        await _recreate(admin, name, drop_only=True)
