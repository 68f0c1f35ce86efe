"""Year-scale synthetic data behind `medbook seed scale`, generated deterministically and COPYed."""

from __future__ import annotations

import calendar
import datetime as dt
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from app.availability import TemplateRange, day_grid
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
# Tables whose ids we supply ourselves; their sequences are moved past max(id) afterwards.
ID_TABLES = (
    "clinics",
    "doctors",
    "patients",
    "users",
    "doctor_schedule_templates",
    "schedule_exceptions",
    "appointments",
    "medical_records",
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
    "cardiology",
    "dermatology",
    "orthopaedics",
    "gynaecology",
    "ophthalmology",
    "ENT",
    "neurology",
    "psychiatry",
    "endocrinology",
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
    "Check-up",
    "Follow-up",
    "Consultation",
    "Test results",
    "Prescription renewal",
    "Vaccination",
    "Pain",
    "Referral",
    None,  # many bookings give no reason
    None,
)
CANCEL_REASONS = ("Patient request", "Feeling better", "Schedule conflict", "Doctor unavailable")
RECORD_KINDS = (
    ("lab_result", "Blood panel"),
    ("prescription", "Prescription"),
    ("imaging", "X-ray report"),
    ("referral", "Referral letter"),
    ("note", "Visit summary"),
)

# Shape of the year (the review's figures).
PAST_CANCELLED = 0.05
PAST_NO_SHOW = 0.09  # of all past appointments: about 9.5 % of those not cancelled
FUTURE_CANCELLED = 0.04
# Far-future days are emptier than near ones: the fill falls linearly by this share
# from today to the window's end.
FUTURE_FALLOFF = 0.5
# Patients are picked as pool[n * random() ** SKEW]: some visit often, most rarely.
PATIENT_SKEW = 1.25
PATIENT_USERS = 1000
RECORD_SHARE = 0.02  # of completed appointments, one uploaded document
PROGRESS_EVERY = 50_000


@dataclass
class ScaleSpec:
    """How much to generate; the defaults are the review's year."""

    clinics: int = 50
    doctors_per_clinic: int = 10
    patients: int = 100_000
    target_appointments: int = 1_800_000
    seed: int = 42
    today: dt.date | None = None  # None → date.today()
    months_back: int = 9
    months_ahead: int = 3


class ScaleLoadRefused(RuntimeError):
    """The database already holds data and `replace` was not asked for."""


@dataclass(frozen=True)
class DoctorPlan:
    """One doctor's week: per weekday (0 = Monday) the (start, end) minutes of each range."""

    id: int
    clinic_id: int
    specialty: str
    slot_minutes: int
    week: tuple[tuple[tuple[int, int], ...], ...]
    leave_mondays: tuple[dt.date, ...] = ()


@dataclass
class Plan:
    """Everything decided before appointments are drawn."""

    spec: ScaleSpec
    today: dt.date
    now: dt.datetime
    first_day: dt.date
    end_day: dt.date  # exclusive
    zones: dict[int, ZoneInfo]  # clinic id -> time zone
    doctors: list[DoctorPlan]
    holidays: dict[int, set[dt.date]]  # clinic id -> closed days
    patients_by_clinic: dict[int, list[int]]
    records: list[tuple[int, int, dt.datetime]] = field(default_factory=list)

    def desk_user(self, clinic_id: int) -> int:
        return 1 + clinic_id

    def doctor_user(self, doctor_id: int) -> int:
        return 1 + self.spec.clinics + doctor_id

    def patient_user(self, patient_id: int) -> int | None:
        if patient_id > min(PATIENT_USERS, self.spec.patients):
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

    Everything is loaded in one transaction; afterwards the tables are vacuumed and
    analyzed so plans and index-only scans see the data as a settled database would.

    Args:
        database_url: a PostgreSQL URL (`postgresql://`, `postgresql+asyncpg://`, or a
            unix-socket form with `?host=/dir`).
        spec: sizes, seed, and the year's window around `spec.today`.
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
            # The load is repeatable from the seed, so losing its tail on a crash is fine.
            await conn.execute("SET LOCAL synchronous_commit = off")
            await conn.execute("SET LOCAL statement_timeout = 0")
            await _make_room(conn, replace)
            counts = await _copy_all(conn, plan, password_hash, report)
            await _sync_sequences(conn)
        report("analyze", 0, 1)
        # VACUUM after commit sets hint bits and the visibility map, so the first queries
        # do not rewrite every page and index-only scans work from the start.
        await conn.execute(f"VACUUM (ANALYZE) {', '.join(counts)}")
        report("analyze", 1, 1)
    finally:
        await conn.close()
    return counts


