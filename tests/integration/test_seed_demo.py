"""The demo data keeps the booking rules: a demo patient can book with every demo doctor."""

import datetime as dt
import io

import pytest
from sqlalchemy import func, select, text

from app.analytics.rollups import BUMP_GENERATION_SQL
from db.models import Appointment, Doctor, User
from db.seed_demo import seed_demo as load_demo
from tests.integration.auth_helpers import bearer

# What a demo seed left in the database, per (day, limit): the tables it filled, as binary
# COPY, and the sequences it moved. A seed costs some 3.4 s of CPU (its inserts and the
# rollups' backfill); five tests seed with two sets of arguments, so each test process
# seeds once per set and later tests get the same rows back, ids and all, in milliseconds.
# The one table the seed writes that a test's empty database keeps (the `db` fixture leaves
# it): the analytics generation, which the seed's rollups move forward, as a restore does.
KEPT_TABLES = {"analytics_watermarks"}
_SEEDED: dict[tuple[dt.date, int], tuple[dict[str, bytes], list[tuple[str, int]]]] = {}


async def _tables(session) -> dict[str, bool]:
    names = await session.scalars(
        text(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename <> 'alembic_version' ORDER BY tablename"
        )
    )
    return {
        name: bool(await session.scalar(text(f'SELECT EXISTS (SELECT FROM "{name}")')))
        for name in names.all()
    }


async def _driver(session):
    connection = await session.connection()
    return (await connection.get_raw_connection()).driver_connection


async def seed_demo(session, *, max_future_per_doctor: int = 3) -> bool:
    """`db.seed_demo.seed_demo` on the test's empty database: the first time per day and
    limit in this process it seeds, and keeps what the seed wrote; after that it writes the
    same rows back (triggers off, as the kept rows include what triggers wrote), sets the
    sequences where the seed left them and moves the analytics generation on, as the seed
    does. Returns what the seed returned."""
    key = (dt.date.today(), max_future_per_doctor)
    superuser = await session.scalar(
        text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    )
    if key in _SEEDED and superuser:
        copies, sequences = _SEEDED[key]
        filled = [t for t, rows in (await _tables(session)).items() if rows]
        assert set(filled) <= KEPT_TABLES, f"the database is not empty: {filled}"
        await session.execute(text("SET LOCAL session_replication_role = replica"))
        driver = await _driver(session)
        for table, data in copies.items():
            await driver.copy_to_table(table, source=io.BytesIO(data), format="binary")
        for name, value in sequences:
            await session.execute(text("SELECT setval(:n, :v)"), {"n": name, "v": value})
        await session.execute(BUMP_GENERATION_SQL)
        await session.commit()
        await session.execute(text("ANALYZE appointments"))  # as the seed leaves it
        await session.commit()
        return True
    before = await _tables(session)
    loaded = await load_demo(session, max_future_per_doctor=max_future_per_doctor)
    after = await _tables(session)
    if not loaded or not superuser or {t for t, rows in before.items() if rows} - KEPT_TABLES:
        return loaded  # not a seed of an empty database: nothing to keep
    driver = await _driver(session)
    copies = {}
    for table in (t for t, rows in after.items() if rows and t not in KEPT_TABLES):
        out = io.BytesIO()
        await driver.copy_from_table(table, output=out, format="binary")
        copies[table] = out.getvalue()
    sequences = [
        (name, value)
        for name, value in await session.execute(
            text(  # last_value is NULL until a sequence has given a value
                "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename),"
                " last_value FROM pg_sequences"
                " WHERE schemaname = 'public' AND last_value IS NOT NULL"
            )
        )
    ]
    await session.commit()
    _SEEDED[key] = (copies, sequences)
    return loaded


@pytest.mark.parametrize("limit", [2, 3])  # at 2 the cap binds: 25 patients, 50 slots
async def test_demo_patients_hold_fewer_than_the_limit_per_doctor(session, limit):
    assert await seed_demo(session, max_future_per_doctor=limit)
    held = (
        await session.execute(
            select(Appointment.patient_id, Appointment.doctor_id, func.count())
            .where(Appointment.starts_at > func.now(), Appointment.status != "cancelled")
            .group_by(Appointment.patient_id, Appointment.doctor_id)
        )
    ).all()
    assert held and max(n for *_, n in held) == limit - 1
    # Nobody is booked with two doctors at once.
    clashes = await session.scalar(
        text(
            "SELECT count(*) FROM appointments a JOIN appointments b"
            " ON a.patient_id = b.patient_id AND a.id < b.id"
            " AND a.starts_at < b.ends_at AND b.starts_at < a.ends_at"
        )
    )
    assert clashes == 0
    # Still a week of bookings on every doctor's board (a doctor with none counts 0).
    per_doctor = (
        await session.execute(
            select(Doctor.id, func.count(Appointment.id))
            .outerjoin(Appointment, Appointment.doctor_id == Doctor.id)
            .group_by(Doctor.id)
        )
    ).all()
    assert per_doctor and min(n for _, n in per_doctor) >= 15, per_doctor


