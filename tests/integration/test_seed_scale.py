"""`medbook seed scale`: a small year loads on the grid, without overlaps, the same every time."""

import datetime as dt
import os
import uuid
from collections import defaultdict
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from app.scheduling.availability import TemplateRange, day_grid
from conftest import run_database_name
from db.seed_scale import ScaleLoadRefused, ScaleSpec, fill_rate, load_scale, make_plan

ADMIN_URL = os.environ["TEST_ADMIN_DATABASE_URL"]
TEMPLATE = os.environ["TEST_TEMPLATE_DATABASE"]
TODAY = dt.date(2026, 3, 15)  # the window spans both DST changes of Berlin and New York
NOW = dt.datetime.combine(TODAY, dt.time(12), dt.UTC)  # the loader's past/future split
SPEC = ScaleSpec(
    clinics=3, doctors_per_clinic=6, patients=500, target_appointments=3000, seed=7, today=TODAY
)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
TABLES = (
    "clinics",
    "doctors",
    "patients",
    "users",
    "doctor_schedule_templates",
    "schedule_exceptions",
    "appointments",
    "medical_records",
)


def _with_database(url: str, name: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str, *args):
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _checksum(url: str) -> str:
    """One md5 over every row of every loaded table, in id order."""
    parts = [
        f"(SELECT md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t.id), '')) FROM {table} t)"
        for table in TABLES
    ]
    rows = await _fetch(url, f"SELECT md5(concat_ws('|', {', '.join(parts)}))")
    return rows[0][0]


@pytest.fixture(scope="module")
async def loaded():
    """A fresh, migrated database (a clone of the run's template) holding SPEC; (url,
    counts, progress calls). Dropped after."""
    name = run_database_name("seedtest")
    await _execute(ADMIN_URL, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    url = _with_database(ADMIN_URL, name)
    try:
        calls: list[tuple[str, int, int]] = []
        counts = await load_scale(
            url, SPEC, password_hash=HASH, progress=lambda *call: calls.append(call)
        )
        yield url, counts, calls
    finally:
        await _execute(ADMIN_URL, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_full_scale_plan_fills_about_half_the_grid():
    plan = make_plan(ScaleSpec(today=TODAY))
    past_fill, grid_slots = fill_rate(plan)
    assert 3_000_000 < grid_slots < 4_000_000
    assert 0.45 < 1_800_000 / grid_slots < 0.65
    assert past_fill < 0.7
    assert len(plan.doctors) == 500
    assert {d.slot_minutes for d in plan.doctors} == {15, 20, 30}


async def test_counts_match_the_spec(loaded):
    url, counts, calls = loaded
    assert counts["clinics"] == 3
    assert counts["doctors"] == 18
    assert counts["patients"] == 500
    assert counts["users"] == 1 + 3 + 18 + 500  # admin, desks, doctors, patients
    assert abs(counts["appointments"] - 3000) < 3000 * 0.1
    assert counts["schedule_exceptions"] >= 3 * 2  # New Year's and Christmas per clinic
    assert counts["doctor_schedule_templates"] >= 18 * 5
    actual = {t: (await _fetch(url, f"SELECT count(*) FROM {t}"))[0][0] for t in TABLES}
    assert actual == {t: counts.get(t, 0) for t in TABLES}
    for table in ("notifications", "audit_events", "clinic_daily_stats"):
        assert (await _fetch(url, f"SELECT count(*) FROM {table}"))[0][0] == 0
    assert {stage for stage, _, _ in calls} >= {"patients", "appointments", "analyze"}
    assert calls[-1] == ("analyze", 1, 1)


async def test_status_mix_follows_past_and_future(loaded):
    url, _, _ = loaded
    rows = await _fetch(
        url,
        "SELECT ends_at <= $1 AS past, status, count(*) AS n FROM appointments GROUP BY 1, 2",
        NOW,
    )
    mix = {(r["past"], r["status"]): r["n"] for r in rows}
    assert set(mix) <= {
        (True, "completed"),
        (True, "no_show"),
        (True, "cancelled"),
        (False, "booked"),
        (False, "cancelled"),
    }
    attended = mix[True, "completed"] + mix[True, "no_show"]
    assert 0.05 < mix[True, "no_show"] / attended < 0.15
    assert 0.02 < sum(n for (_, s), n in mix.items() if s == "cancelled") / sum(mix.values()) < 0.09
    assert mix[False, "booked"] > 0


async def test_every_appointment_lies_on_its_doctors_grid(loaded):
    url, _, _ = loaded
    templates = defaultdict(list)
    for t in await _fetch(url, "SELECT * FROM doctor_schedule_templates"):
        templates[t["doctor_id"]].append(
            TemplateRange(t["weekday"], t["start_time"], t["end_time"], t["slot_minutes"])
        )
    rows = await _fetch(
        url,
        "SELECT a.doctor_id, a.starts_at, a.ends_at, c.timezone"
        " FROM appointments a JOIN clinics c ON c.id = a.clinic_id",
    )
    offsets = defaultdict(set)
    for a in rows:
        tz = ZoneInfo(a["timezone"])
        day = a["starts_at"].astimezone(tz).date()
        grid = {i.start: i.end for i in day_grid(day, templates[a["doctor_id"]], tz)}
        assert grid.get(a["starts_at"]) == a["ends_at"], dict(a)
        offsets[a["timezone"]].add(a["starts_at"].astimezone(tz).utcoffset())
    # Both sides of a daylight-saving change were generated (and were on the grid).
    assert len(offsets["Europe/Berlin"]) == 2
    assert len(offsets["America/New_York"]) == 2


async def test_no_overlaps_and_nothing_during_leave(loaded):
    url, _, _ = loaded
    doctor_overlaps = await _fetch(
        url,
        "SELECT count(*) FROM appointments a JOIN appointments b"
        " ON a.doctor_id = b.doctor_id AND a.id < b.id"
        " AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at"
        " WHERE a.status <> 'cancelled' AND b.status <> 'cancelled'",
    )
    patient_overlaps = await _fetch(
        url,
        "SELECT count(*) FROM appointments a JOIN appointments b"
        " ON a.patient_id = b.patient_id AND a.id < b.id"
        " AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at"
        " WHERE a.status <> 'cancelled' AND b.status <> 'cancelled'",
    )
    during_exceptions = await _fetch(
        url,
        "SELECT count(*) FROM appointments a JOIN schedule_exceptions e"
        " ON (e.doctor_id = a.doctor_id OR (e.doctor_id IS NULL AND e.clinic_id = a.clinic_id))"
        " AND a.starts_at < e.ends_at AND e.starts_at < a.ends_at",
    )
    leave = await _fetch(url, "SELECT count(*) FROM schedule_exceptions WHERE kind = 'leave'")
    assert doctor_overlaps[0][0] == 0
    assert patient_overlaps[0][0] == 0
    assert during_exceptions[0][0] == 0
    assert leave[0][0] > 0


async def test_logins_and_sequences_are_ready_for_the_app(loaded):
    url, _, _ = loaded
    roles = await _fetch(url, "SELECT role, count(*) FROM users GROUP BY role")
    assert dict(roles) == {"admin": 1, "front_desk": 3, "doctor": 18, "patient": 500}
    spot = await _fetch(
        url,
        "SELECT u.email, u.password_hash, u.clinic_id, u.doctor_id, d.clinic_id AS home"
        " FROM users u LEFT JOIN doctors d ON d.id = u.doctor_id"
        " WHERE lower(u.email) IN ('admin@scale.test', 'desk2@scale.test', 'doctor7@scale.test')",
    )
    assert len(spot) == 3
    assert {r["password_hash"] for r in spot} == {HASH}
    assert all(r["clinic_id"] == r["home"] for r in spot if r["doctor_id"])
    # The app's own inserts get fresh ids after the supplied ones.
    conn = await asyncpg.connect(url)
    transaction = conn.transaction()
    await transaction.start()
    try:
        for table, next_id in (("clinics", 4), ("patients", 501), ("users", 523)):
            assert (
                await conn.fetchval(f"SELECT nextval(pg_get_serial_sequence('{table}', 'id'))")
                == next_id
            )
    finally:
        await transaction.rollback()
        await conn.close()


async def test_refuses_to_load_over_data_without_replace(loaded):
    url, _, _ = loaded
    before = await _checksum(url)
    with pytest.raises(ScaleLoadRefused, match="replace"):
        await load_scale(url, SPEC, password_hash=HASH)
    assert await _checksum(url) == before


async def test_same_seed_same_data(loaded):
    url, _, _ = loaded
    first = await _checksum(url)

    await load_scale(url, SPEC, password_hash=HASH, replace=True)
    assert await _checksum(url) == first

    other = ScaleSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1})
    await load_scale(url, other, password_hash=HASH, replace=True)
    assert await _checksum(url) != first

    await load_scale(url, SPEC, password_hash=HASH, replace=True)
    assert await _checksum(url) == first


