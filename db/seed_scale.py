"""Year-scale synthetic data behind `medbook seed scale`, generated deterministically and COPYed."""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from app.scheduling.availability import TemplateRange, day_grid
from app.settings import plain_database_url

log = logging.getLogger(__name__)

UTC = dt.UTC
Progress = Callable[[str, int, int], None]
Row = tuple[Any, ...]

# Every table that holds data, emptied together by `replace=True`.
DATA_TABLES = (
    "clinics",
    "doctors",
    "patients",
    "users",
    "doctor_schedule_templates",
    "schedule_exceptions",
    "appointments",
    "medical_records",
    "notifications",
    "audit_events",
    "clinic_daily_stats",
)

SITES = (
    ("Berlin", "Europe/Berlin"),
    ("New York", "America/New_York"),
    ("London", "Europe/London"),
    ("Los Angeles", "America/Los_Angeles"),
    ("Tokyo", "Asia/Tokyo"),
    ("Chicago", "America/Chicago"),
    ("Madrid", "Europe/Madrid"),
    ("Sydney", "Australia/Sydney"),  # southern-hemisphere DST: changes in April and October
    ("Toronto", "America/Toronto"),
    ("Kolkata", "Asia/Kolkata"),  # a half-hour offset
)
CLINIC_KINDS = ("Central", "North", "Riverside", "Park", "Harbour", "West", "Old Town")
SPECIALISTS = (
    "Cardiology",
    "Dermatology",
    "Orthopaedics",
    "Gynaecology",
    "Ophthalmology",
    "ENT",
    "Neurology",
    "Psychiatry",
    "Endocrinology",
)
FIRST_NAMES = (
    "Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hiro", "Ines", "Jonas",
    "Keiko", "Liam", "Maria", "Noah", "Olivia", "Pablo", "Quinn", "Rosa", "Sam", "Tara",
    "Umar", "Vera", "Will", "Xenia", "Yusuf", "Zoe", "Aiko", "Bruno", "Chloe", "Daniel",
    "Elena", "Farah", "Georg", "Hannah", "Ivan", "Julia", "Kenji", "Lena", "Mateo", "Nina",
    "Oscar", "Priya", "Ravi", "Sofia", "Tom", "Ute", "Victor", "Wen", "Yara", "Zara",
)  # fmt: skip
LAST_NAMES = (
    "Schmidt", "Smith", "Garcia", "Tanaka", "Müller", "Johnson", "Brown", "Sato", "Rossi",
    "Williams", "Lopez", "Kim", "Nguyen", "Fischer", "Patel", "Jones", "Martin", "Suzuki",
    "Weber", "Davis", "Wilson", "Moreau", "Kowalski", "Novak", "Silva", "Khan", "Meyer",
    "Taylor", "Anderson", "Ito", "Fernandez", "Becker", "Clarke", "Dubois", "Evans", "Hoffmann",
    "Jensen", "Larsen", "Murphy", "O'Brien", "Petrov", "Quinn", "Romano", "Singh", "Thomas",
    "Walker", "Young", "Zimmermann", "Sharma", "Lee",
)  # fmt: skip
REASONS = (
    "Check-up", "Follow-up", "Consultation", "Test results", "Prescription renewal",
    "Vaccination", "Pain", "Referral", None, None,  # many bookings give no reason
)  # fmt: skip
CANCEL_REASONS = ("Patient request", "Feeling better", "Schedule conflict", "Doctor unavailable")
RECORD_KINDS = (
    ("lab_result", "Blood panel"),
    ("prescription", "Prescription"),
    ("imaging", "X-ray report"),
    ("referral", "Referral letter"),
    ("note", "Visit summary"),
)

