"""A report's default range ends on its clinics' own today, not on UTC's date."""

import datetime as dt

from app.access.identity import Principal
from app.analytics import reports
from db.models import Clinic

# 23:30 UTC on 7 December: already the 8th in Berlin (CET) and Auckland (NZDT), still
# the 7th in New York.
NOW = dt.datetime(2026, 12, 7, 23, 30, tzinfo=dt.UTC)


async def clinics(session) -> dict[str, int]:
    made = {
        zone: Clinic(name=zone, timezone=zone)
        for zone in ("Europe/Berlin", "Pacific/Auckland", "America/New_York")
    }
    session.add_all(made.values())
    await session.commit()
    return {zone: clinic.id for zone, clinic in made.items()}


async def test_the_default_range_ends_on_the_clinics_today(session):
    ids = await clinics(session)
    admin = Principal(1, "admin@t.test", "admin")
    every = await reports.scope_of(session, admin, None, None, None, NOW)
    # Across clinics the latest today, so every clinic's today is in.
    assert every.last_day == dt.date(2026, 12, 8)
    assert every.first_day == dt.date(2026, 11, 9)  # 30 days
    new_york = await reports.scope_of(session, admin, None, None, ids["America/New_York"], NOW)
    assert new_york.last_day == dt.date(2026, 12, 7)
    desk = Principal(2, "desk@t.test", "front_desk", clinic_id=ids["Europe/Berlin"])
    berlin = await reports.scope_of(session, desk, None, None, None, NOW)
    assert (berlin.clinic_id, berlin.last_day) == (ids["Europe/Berlin"], dt.date(2026, 12, 8))


async def test_a_given_range_is_kept_and_no_clinics_fall_back_to_utc(session):
    admin = Principal(1, "admin@t.test", "admin")
    assert await reports.clinics_today(session, None, NOW) == dt.date(2026, 12, 7)
    given = await reports.scope_of(
        session, admin, dt.date(2026, 1, 1), dt.date(2026, 1, 31), None, NOW
    )
    assert (given.first_day, given.last_day) == (dt.date(2026, 1, 1), dt.date(2026, 1, 31))