async def test_the_demo_patient_login_can_book_with_every_doctor(client, session, settings):
    await seed_demo(session, max_future_per_doctor=settings.max_future_appointments_per_doctor)
    user = await session.scalar(select(User).where(User.email == "patient@demo.test"))
    headers = bearer(settings, user)
    start_day = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    for doctor_id in await session.scalars(select(Doctor.id)):
        week = await client.get(
            "/api/appointments/available-slots",
            params={"doctor_id": doctor_id, "date": start_day, "days": 7},
            headers=headers,
        )
        assert week.status_code == 200, week.text
        free = [s["start"] for d in week.json()["days"] for s in d["slots"] if s["available"]]
        booked = await client.post(
            "/api/appointments", json={"doctor_id": doctor_id, "start": free[0]}, headers=headers
        )
        assert booked.status_code == 201, (doctor_id, booked.text)


async def test_the_analytics_default_range_shows_a_living_clinic(client, session, settings):
    """Months of past visits, rolled up: the last 30 days (the analytics pages' default)
    have completed visits, no-shows and cancellations in every clinic."""
    assert await seed_demo(session)
    today = dt.date.today()
    since = today - dt.timedelta(days=29)
    per_clinic = (
        await session.execute(
            text(
                "SELECT clinic_id, sum(completed), sum(no_show), sum(cancelled)"
                " FROM clinic_daily_stats WHERE day BETWEEN :first AND :last GROUP BY clinic_id"
            ),
            {"first": since, "last": today},
        )
    ).all()
    assert len(per_clinic) == 2
    for _, completed, no_show, cancelled in per_clinic:
        assert completed > no_show > 0 and cancelled > 0
    # The rollups agree with the appointments they summarise (the backfill ran on them).
    past = await session.execute(
        select(Appointment.status, func.count())
        .where(Appointment.starts_at < func.now() - dt.timedelta(days=1))
        .group_by(Appointment.status)
    )
    counted = dict(past.all())
    assert {"completed", "no_show", "cancelled"} <= counted.keys()
    assert counted.get("booked", 0) == 0  # the past is settled
    oldest = await session.scalar(select(func.min(Appointment.starts_at)))
    assert oldest.date() <= today - dt.timedelta(days=90)  # months, not days

    admin = await session.scalar(select(User).where(User.email == "admin@demo.test"))
    answer = await client.get("/api/analytics/no-shows", headers=bearer(settings, admin))
    assert answer.status_code == 200, answer.text
    report = answer.json()  # the default range, as the analytics page asks for it
    assert report["from"] == since.isoformat() and report["to"] == today.isoformat()
    assert len(report["rows"]) == 2
    assert all(r["attended"] > r["no_show"] > 0 for r in report["rows"])


async def test_demo_doctors_offer_visit_types_a_patient_can_book(client, session, settings):
    """Every demo doctor has two or three types (a 30-minute first visit, a short
    follow-up; vaccinations by the desk only), and the demo patient books a follow-up."""
    await seed_demo(session, max_future_per_doctor=settings.max_future_appointments_per_doctor)
    user = await session.scalar(select(User).where(User.email == "patient@demo.test"))
    headers = bearer(settings, user)
    start_day = (dt.date.today() + dt.timedelta(days=1)).isoformat()
    for doctor_id in await session.scalars(select(Doctor.id)):
        kinds = (await client.get(f"/api/doctors/{doctor_id}/visit-types", headers=headers)).json()
        kinds = kinds["items"] if isinstance(kinds, dict) else kinds
        by_name = {k["name"]: k for k in kinds}
        assert 2 <= len(kinds) <= 3 and by_name["First visit"]["minutes"] == 30
        assert by_name["Follow-up"]["minutes"] in (10, 15)
        if "Vaccination" in by_name:
            assert by_name["Vaccination"]["online"] is False
        follow_up = by_name["Follow-up"]["id"]
        week = await client.get(
            "/api/appointments/available-slots",
            params={
                "doctor_id": doctor_id,
                "date": start_day,
                "days": 7,
                "visit_type_id": follow_up,
            },
            headers=headers,
        )
        assert week.status_code == 200, week.text
        free = [s for d in week.json()["days"] for s in d["slots"] if s["available"]]
        first = free[0]
        length = dt.datetime.fromisoformat(first["end"]) - dt.datetime.fromisoformat(first["start"])
        assert length == dt.timedelta(minutes=by_name["Follow-up"]["minutes"])
        booked = await client.post(
            "/api/appointments",
            json={"doctor_id": doctor_id, "start": first["start"], "visit_type_id": follow_up},
            headers=headers,
        )
        assert booked.status_code == 201, (doctor_id, booked.text)
        page = await client.get(f"/doctors/{doctor_id}/slots", params={"date": start_day})
        assert "First visit (30 min)" in page.text and "Vaccination" not in page.text