# The shape of the year (the review's figures).
PAST_CANCELLED = 0.05
PAST_NO_SHOW = 0.09  # of all past appointments: about 9.5 % of those not cancelled
FUTURE_CANCELLED = 0.04
# Far-off days are emptier than near ones: the fill falls linearly by this share from
# today to the window's end.
FUTURE_FALLOFF = 0.5
# Patients are drawn as pool[n * random() ** SKEW]: a few visit often, most rarely.
PATIENT_SKEW = 1.25
PATIENT_USERS = 1000  # the first patients get a login
RECORD_SHARE = 0.02  # of completed visits leave an uploaded document
PROGRESS_EVERY = 50_000

# fmt: off
COLUMNS: dict[str, tuple[str, ...]] = {
    "clinics": ("id", "name", "timezone", "address", "created_at"),
    "doctors": (
        "id", "clinic_id", "full_name", "specialty", "email", "default_slot_minutes", "active",
        "created_at",
    ),
    "patients": ("id", "full_name", "date_of_birth", "phone", "email", "notify_by", "created_at"),
    "users": (
        "id", "email", "password_hash", "role", "patient_id", "doctor_id", "clinic_id",
        "is_active", "created_at", "password_changed_at",
    ),
    "doctor_schedule_templates": (
        "id", "doctor_id", "weekday", "start_time", "end_time", "slot_minutes", "valid_from",
        "valid_to",
    ),
    "schedule_exceptions": (
        "id", "clinic_id", "doctor_id", "kind", "starts_at", "ends_at", "note", "created_by",
        "created_at",
    ),
    "appointments": (
        "id", "doctor_id", "patient_id", "clinic_id", "starts_at", "ends_at", "status",
        "reason", "cancel_reason", "booked_by", "created_at", "updated_at", "checked_in_at",
        "cancelled_at",
    ),
    "medical_records": (
        "id", "patient_id", "author_doctor_id", "record_type", "title", "storage_key",
        "content_type", "size", "sha256", "uploaded_at",
    ),
}
# fmt: on


@dataclass
class ScaleSpec:
    """How much to generate; the defaults are the review's year."""

    clinics: int = 50
    doctors_per_clinic: int = 10
    patients: int = 100_000
    target_appointments: int = 1_800_000
    seed: int = 42
    # The window's anchor; None → date.today(). Fix it (`medbook seed scale --today`) for
    # the same rows on any day: with a seed alone the window moves with the calendar.
    today: dt.date | None = None
    months_back: int = 9
    months_ahead: int = 3


class ScaleLoadRefused(RuntimeError):
    """The database already holds data and `replace` was not asked for."""


@dataclass(frozen=True)
class DoctorPlan:
    """One doctor: per weekday (0 = Monday) the (start, end) minutes of each working range."""

    id: int
    clinic_id: int
    specialty: str
    slot_minutes: int
    week: tuple[tuple[tuple[int, int], ...], ...]
    leave_mondays: tuple[dt.date, ...]


@dataclass
class Plan:
    """Everything decided before appointments are drawn; ids are fixed here."""

    spec: ScaleSpec
    today: dt.date
    now: dt.datetime  # splits past (completed, no-show) from future (booked)
    first_day: dt.date
    end_day: dt.date  # exclusive
    zones: dict[int, ZoneInfo]  # clinic id -> time zone
    doctors: list[DoctorPlan]
    holidays: dict[int, set[dt.date]]  # clinic id -> clinic-wide closed days
    patients_by_clinic: dict[int, list[int]]  # each patient has one home clinic
    # (patient id, doctor id, visit end) of completed visits that left a document.
    records: list[tuple[int, int, dt.datetime]] = field(default_factory=list)

    def desk_user(self, clinic_id: int) -> int:
        return 1 + clinic_id

    def doctor_user(self, doctor_id: int) -> int:
        return 1 + self.spec.clinics + doctor_id

    def patient_user(self, patient_id: int) -> int | None:
        if patient_id > PATIENT_USERS:
            return None
        return 1 + self.spec.clinics + len(self.doctors) + patient_id


