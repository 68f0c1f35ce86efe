"""Rollups equal a direct aggregate: random data, DST days, exceptions, and changes made
through the API since the last run (picked up by the watermark, not by luck)."""

import datetime as dt

import pytest
from sqlalchemy import text

from app.analytics import rollups
from tests.integration.analytics_data import (
    add_odd_schedules,
    add_random_appointments,
    expected_rollups,
    stored_rollups,
)
from tests.integration.world import make_world

# Both DST changes of Berlin and New York in 2026, and the days around them.
DST_DAYS = [dt.date(2026, 3, 1) + dt.timedelta(days=i) for i in range(31)] + [
    dt.date(2026, 10, 20) + dt.timedelta(days=i) for i in range(14)
]


@pytest.fixture
async def world(client, session, settings):
    world = await make_world(session, settings.secret_key, patients=5)
    await session.execute(text("DELETE FROM analytics_watermarks"))
    await session.commit()
    return world


async def refresh(engine, days):
    for chunk in rollups.day_chunks(min(days), max(days), 9):
        async with engine.begin() as conn:
            await rollups.refresh_days(conn, [d for d in chunk if d in days])


async def test_rollups_equal_a_direct_aggregate_over_random_data(world, session, engine):
    await add_odd_schedules(session, world)
    await add_random_appointments(session, world, DST_DAYS, seed=8)
    await refresh(engine, DST_DAYS)
    expected = await expected_rollups(session, DST_DAYS)
    stored = await stored_rollups(session, DST_DAYS)
    assert stored[0] == expected[0]
    assert stored[1] == expected[1]
    # The data really exercises what it claims to.
    daily = expected[0]
    assert {k[2] for k in daily} >= {world.doctor_id, world.other_doctor_id}
    assert sum(r["no_show"] for r in daily.values()) > 10
    assert any(k[2] == "cancel_lead" for k in expected[1])


async def test_available_minutes_match_day_grid_on_dst_and_exception_days(world, session, engine):
    """The SQL grid against app.scheduling.availability on the days easiest to get wrong."""
    await add_odd_schedules(session, world)
    days = [
        dt.date(2026, 3, 8),  # New York springs forward; NY closure 14:10-18:00 UTC
        dt.date(2026, 3, 10),  # Berlin doctor's leave starts 09:45 UTC, mid-slot
        dt.date(2026, 3, 11),  # the leave covers the whole day
        dt.date(2026, 3, 12),  # ...and ends 10:05 UTC, mid-slot
        dt.date(2026, 3, 29),  # Berlin springs forward: the 02:00-03:00 night slots vanish
        dt.date(2026, 10, 25),  # Berlin falls back: 02:xx happens twice, counted once
        dt.date(2026, 11, 1),  # New York falls back
    ]
    await refresh(engine, days)
    expected, _ = await expected_rollups(session, days)
    stored, _ = await stored_rollups(session, days)
    minutes = {k: v["available_minutes"] for k, v in stored.items()}
    assert minutes == {k: v["available_minutes"] for k, v in expected.items()}
    # Spot checks that the expectation is what a person would say.
    berlin = world.doctor_id
    assert (world.clinic_id, dt.date(2026, 3, 11), berlin) not in minutes  # on leave all day
    # 08:00-20:00 Berlin (UTC+1); the leave starts 10:45 and ends 11:05 local time.
    assert minutes[(world.clinic_id, dt.date(2026, 3, 10), berlin)] == 5 * 30
    assert minutes[(world.clinic_id, dt.date(2026, 3, 12), berlin)] == (24 - 7) * 30
    night = max(k[2] for k in minutes)  # the New York night doctor was added last
    # 00:30-03:30 in 20-minute slots is 9 slots; the 02:00-02:59 wall times do not exist.
    assert minutes[(world.other_clinic_id, dt.date(2026, 3, 8), night)] == (9 - 3) * 20
    assert minutes[(world.other_clinic_id, dt.date(2026, 11, 1), night)] == 9 * 20