def make_plan(spec: ScaleSpec) -> Plan:
    """Decide clinics' zones, doctors' weeks, leave, holidays and patients' home clinics.

    Args:
        spec: the sizes and seed.

    Returns:
        The plan that the row generators read.
    """
    if min(spec.clinics, spec.doctors_per_clinic) < 1 or spec.patients < spec.clinics:
        raise ValueError("need at least one clinic, one doctor each, and a patient per clinic")
    today = spec.today or dt.date.today()
    first_day = add_months(today, -spec.months_back)
    end_day = add_months(today, spec.months_ahead)
    zones = {c: ZoneInfo(SITES[(c - 1) % len(SITES)][1]) for c in range(1, spec.clinics + 1)}
    rng = random.Random(f"{spec.seed}:doctors")
    mondays = _mondays(first_day, end_day)
    doctors = [
        _doctor_plan(rng, clinic_id, (clinic_id - 1) * spec.doctors_per_clinic + position + 1,
                     _specialty(position), mondays)
        for clinic_id in range(1, spec.clinics + 1)
        for position in range(spec.doctors_per_clinic)
    ]  # fmt: skip
    return Plan(
        spec=spec,
        today=today,
        # The instant that splits past from future: midday UTC, so today is half over
        # in Europe, not begun in the Americas and over in Asia.
        now=dt.datetime.combine(today, dt.time(12), UTC),
        first_day=first_day,
        end_day=end_day,
        zones=zones,
        doctors=doctors,
        holidays={c: _holidays(first_day, end_day) for c in zones},
        patients_by_clinic={
            c: list(range(c, spec.patients + 1, spec.clinics)) for c in range(1, spec.clinics + 1)
        },
    )


def add_months(day: dt.date, months: int) -> dt.date:
    """The same day of the month `months` later (or earlier), clamped to the month's end."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    last = calendar.monthrange(year, month + 1)[1]
    return dt.date(year, month + 1, min(day.day, last))


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


def _specialty(position: int) -> str:
    """A clinic's doctors: four GPs, a paediatrician, then specialists."""
    if position < 4:
        return "general practice"
    if position == 4:
        return "paediatrics"
    return SPECIALISTS[(position - 5) % len(SPECIALISTS)]


def _slot_minutes(rng: random.Random, specialty: str) -> int:
    # GPs see many short visits; the 15/20-minute doctors are what make ~1.8 M bookings
    # fill only about half of the year's slots with ordinary 9-hour days.
    if specialty == "general practice":
        return 15 if rng.random() < 0.8 else 20
    if specialty == "paediatrics":
        return 20
    return 30 if rng.random() < 0.85 else 20


def _doctor_plan(
    rng: random.Random, clinic_id: int, doctor_id: int, specialty: str, mondays: Sequence[dt.date]
) -> DoctorPlan:
    slot = _slot_minutes(rng, specialty)
    early = rng.random() < 0.6
    morning = (8 * 60, 12 * 60 + 30) if early else (8 * 60 + 30, 13 * 60)
    afternoon = (13 * 60 + 30, 18 * 60) if early else (14 * 60, 18 * 60 + 30)
    afternoon_off = rng.randrange(5) if rng.random() < 0.2 else None
    week: list[tuple[tuple[int, int], ...]] = []
    for weekday in range(7):
        if weekday < 5:
            week.append((morning,) if weekday == afternoon_off else (morning, afternoon))
        else:
            week.append(())
    if rng.random() < 0.25:
        week[5] = ((9 * 60, 13 * 60),)
    weeks_off = rng.choices((0, 1, 2), weights=(35, 45, 20))[0]
    leave = tuple(sorted(rng.sample(list(mondays), min(weeks_off, len(mondays)))))
    return DoctorPlan(doctor_id, clinic_id, specialty, slot, tuple(week), leave)