async def load_scale(
    database_url: str,
    spec: ScaleSpec,
    *,
    password_hash: str,
    replace: bool = False,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Generate the spec's year and COPY it into an empty (or emptied) database.

    Everything is loaded in one transaction, then vacuumed and analyzed so plans and
    index-only scans see the data as a settled database would. Connected as a superuser,
    foreign keys are proven once per constraint after the COPY rather than row by row
    (a third of the time); every other constraint, `no_overlap` included, is enforced
    row by row as usual.

    Args:
        database_url: a PostgreSQL URL (`postgresql://`, `postgresql+asyncpg://`, or the
            unix-socket form with `?host=/dir`).
        spec: sizes, seed, and the window around `spec.today`.
        password_hash: one precomputed hash shared by every generated login.
        replace: empty every data table first instead of refusing a non-empty database.
        progress: called as `progress(stage, done, total)` while work advances.

    Returns:
        Rows loaded per table, in load order.

    Raises:
        ScaleLoadRefused: the database holds data and `replace` is false.
    """
    report = progress or _no_progress
    plan = make_plan(spec)
    conn = await asyncpg.connect(plain_database_url(database_url))
    try:
        async with conn.transaction():
            # The load is repeatable from its seed: losing its tail in a crash costs nothing.
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute("SET LOCAL statement_timeout = 0")
            await _make_room(conn, replace)
            deferred = await _defer_foreign_keys(conn)
            counts = await _copy_all(conn, plan, password_hash, report)
            if deferred:
                await _check_foreign_keys(conn, list(counts))
            await _sync_sequences(conn, list(counts))
        report("analyze", 0, 1)
        # After the commit, VACUUM sets hint bits and the visibility map: the first queries
        # do not rewrite every page, and index-only scans work from the start.
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(counts)}")
        report("analyze", 1, 1)
    finally:
        await conn.close()
    return counts


# --- the plan -----------------------------------------------------------------------------


def make_plan(spec: ScaleSpec) -> Plan:
    """Decide the clinics' zones, doctors' weeks and leave, holidays and home clinics.

    Args:
        spec: the sizes and seed.

    Returns:
        The plan the row generators read.
    """
    if min(spec.clinics, spec.doctors_per_clinic) < 1 or spec.patients < spec.clinics:
        raise ValueError("need a clinic, a doctor per clinic, and a patient per clinic")
    today = spec.today or dt.date.today()
    first_day = add_months(today, -spec.months_back)
    end_day = add_months(today, spec.months_ahead)
    clinic_ids = range(1, spec.clinics + 1)
    rng = random.Random(f"{spec.seed}:doctors")
    mondays = _mondays(first_day, end_day)
    doctors = []
    for clinic_id in clinic_ids:
        for position in range(spec.doctors_per_clinic):
            doctor_id = (clinic_id - 1) * spec.doctors_per_clinic + position + 1
            doctors.append(_doctor_plan(rng, clinic_id, doctor_id, position, mondays))
    return Plan(
        spec=spec,
        today=today,
        # Midday UTC: today is half over in Europe, over in Asia, not begun in the Americas.
        now=dt.datetime.combine(today, dt.time(12), UTC),
        first_day=first_day,
        end_day=end_day,
        zones={c: ZoneInfo(SITES[(c - 1) % len(SITES)][1]) for c in clinic_ids},
        doctors=doctors,
        holidays={c: _holidays(first_day, end_day) for c in clinic_ids},
        patients_by_clinic={c: list(range(c, spec.patients + 1, spec.clinics)) for c in clinic_ids},
    )


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day of the month `months` later (or earlier), clamped to the month's end."""
    year, month = divmod(day.year * 12 + day.month - 1 + months, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last))