async def test_rollups_follow_bookings_cancels_and_status_changes_since_the_last_run(
    world, client, session, engine
):
    today = dt.datetime.now(dt.UTC).date()
    days = [today + dt.timedelta(days=i) for i in range(-10, 8)]
    await add_random_appointments(session, world, days, seed=3, per_day=4)
    await refresh(engine, days)
    async with engine.begin() as conn:
        await rollups.refresh_recent(conn)

    # Through the API, as people would: a new booking five days ahead, a cancellation
    # four days ahead, and a no-show recorded for an appointment nine days ago (a day
    # that is already "closed" and outside the always-refreshed window).
    booked_day = today + dt.timedelta(days=5)
    free = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": booked_day.isoformat()},
        headers=world.headers("patient0"),
    )
    start = next(s["start"] for s in free.json()["slots"] if s["available"])
    made = await client.post(
        "/api/appointments",
        json={"doctor_id": world.doctor_id, "start": start},
        headers=world.headers("patient0"),
    )
    assert made.status_code == 201, made.text
    rows = (
        await session.execute(
            text(
                "SELECT id, starts_at FROM appointments WHERE status = 'booked' ORDER BY starts_at"
            )
        )
    ).all()
    past = next(i for i, s in rows if s.date() == today - dt.timedelta(days=9))
    future = next(i for i, s in rows if s.date() == today + dt.timedelta(days=4))
    for appointment_id, status in ((past, "no_show"), (future, "cancelled")):
        changed = await client.patch(
            f"/api/appointments/{appointment_id}",
            json={"status": status},
            headers=world.headers("admin"),
        )
        assert changed.status_code == 200, changed.text

    before = await stored_rollups(session, days)
    assert before != await expected_rollups(session, days)  # stale until the job runs
    async with engine.begin() as conn:
        result = await rollups.refresh_recent(conn)
    assert {today - dt.timedelta(days=9), booked_day, today + dt.timedelta(days=4)} <= set(
        result.days
    )
    assert await stored_rollups(session, days) == await expected_rollups(session, days)

    # The monthly rollups are the daily ones summed (long ranges read those).
    mismatched = await session.scalar(
        text(
            """
SELECT count(*) FROM (
  SELECT clinic_id, date_trunc('month', day)::date AS month, doctor_id, sum(no_show) AS n,
         sum(booked) AS b, sum(cancelled) AS c, sum(available_minutes) AS a
  FROM clinic_daily_stats GROUP BY 1, 2, 3) d
FULL JOIN clinic_monthly_stats m USING (clinic_id, month, doctor_id)
WHERE d.n IS DISTINCT FROM m.no_show OR d.b IS DISTINCT FROM m.booked
   OR d.c IS DISTINCT FROM m.cancelled OR d.a IS DISTINCT FROM m.available_minutes"""
        )
    )
    assert mismatched == 0

    # Running it again changes nothing (idempotent), and only looks at the last minutes.
    async with engine.begin() as conn:
        again = await rollups.refresh_recent(conn)
    assert again.since > result.since
    assert await stored_rollups(session, days) == await expected_rollups(session, days)


async def test_a_day_that_lost_its_appointments_and_template_is_pruned(world, session, engine):
    day = dt.date(2026, 3, 3)
    await add_random_appointments(session, world, [day], seed=1, per_day=2)
    await refresh(engine, [day])
    assert (await stored_rollups(session, [day]))[0]
    await session.execute(text("DELETE FROM appointments"))
    await session.execute(text("DELETE FROM doctor_schedule_templates"))
    await session.commit()
    await refresh(engine, [day])
    assert await stored_rollups(session, [day]) == ({}, {})


async def test_a_reschedule_refreshes_the_day_it_left_too(world, client, session, engine):
    """The job finds changed appointments by `updated_at`, which leads to the new day only;
    the old day's counts must not stay one too high until the nightly close."""
    today = dt.datetime.now(dt.UTC).date()
    days = [today + dt.timedelta(days=i) for i in range(-3, 12)]
    await add_random_appointments(session, world, days, seed=21, per_day=3)
    # Random booking times can lie after now: put every change before the first run.
    await session.execute(text("UPDATE appointments SET updated_at = now() - interval '1 hour'"))
    await session.commit()
    await refresh(engine, days)
    async with engine.begin() as conn:
        await rollups.refresh_recent(conn)  # sets the watermark: nothing changed after it
    old_day = today + dt.timedelta(days=6)  # outside today ± 1, refreshed every run anyway
    new_day = today + dt.timedelta(days=9)
    appointment_id = (
        await session.execute(
            text(
                "SELECT id FROM appointments WHERE status = 'booked' "
                "AND doctor_id = :doctor AND (starts_at AT TIME ZONE 'Europe/Berlin')::date = :day "
                "ORDER BY starts_at LIMIT 1"
            ),
            {"doctor": world.doctor_id, "day": old_day},
        )
    ).scalar_one()
    free = await client.get(
        "/api/appointments/available-slots",
        params={"doctor_id": world.doctor_id, "date": new_day.isoformat()},
        headers=world.headers("desk"),
    )
    start = next(s["start"] for s in free.json()["slots"] if s["available"])
    moved = await client.patch(
        f"/api/appointments/{appointment_id}", json={"start": start}, headers=world.headers("desk")
    )
    assert moved.status_code == 200, moved.text
    key = (world.clinic_id, old_day, world.doctor_id)
    stale = (await stored_rollups(session, [old_day]))[0][key]
    fresh = (await expected_rollups(session, [old_day]))[0][key]
    assert stale["booked"] == fresh["booked"] + 1  # what the job has to notice

    async with engine.begin() as conn:
        result = await rollups.refresh_recent(conn)
    # The job's `updated_at` scan finds the new day only; the old one is found by its count,
    # and nothing else of the doctor's window is recomputed.
    always = {today + dt.timedelta(days=i) for i in (-1, 0, 1)}
    assert set(result.days) == always | {old_day, new_day}
    assert await stored_rollups(session, days) == await expected_rollups(session, days)
    # Only the days that changed, not the whole window of the touched doctor.