def _mondays(first_day: dt.date, end_day: dt.date) -> list[dt.date]:
    day = first_day + dt.timedelta(days=-first_day.weekday() % 7)
    result = []
    while day < end_day:
        result.append(day)
        day += dt.timedelta(days=7)
    return result


def _holidays(first_day: dt.date, end_day: dt.date) -> set[dt.date]:
    """New Year's Day and Christmas Day, wherever they fall in the window."""
    days = set()
    for year in range(first_day.year, end_day.year + 1):
        for month, day in ((1, 1), (12, 25)):
            holiday = dt.date(year, month, day)
            if first_day <= holiday < end_day:
                days.add(holiday)
    return days


def _days(plan: Plan) -> Iterator[dt.date]:
    day = plan.first_day
    while day < plan.end_day:
        yield day
        day += dt.timedelta(days=1)


def _local_midnight(day: dt.date, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(UTC)


# --- the small tables ---------------------------------------------------------------------


def clinic_rows(plan: Plan) -> list[Row]:
    created = _local_midnight(plan.first_day, UTC) - dt.timedelta(days=365)
    rows = []
    for clinic_id, tz in plan.zones.items():
        city = SITES[(clinic_id - 1) % len(SITES)][0]
        kind = CLINIC_KINDS[(clinic_id - 1) // len(SITES) % len(CLINIC_KINDS)]
        name = f"{city} {kind} Clinic"
        if clinic_id > len(SITES) * len(CLINIC_KINDS):
            name += f" {clinic_id}"
        address = f"{clinic_id} Health Street, {city}"
        rows.append((clinic_id, name, tz.key, address, created))
    return rows


def doctor_rows(plan: Plan) -> list[Row]:
    rng = random.Random(f"{plan.spec.seed}:doctor-names")
    created = _local_midnight(plan.first_day, UTC) - dt.timedelta(days=200)
    rows = []
    for doctor in plan.doctors:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"dr.{doctor.id}@clinic{doctor.clinic_id}.example.test"
        full_name = f"{first} {last}"
        rows.append(
            (doctor.id, doctor.clinic_id, full_name, doctor.specialty, email, doctor.slot_minutes, True,
             created)
        )  # fmt: skip
    return rows


def patient_rows(plan: Plan) -> Iterator[Row]:
    rng = random.Random(f"{plan.spec.seed}:patients")
    rnd = rng.random
    oldest = dt.date(1930, 1, 1).toordinal()
    span = plan.today.toordinal() - oldest
    created = _local_midnight(plan.first_day, UTC)
    firsts, lasts = len(FIRST_NAMES), len(LAST_NAMES)
    for patient_id in range(1, plan.spec.patients + 1):
        full_name = f"{FIRST_NAMES[int(rnd() * firsts)]} {LAST_NAMES[int(rnd() * lasts)]}"
        born = dt.date.fromordinal(oldest + int(rnd() * span))
        phone = f"+1555{int(rnd() * 10_000_000):07d}"
        r = rnd()
        notify_by = "email" if r < 0.6 else "sms" if r < 0.9 else "none"
        joined = created - dt.timedelta(seconds=int(rnd() * 3 * 365 * 86400))
        yield (patient_id, full_name, born, phone, f"patient{patient_id}@example.test", notify_by,
               joined)  # fmt: skip


def user_rows(plan: Plan, password_hash: str) -> list[Row]:
    """One admin, a front desk per clinic, a login per doctor, the first patients' logins."""
    at = _local_midnight(plan.first_day, UTC)
    rows: list[Row] = [(1, "admin@scale.test", password_hash, "admin", None, None, None)]
    for clinic_id in plan.zones:
        rows.append(
            (plan.desk_user(clinic_id), f"desk{clinic_id}@scale.test", password_hash,
             "front_desk", None, None, clinic_id)
        )  # fmt: skip
    for doctor in plan.doctors:
        rows.append(
            (plan.doctor_user(doctor.id), f"doctor{doctor.id}@scale.test", password_hash,
             "doctor", None, doctor.id, doctor.clinic_id)
        )  # fmt: skip
    for patient_id in range(1, min(PATIENT_USERS, plan.spec.patients) + 1):
        rows.append(
            (plan.patient_user(patient_id), f"patient{patient_id}@scale.test", password_hash,
             "patient", patient_id, None, None)
        )  # fmt: skip
    return [(*row, True, at, at) for row in rows]


def template_rows(plan: Plan) -> list[Row]:
    rows: list[Row] = []
    for doctor in plan.doctors:
        for weekday, ranges in enumerate(doctor.week):
            for start, end in ranges:
                rows.append(
                    (len(rows) + 1, doctor.id, weekday, _time(start), _time(end),
                     doctor.slot_minutes, None, None)
                )  # fmt: skip
    return rows


def _time(minutes: int) -> dt.time:
    return dt.time(minutes // 60, minutes % 60)


def exception_rows(plan: Plan) -> list[Row]:
    """Clinic-wide holidays, then doctors' leave weeks (Monday to Monday, local time)."""
    rows: list[Row] = []
    for clinic_id, days in plan.holidays.items():
        tz = plan.zones[clinic_id]
        for day in sorted(days):
            start = _local_midnight(day, tz)
            end = _local_midnight(day + dt.timedelta(days=1), tz)
            created = start - dt.timedelta(days=60)
            rows.append((clinic_id, None, "holiday", start, end, "Public holiday", 1, created))
    for doctor in plan.doctors:
        tz = plan.zones[doctor.clinic_id]
        for monday in doctor.leave_mondays:
            start = _local_midnight(monday, tz)
            end = _local_midnight(monday + dt.timedelta(days=7), tz)
            created = min(start - dt.timedelta(days=30), plan.now)
            rows.append(
                (doctor.clinic_id, doctor.id, "leave", start, end, "Annual leave",
                 plan.desk_user(doctor.clinic_id), created)
            )  # fmt: skip
    return [(i, *row) for i, row in enumerate(rows, start=1)]


# --- appointments -------------------------------------------------------------------------


def _off_days(plan: Plan) -> dict[int, set[dt.date]]:
    """Per doctor, the days without appointments: leave weeks and clinic holidays."""
    off = {}
    for doctor in plan.doctors:
        days = set(plan.holidays[doctor.clinic_id])
        for monday in doctor.leave_mondays:
            days.update(monday + dt.timedelta(days=i) for i in range(7))
        off[doctor.id] = days
    return off


def _day_weight(plan: Plan, day: dt.date) -> float:
    if day < plan.today:
        return 1.0
    horizon = max((plan.end_day - plan.today).days, 1)
    return 1.0 - FUTURE_FALLOFF * (day - plan.today).days / horizon


def _slots_per_weekday(doctor: DoctorPlan) -> list[int]:
    return [sum((end - start) // doctor.slot_minutes for start, end in r) for r in doctor.week]


def fill_rate(plan: Plan) -> tuple[float, int]:
    """The share of past slots to book so that the year holds about the target.

    Args:
        plan: the plan.

    Returns:
        (share of a past day's slots booked, slots in the whole window's grid).
    """
    off = _off_days(plan)
    weighted = 0.0
    total = 0
    per_weekday = {d.id: _slots_per_weekday(d) for d in plan.doctors}
    for day in _days(plan):
        weight = _day_weight(plan, day)
        weekday = day.weekday()
        for doctor in plan.doctors:
            if day not in off[doctor.id]:
                slots = per_weekday[doctor.id][weekday]
                total += slots
                weighted += slots * weight
    return min(1.0, plan.spec.target_appointments / max(weighted, 1.0)), total


def _range_starts(day: dt.date, start: int, end: int, slot: int, tz: ZoneInfo) -> list[dt.datetime]:
    """UTC starts of the slots of one range on one local day, exactly as availability lays
    them out; by plain arithmetic unless a daylight-saving change falls inside the range."""
    first = dt.datetime(day.year, day.month, day.day, start // 60, start % 60, tzinfo=tz)
    last = dt.datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=tz)
    first_utc, last_utc = first.astimezone(UTC), last.astimezone(UTC)
    if last_utc - first_utc == dt.timedelta(minutes=end - start):
        step = dt.timedelta(minutes=slot)
        return [first_utc + k * step for k in range((end - start) // slot)]
    template = TemplateRange(day.weekday(), _time(start), _time(end), slot)
    return [interval.start for interval in day_grid(day, [template], tz)]


def appointment_rows(plan: Plan, report: Progress) -> Iterator[Row]:
    """The year's appointments in time order (day, clinic, doctor, slot), ids from 1.

    Each grid slot is booked with the day's fill rate; a patient is drawn from the clinic's
    pool, at most once per clinic and day, so no patient is ever in two places at once.
    Completed appointments that get a document are noted in `plan.records`.
    """
    base, grid_slots = fill_rate(plan)
    expected = plan.spec.target_appointments
    log.info("scale: %d grid slots, past fill %.2f, ~%d appointments", grid_slots, base, expected)
    rng = random.Random(f"{plan.spec.seed}:appointments")
    rnd = rng.random
    record_rnd = random.Random(f"{plan.spec.seed}:records").random
    off = _off_days(plan)
    by_clinic: dict[int, list[DoctorPlan]] = {}
    for doctor in plan.doctors:
        by_clinic.setdefault(doctor.clinic_id, []).append(doctor)
    steps = {d.slot_minutes: dt.timedelta(minutes=d.slot_minutes) for d in plan.doctors}
    now = plan.now
    minute = dt.timedelta(minutes=1)
    next_id = 1
    for day in _days(plan):
        p = base * _day_weight(plan, day)
        weekday = day.weekday()
        for clinic_id, doctors in by_clinic.items():
            tz = plan.zones[clinic_id]
            pool = plan.patients_by_clinic[clinic_id]
            pool_size = len(pool)
            desk = plan.desk_user(clinic_id)
            seen: set[int] = set()
            grids: dict[tuple[int, int, int], list[dt.datetime]] = {}
            for doctor in doctors:
                ranges = doctor.week[weekday]
                if not ranges or day in off[doctor.id]:
                    continue
                slot = doctor.slot_minutes
                step = steps[slot]
                for start, end in ranges:
                    key = (start, end, slot)
                    starts = grids.get(key)
                    if starts is None:
                        starts = grids[key] = _range_starts(day, start, end, slot, tz)
                    for starts_at in starts:
                        if rnd() >= p:
                            continue
                        patient_id = 0
                        for _ in range(20):
                            candidate = pool[int(pool_size * rnd() ** PATIENT_SKEW)]
                            if candidate not in seen:
                                patient_id = candidate
                                break
                        if not patient_id:
                            continue  # the clinic's pool is exhausted for today
                        seen.add(patient_id)
                        ends_at = starts_at + step
                        # Booked 0-45 days ahead, short leads more common.
                        created = starts_at - int(rnd() ** 2 * 45 * 1440 + 30) * minute
                        if created > now:
                            created = now - int(rnd() * 20 * 1440) * minute
                        status, checked_in, cancelled, updated = _outcome(
                            rnd(), starts_at, ends_at, created, now
                        )
                        cancel_reason = None
                        if cancelled is not None:
                            cancel_reason = CANCEL_REASONS[int(rnd() * len(CANCEL_REASONS))]
                        elif status == "completed" and record_rnd() < RECORD_SHARE:
                            plan.records.append((patient_id, doctor.id, ends_at))
                        booked_by = plan.patient_user(patient_id) or desk
                        yield (
                            next_id, doctor.id, patient_id, clinic_id, starts_at, ends_at,
                            status, REASONS[int(rnd() * len(REASONS))], cancel_reason, booked_by,
                            created, updated, checked_in, cancelled,
                        )  # fmt: skip
                        if next_id % PROGRESS_EVERY == 0:
                            report("appointments", next_id, max(expected, next_id))
                        next_id += 1


def _outcome(
    r: float, starts_at: dt.datetime, ends_at: dt.datetime, created: dt.datetime, now: dt.datetime
) -> tuple[str, dt.datetime | None, dt.datetime | None, dt.datetime]:
    """(status, checked_in_at, cancelled_at, updated_at) from one uniform draw `r`."""
    if ends_at <= now:
        if r < PAST_CANCELLED:
            cancelled = created + (starts_at - created) * (r / PAST_CANCELLED)
            return "cancelled", None, cancelled, cancelled
        if r < PAST_CANCELLED + PAST_NO_SHOW:
            return "no_show", None, None, ends_at
        checked_in = starts_at - dt.timedelta(minutes=int(r * 1000) % 15 + 1)
        return "completed", checked_in, None, ends_at
    if r < FUTURE_CANCELLED:
        cancelled = created + (now - created) * (r / FUTURE_CANCELLED)
        return "cancelled", None, cancelled, cancelled
    return "booked", None, None, created


def record_rows(plan: Plan) -> list[Row]:
    """A document for a few completed visits (metadata only; no object is stored)."""
    rng = random.Random(f"{plan.spec.seed}:record-rows")
    rows: list[Row] = []
    for record_id, (patient_id, doctor_id, ends_at) in enumerate(plan.records, start=1):
        record_type, title = RECORD_KINDS[int(rng.random() * len(RECORD_KINDS))]
        uploaded = min(ends_at + dt.timedelta(minutes=int(rng.random() * 4320)), plan.now)
        rows.append(
            (record_id, patient_id, doctor_id, record_type, title,
             f"scale/records/{record_id:08d}.pdf", "application/pdf",
             20_000 + int(rng.random() * 2_000_000), f"{rng.getrandbits(256):064x}", uploaded)
        )  # fmt: skip
    return rows


# --- loading ------------------------------------------------------------------------------

COLUMNS = {
    "clinics": ("id", "name", "timezone", "address", "created_at"),
    "doctors": (
        "id", "clinic_id", "full_name", "specialty", "email", "default_slot_minutes", "active",
        "created_at",
    ),
    "patients": (
        "id", "full_name", "date_of_birth", "phone", "email", "notify_by", "created_at",
    ),
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
}  # fmt: skip


async def _make_room(conn: asyncpg.Connection, replace: bool) -> None:
    if replace:
        await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
        return
    # Any row at all would collide with the ids we supply, not just appointments.
    busy = [t for t in DATA_TABLES if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {t})")]
    if busy:
        raise ScaleLoadRefused(
            f"the database already holds data ({', '.join(busy)}); "
            "load with replace=True (--replace) to empty every table first"
        )


async def _copy(
    conn: asyncpg.Connection, table: str, rows: Any, report: Progress, total: int
) -> int:
    report(table, 0, total)
    status = await conn.copy_records_to_table(table, records=rows, columns=COLUMNS[table])
    count = int(status.split()[-1])  # "COPY 123"
    report(table, count, count)
    return count


async def _copy_all(
    conn: asyncpg.Connection, plan: Plan, password_hash: str, report: Progress
) -> dict[str, int]:
    # Parents before children: the foreign keys are checked row by row.
    counts = {
        "clinics": await _copy(conn, "clinics", clinic_rows(plan), report, plan.spec.clinics),
        "doctors": await _copy(conn, "doctors", doctor_rows(plan), report, len(plan.doctors)),
        "patients": await _copy(conn, "patients", patient_rows(plan), report, plan.spec.patients),
    }
    users = user_rows(plan, password_hash)
    counts["users"] = await _copy(conn, "users", users, report, len(users))
    templates = template_rows(plan)
    counts["doctor_schedule_templates"] = await _copy(
        conn, "doctor_schedule_templates", templates, report, len(templates)
    )
    exceptions = exception_rows(plan)
    counts["schedule_exceptions"] = await _copy(
        conn, "schedule_exceptions", exceptions, report, len(exceptions)
    )
    # One COPY streams the generator: Python draws rows while the server inserts them.
    counts["appointments"] = await _copy(
        conn, "appointments", appointment_rows(plan, report), report, plan.spec.target_appointments
    )
    records = record_rows(plan)
    counts["medical_records"] = await _copy(conn, "medical_records", records, report, len(records))
    return counts


async def _sync_sequences(conn: asyncpg.Connection) -> None:
    for table in ID_TABLES:
        await conn.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
            f" coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
        )