def _doctor_plan(
    rng: random.Random, clinic_id: int, doctor_id: int, position: int, mondays: Sequence[dt.date]
) -> DoctorPlan:
    """Nine-hour weekdays in two ranges, some with an afternoon off or Saturday mornings."""
    specialty = _specialty(position)
    slot = _slot_minutes(rng, specialty)
    early = rng.random() < 0.6
    morning = (8 * 60, 12 * 60 + 30) if early else (8 * 60 + 30, 13 * 60)
    afternoon = (13 * 60 + 30, 18 * 60) if early else (14 * 60, 18 * 60 + 30)
    afternoon_off = rng.randrange(5) if rng.random() < 0.2 else None
    week = [(morning,) if d == afternoon_off else (morning, afternoon) for d in range(5)]
    saturday = ((9 * 60, 13 * 60),) if rng.random() < 0.25 else ()
    weeks_off = rng.choices((0, 1, 2), weights=(35, 45, 20))[0]
    leave = sorted(rng.sample(list(mondays), min(weeks_off, len(mondays))))
    return DoctorPlan(doctor_id, clinic_id, specialty, slot, (*week, saturday, ()), tuple(leave))


def _specialty(position: int) -> str:
    """A clinic's doctors: four GPs, a paediatrician, then specialists."""
    if position < 4:
        return "General practice"
    if position == 4:
        return "Paediatrics"
    return SPECIALISTS[(position - 5) % len(SPECIALISTS)]


def _slot_minutes(rng: random.Random, specialty: str) -> int:
    # Specialists book 30 minutes; the GPs' 15-minute visits are what let ~1.8 M bookings
    # fill only about half of a year of ordinary nine-hour days.
    if specialty == "General practice":
        return 15 if rng.random() < 0.8 else 20
    if specialty == "Paediatrics":
        return 20
    return 30 if rng.random() < 0.85 else 20


def _mondays(first_day: dt.date, end_day: dt.date) -> list[dt.date]:
    first = first_day + dt.timedelta(days=-first_day.weekday() % 7)
    return [first + dt.timedelta(days=n) for n in range(0, (end_day - first).days, 7)]


def _holidays(first_day: dt.date, end_day: dt.date) -> set[dt.date]:
    """New Year's Day and Christmas Day, wherever they fall in the window."""
    days = (
        dt.date(year, month, day)
        for year in range(first_day.year, end_day.year + 1)
        for month, day in ((1, 1), (12, 25))
    )
    return {d for d in days if first_day <= d < end_day}


def _days(plan: Plan) -> Iterator[dt.date]:
    for n in range((plan.end_day - plan.first_day).days):
        yield plan.first_day + dt.timedelta(days=n)


def _off_days(plan: Plan) -> dict[int, set[dt.date]]:
    """Per doctor, the days without appointments: leave weeks and clinic holidays."""
    off = {}
    for doctor in plan.doctors:
        days = set(plan.holidays[doctor.clinic_id])
        for monday in doctor.leave_mondays:
            days.update(monday + dt.timedelta(days=i) for i in range(7))
        off[doctor.id] = days
    return off


def _midnight(day: dt.date, tz: dt.tzinfo = UTC) -> dt.datetime:
    """The instant a local day begins, in UTC."""
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)


