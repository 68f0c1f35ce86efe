"""An appointment list's rows as the API shows them (`api_appointments.rows_out`): each
time in its own clinic's zone, however many rows share an instant."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from app.appointments.queries import AppointmentRow
from app.routes.api_appointments import rows_out

NINE_UTC = dt.datetime(2026, 3, 29, 9, 0, tzinfo=dt.UTC)  # Berlin's first day of summer time


def row(row_id: int, timezone: str, start: dt.datetime, minutes: int = 20) -> AppointmentRow:
    end = start + dt.timedelta(minutes=minutes)
    return AppointmentRow(
        row_id, 7, "Dr. A", 50 + row_id, "P", 3, timezone, start, end, "booked", None
    )


def test_each_row_shows_its_own_clinics_zone_for_the_same_instants():
    rows = [
        row(1, "Europe/Berlin", NINE_UTC),
        row(2, "America/Chicago", NINE_UTC),  # the same instants, another clinic's zone
        row(3, "Europe/Berlin", NINE_UTC + dt.timedelta(minutes=20)),  # starts where 1 ends
    ]
    shown = rows_out(rows)
    assert [(s["start"], s["end"]) for s in shown] == [
        ("2026-03-29T11:00:00+02:00", "2026-03-29T11:20:00+02:00"),
        ("2026-03-29T04:00:00-05:00", "2026-03-29T04:20:00-05:00"),
        ("2026-03-29T11:20:00+02:00", "2026-03-29T11:40:00+02:00"),
    ]
    for r, s in zip(rows, shown, strict=True):
        zone = ZoneInfo(r.timezone)
        assert s["start"] == r.starts_at.astimezone(zone).isoformat()
        assert s["end"] == r.ends_at.astimezone(zone).isoformat()
        assert {k: s[k] for k in ("id", "doctor_id", "patient_id", "clinic_id", "status")} == {
            "id": r.id,
            "doctor_id": r.doctor_id,
            "patient_id": r.patient_id,
            "clinic_id": r.clinic_id,
            "status": r.status,
        }
    assert set(shown[0]) == {
        "id",
        "doctor_id",
        "doctor_name",
        "patient_id",
        "patient_name",
        "clinic_id",
        "start",
        "end",
        "status",
        "reason",
    }