async def test_a_plain_owner_role_loads_the_same_rows(loaded):
    """Without superuser the foreign keys are checked row by row; the rows are the same."""
    url, _, _ = loaded
    first = await _checksum(url)
    role = f"seedtest_{uuid.uuid4().hex[:10]}"
    await _execute(ADMIN_URL, f"CREATE ROLE {role} LOGIN NOSUPERUSER")
    try:
        # Like an app role that ran its own migrations: it owns the tables and sequences.
        await _execute(
            url,
            f"""DO $$ DECLARE t text; BEGIN
                  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
                    EXECUTE format('ALTER TABLE %I OWNER TO {role}', t);
                  END LOOP;
                END $$""",
        )
        as_role = _with_database(url, urlsplit(url).path[1:], user=role)
        counts = await load_scale(as_role, SPEC, password_hash=HASH, replace=True)
        assert counts["appointments"] > 0
        assert await _checksum(url) == first
    finally:
        await _execute(url, f"REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}")
        await _execute(ADMIN_URL, f"DROP ROLE {role}")


def test_slots_across_a_dst_change_match_availability():
    """A range that spans the spring-forward gap is laid out slot by slot, like the app."""
    from db.seed_scale import _range_starts

    tz = ZoneInfo("Europe/Berlin")
    day = dt.date(2026, 3, 29)  # 02:00-03:00 does not exist
    starts = _range_starts(day, 60, 4 * 60, 30, tz)
    expected = day_grid(day, [TemplateRange(6, dt.time(1), dt.time(4), 30)], tz)
    assert starts == [i.start for i in expected]
    assert len(starts) == 4  # 01:00, 01:30, 03:00, 03:30