def _time(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# --- the small tables ---------------------------------------------------------------------


def clinic_rows(plan: Plan) -> list[Row]:
    created = _midnight(plan.first_day) - dt.timedelta(days=365)
    rows = []
    for clinic_id, tz in plan.zones.items():
        city = SITES[(clinic_id - 1) % len(SITES)][0]
        kind = CLINIC_KINDS[(clinic_id - 1) // len(SITES) % len(CLINIC_KINDS)]
        # Names stay unique past the 70 city-and-kind combinations.
        suffix = f" {clinic_id}" if clinic_id > len(SITES) * len(CLINIC_KINDS) else ""
        address = f"{clinic_id} Health Street, {city}"
        rows.append((clinic_id, f"{city} {kind} Clinic{suffix}", tz.key, address, created))
    return rows


def doctor_rows(plan: Plan) -> list[Row]:
    rng = random.Random(f"{plan.spec.seed}:doctor-names")
    created = _midnight(plan.first_day) - dt.timedelta(days=200)
    rows = []
    for d in plan.doctors:
        name = f"Dr. {rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        email = f"dr.{d.id}@clinic{d.clinic_id}.example.test"
        rows.append((d.id, d.clinic_id, name, d.specialty, email, d.slot_minutes, True, created))
    return rows


def patient_rows(plan: Plan) -> Iterator[Row]:
    rnd = random.Random(f"{plan.spec.seed}:patients").random
    oldest = dt.date(1930, 1, 1).toordinal()
    span = plan.today.toordinal() - oldest
    registered = _midnight(plan.first_day)
    for patient_id in range(1, plan.spec.patients + 1):
        first = FIRST_NAMES[int(rnd() * len(FIRST_NAMES))]
        last = LAST_NAMES[int(rnd() * len(LAST_NAMES))]
        born = dt.date.fromordinal(oldest + int(rnd() * span))
        phone = f"+1555{int(rnd() * 10_000_000):07d}"
        r = rnd()
        notify_by = "email" if r < 0.6 else "sms" if r < 0.9 else "none"
        email = f"patient{patient_id}@example.test"
        created = registered - dt.timedelta(seconds=int(rnd() * 3 * 365 * 86400))
        yield (patient_id, f"{first} {last}", born, phone, email, notify_by, created)


def user_rows(plan: Plan, password_hash: str) -> list[Row]:
    """One admin, a front desk per clinic, a login per doctor, the first patients' logins."""
    # (id, email, role, patient_id, doctor_id, clinic_id)
    logins: list[tuple[int | None, str, str, int | None, int | None, int | None]] = [
        (1, "admin@scale.test", "admin", None, None, None)
    ]
    for c in plan.zones:
        logins.append((plan.desk_user(c), f"desk{c}@scale.test", "front_desk", None, None, c))
    for d in plan.doctors:
        user_id = plan.doctor_user(d.id)
        logins.append((user_id, f"doctor{d.id}@scale.test", "doctor", None, d.id, d.clinic_id))
    for p in range(1, min(PATIENT_USERS, plan.spec.patients) + 1):
        logins.append((plan.patient_user(p), f"patient{p}@scale.test", "patient", p, None, None))
    at = _midnight(plan.first_day)
    return [
        (user_id, email, password_hash, role, patient, doctor, clinic, True, at, at)
        for user_id, email, role, patient, doctor, clinic in logins
    ]


def template_rows(plan: Plan) -> list[Row]:
    ranges = [
        (d.id, weekday, _time(start), _time(end), d.slot_minutes)
        for d in plan.doctors
        for weekday, day_ranges in enumerate(d.week)
        for start, end in day_ranges
    ]
    return [(i, *r, None, None) for i, r in enumerate(ranges, start=1)]


def exception_rows(plan: Plan) -> list[Row]:
    """Clinic-wide holidays, then doctors' leave weeks (Monday to Monday, local time)."""
    rows: list[Row] = []
    for clinic_id, days in plan.holidays.items():
        tz = plan.zones[clinic_id]
        for day in sorted(days):
            start, end = _midnight(day, tz), _midnight(day + dt.timedelta(days=1), tz)
            created = min(start - dt.timedelta(days=60), plan.now)
            rows.append((clinic_id, None, "holiday", start, end, "Public holiday", 1, created))
    for d in plan.doctors:
        tz = plan.zones[d.clinic_id]
        desk = plan.desk_user(d.clinic_id)
        for monday in d.leave_mondays:
            start, end = _midnight(monday, tz), _midnight(monday + dt.timedelta(days=7), tz)
            created = min(start - dt.timedelta(days=30), plan.now)
            rows.append((d.clinic_id, d.id, "leave", start, end, "Annual leave", desk, created))
    return [(i, *row) for i, row in enumerate(rows, start=1)]


def record_rows(plan: Plan) -> list[Row]:
    """Documents of a few completed visits (metadata only: no object is stored)."""
    rng = random.Random(f"{plan.spec.seed}:record-rows")
    rnd = rng.random
    rows: list[Row] = []
    for record_id, (patient_id, doctor_id, visit_end) in enumerate(plan.records, start=1):
        record_type, title = RECORD_KINDS[int(rnd() * len(RECORD_KINDS))]
        key = f"scale/records/{record_id:08d}.pdf"
        size = 20_000 + int(rnd() * 2_000_000)
        sha256 = f"{rng.getrandbits(256):064x}"  # a stand-in: the bytes don't exist
        uploaded = min(visit_end + dt.timedelta(minutes=int(rnd() * 4320)), plan.now)
        rows.append(
            (record_id, patient_id, doctor_id, record_type, title, key, "application/pdf",
             size, sha256, uploaded)
        )  # fmt: skip
    return rows


# --- appointments -------------------------------------------------------------------------


def fill_rate(plan: Plan) -> tuple[float, int]:
    """The share of a past day's slots to book so that the window holds about the target.

    Args:
        plan: the plan.

    Returns:
        (the past days' fill rate, the number of slots in the window's grid).
    """
    off = _off_days(plan)
    per_weekday = {
        d.id: [sum((end - start) // d.slot_minutes for start, end in r) for r in d.week]
        for d in plan.doctors
    }
    weighted = 0.0
    total = 0
    for day in _days(plan):
        weight = _day_weight(plan, day)
        for d in plan.doctors:
            if day not in off[d.id]:
                slots = per_weekday[d.id][day.weekday()]
                total += slots
                weighted += slots * weight
    return min(1.0, plan.spec.target_appointments / max(weighted, 1.0)), total


def _day_weight(plan: Plan, day: dt.date) -> float:
    if day < plan.today:
        return 1.0
    horizon = max((plan.end_day - plan.today).days, 1)
    return 1.0 - FUTURE_FALLOFF * (day - plan.today).days / horizon


def appointment_rows(plan: Plan, report: Progress) -> Iterator[Row]:
    """The window's appointments in time order (day, clinic, doctor, slot), ids from 1.

    Each slot of the grid is booked with the day's fill rate. Patients come from the
    clinic's pool, at most once per clinic and day, so no patient is in two places at once.
    Completed visits that left a document are noted in `plan.records`.

    Args:
        plan: the plan.
        report: progress callback, called every PROGRESS_EVERY rows.

    Returns:
        An iterator of rows in COLUMNS["appointments"] order.
    """
    base, grid_slots = fill_rate(plan)
    expected = plan.spec.target_appointments
    log.info(
        "scale: %d slots in the grid, past fill %.2f, ~%d bookings", grid_slots, base, expected
    )
    rnd = random.Random(f"{plan.spec.seed}:appointments").random
    record_rnd = random.Random(f"{plan.spec.seed}:records").random
    off = _off_days(plan)
    by_clinic: dict[int, list[DoctorPlan]] = {}
    for d in plan.doctors:
        by_clinic.setdefault(d.clinic_id, []).append(d)
    next_id = 1
    for day in _days(plan):
        p = base * _day_weight(plan, day)
        for clinic_id, doctors in by_clinic.items():
            pool = plan.patients_by_clinic[clinic_id]
            desk = plan.desk_user(clinic_id)
            seen: set[int] = set()
            working = [d for d in doctors if day not in off[d.id]]
            for doctor, starts_at, ends_at in _grid(day, working, plan.zones[clinic_id]):
                if rnd() >= p:
                    continue
                patient_id = _pick_patient(rnd, pool, seen)
                if patient_id is None:
                    continue
                row = _appointment(rnd, starts_at, ends_at, plan.now)
                if row[2] == "completed" and record_rnd() < RECORD_SHARE:
                    plan.records.append((patient_id, doctor.id, ends_at))
                booked_by = plan.patient_user(patient_id) or desk
                yield (next_id, doctor.id, patient_id, clinic_id, *row[:5], booked_by, *row[5:])
                if next_id % PROGRESS_EVERY == 0:
                    report("appointments", next_id, max(expected, next_id))
                next_id += 1


def _grid(
    day: dt.date, doctors: Iterable[DoctorPlan], tz: ZoneInfo
) -> Iterator[tuple[DoctorPlan, dt.datetime, dt.datetime]]:
    """(doctor, start, end) of every slot the doctors' templates lay out on a local day."""
    weekday = day.weekday()
    cache: dict[tuple[int, int, int], list[dt.datetime]] = {}  # doctors share their hours
    for doctor in doctors:
        slot = doctor.slot_minutes
        step = dt.timedelta(minutes=slot)
        for start, end in doctor.week[weekday]:
            starts = cache.get((start, end, slot))
            if starts is None:
                starts = cache[start, end, slot] = _range_starts(day, start, end, slot, tz)
            for starts_at in starts:
                yield doctor, starts_at, starts_at + step


def _range_starts(day: dt.date, start: int, end: int, slot: int, tz: ZoneInfo) -> list[dt.datetime]:
    """The UTC starts of one range's slots on a local day, laid out as availability does.

    Plain arithmetic from the range's first instant unless a daylight-saving change falls
    inside the range; then availability's own grid, slot by slot.
    """
    first = dt.datetime.combine(day, _time(start), tzinfo=tz).astimezone(UTC)
    last = dt.datetime.combine(day, _time(end), tzinfo=tz).astimezone(UTC)
    if last - first == dt.timedelta(minutes=end - start):
        step = dt.timedelta(minutes=slot)
        return [first + k * step for k in range((end - start) // slot)]
    template = TemplateRange(day.weekday(), _time(start), _time(end), slot)
    return [interval.start for interval in day_grid(day, [template], tz)]


def _pick_patient(rnd: Callable[[], float], pool: list[int], seen: set[int]) -> int | None:
    """A patient of the pool not yet seen today (None if twenty draws all were)."""
    for _ in range(20):
        patient_id = pool[int(len(pool) * rnd() ** PATIENT_SKEW)]
        if patient_id not in seen:
            seen.add(patient_id)
            return patient_id
    return None


def _appointment(
    rnd: Callable[[], float], starts_at: dt.datetime, ends_at: dt.datetime, now: dt.datetime
) -> Row:
    """(starts_at, ends_at, status, reason, cancel_reason, created_at, updated_at,
    checked_in_at, cancelled_at) of one booking."""
    # Booked up to 45 days ahead, short notice more common; future bookings were made
    # before now.
    created = starts_at - dt.timedelta(minutes=int(rnd() ** 2 * 45 * 1440) + 30)
    if created > now:
        created = now - dt.timedelta(minutes=int(rnd() * 20 * 1440))
    reason = REASONS[int(rnd() * len(REASONS))]
    r = rnd()
    if ends_at <= now:
        if r < PAST_CANCELLED:
            cancelled = created + (starts_at - created) * (r / PAST_CANCELLED)
            cancel_reason = CANCEL_REASONS[int(rnd() * len(CANCEL_REASONS))]
            return (starts_at, ends_at, "cancelled", reason, cancel_reason, created, cancelled,
                    None, cancelled)  # fmt: skip
        if r < PAST_CANCELLED + PAST_NO_SHOW:
            return (starts_at, ends_at, "no_show", reason, None, created, ends_at, None, None)
        checked_in = starts_at - dt.timedelta(minutes=int(rnd() * 15) + 1)
        return (starts_at, ends_at, "completed", reason, None, created, ends_at, checked_in,
                None)  # fmt: skip
    if r < FUTURE_CANCELLED:
        cancelled = created + (now - created) * (r / FUTURE_CANCELLED)
        cancel_reason = CANCEL_REASONS[int(rnd() * len(CANCEL_REASONS))]
        return (starts_at, ends_at, "cancelled", reason, cancel_reason, created, cancelled, None,
                cancelled)  # fmt: skip
    return (starts_at, ends_at, "booked", reason, None, created, created, None, None)


# --- loading ------------------------------------------------------------------------------


async def _make_room(conn: asyncpg.Connection, replace: bool) -> None:
    if replace:
        # Replacing is emptying the whole database, its audit trail too (migration 0009).
        await conn.execute("SET LOCAL medbook.allow_audit_truncate = on")
        await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
        return
    # Any row at all would collide with the ids we supply, not only appointments.
    busy = [t for t in DATA_TABLES if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t})")]
    if busy:
        raise ScaleLoadRefused(
            f"the database already holds data (in {', '.join(busy)}); "
            "load with replace=True (--replace) to empty every table first"
        )


async def _defer_foreign_keys(conn: asyncpg.Connection) -> bool:
    """Switch off the per-row foreign-key triggers for this transaction, where allowed.

    Each appointment would run four lookups (about a minute of the full load); one anti-join
    per constraint afterwards proves the same. Needs a superuser; others load row by row.

    Returns:
        Whether the checks were deferred (and `_check_foreign_keys` must run).
    """
    try:
        async with conn.transaction():  # a savepoint: a refusal leaves the load going
            await conn.execute("SET LOCAL session_replication_role = replica")
    except asyncpg.InsufficientPrivilegeError:
        return False
    return True


async def _check_foreign_keys(conn: asyncpg.Connection, tables: list[str]) -> None:
    """Prove every foreign key of `tables` set-wise, as ALTER TABLE ... VALIDATE would."""
    await conn.execute("SET LOCAL session_replication_role = origin")
    keys = await conn.fetch(
        """
        SELECT c.conname, c.conrelid::regclass::text AS child, a.attname AS column,
               c.confrelid::regclass::text AS parent, pa.attname AS parent_column,
               cardinality(c.conkey) AS width
        FROM pg_constraint c
        JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = c.confkey[1]
        WHERE c.contype = 'f' AND c.conrelid = ANY($1::text[]::regclass[])
        """,
        tables,
    )
    for key in keys:
        if key["width"] != 1:
            raise RuntimeError(f"{key['conname']}: only one-column foreign keys are checked")
        child, column = key["child"], key["column"]
        orphans = await conn.fetchval(
            f"SELECT count(*) FROM {child} c WHERE c.{column} IS NOT NULL AND NOT EXISTS"
            f" (SELECT 1 FROM {key['parent']} p WHERE p.{key['parent_column']} = c.{column})"
        )
        if orphans:
            raise RuntimeError(f"{orphans} generated {child} rows violate {key['conname']}")


async def _copy(
    conn: asyncpg.Connection, table: str, rows: Iterable[Row], report: Progress, total: int
) -> int:
    report(table, 0, total)
    status = await conn.copy_records_to_table(table, records=rows, columns=COLUMNS[table])
    count = int(status.split()[-1])  # "COPY 123"
    report(table, count, count)
    return count


async def _copy_all(
    conn: asyncpg.Connection, plan: Plan, password_hash: str, report: Progress
) -> dict[str, int]:
    """COPY every table, parents first; returns rows per table."""
    counts: dict[str, int] = {}
    small: list[tuple[str, list[Row]]] = [
        ("clinics", clinic_rows(plan)),
        ("doctors", doctor_rows(plan)),
        ("patients", list(patient_rows(plan))),
        ("users", user_rows(plan, password_hash)),
        ("doctor_schedule_templates", template_rows(plan)),
        ("schedule_exceptions", exception_rows(plan)),
    ]
    for table, rows in small:
        counts[table] = await _copy(conn, table, rows, report, len(rows))
    # One COPY drains the generator: Python draws rows while the server inserts them.
    counts["appointments"] = await _copy(
        conn, "appointments", appointment_rows(plan, report), report, plan.spec.target_appointments
    )
    records = record_rows(plan)  # filled in while the appointments streamed
    counts["medical_records"] = await _copy(conn, "medical_records", records, report, len(records))
    return counts


async def _sync_sequences(conn: asyncpg.Connection, tables: list[str]) -> None:
    """Move each id sequence past the ids we supplied, so the app's inserts don't collide."""
    for table in tables:
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
        )
