"""Admin pages: clinics, doctors, weekly templates, leave and clinic closures.

One URL serves each page and its htmx fragment: with `HX-Request` only the named block
is rendered, and every answer says `Vary: HX-Request`. A form with a mistake comes back
with 200, the message and what was typed (htmx 2 swaps no 4xx answer). Schedule and
exception logic lives in `app.scheduling.directory` and `app.scheduling.schedules`;
this module only turns form text into their arguments and their results into rows for
the templates.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Annotated, Any
from zoneinfo import ZoneInfo, available_timezones

from litestar import Request, get
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Response, Template
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.errors import DomainError, Invalid, NotFound
from app.i18n import gettext
from app.routes.actions import Command, form_post
from app.routes.inputs import Id, check_day
from app.routes.views import page
from app.scheduling import directory, schedules
from app.settings import Settings
from app.web.guards import allow
from db.models import EXCEPTION_KINDS, Appointment, Clinic, Patient, ScheduleException

ADMIN = [allow("admin")]
Form = Body(media_type=RequestEncodingType.URL_ENCODED)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DASH = "\u2013"  # en dash, for spans of time
RANGE_FIELDS = ("weekday", "start", "end", "slot_minutes", "valid_from", "valid_to")


@cache
def timezones() -> list[str]:
    return sorted(available_timezones())


def _int(raw: str) -> int | None:
    raw = raw.strip()
    return int(raw) if raw.isdigit() else None


def _date(raw: str, label: str) -> dt.date | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        day = dt.date.fromisoformat(raw)
    except ValueError:
        raise Invalid(
            gettext("%(label)s must be a date (YYYY-MM-DD), got %(raw)r")
            % {"label": label, "raw": raw}
        ) from None
    check_day(day, label)  # a day either side stays within Python's dates
    return day


def _time(raw: str, label: str) -> dt.time:
    raw = raw.strip()
    if not raw:
        raise Invalid(gettext("%(label)s is missing") % {"label": label})
    try:
        return dt.time.fromisoformat(raw)
    except ValueError:
        raise Invalid(
            gettext("%(label)s must be a time like 09:00, got %(raw)r")
            % {"label": label, "raw": raw}
        ) from None


# --- clinics -------------------------------------------------------------------------


@dataclass
class ClinicForm:
    name: str = ""
    timezone: str = ""
    address: str = ""


async def _clinics_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, **context: Any
) -> Template | Response[str]:
    context.setdefault("form", ClinicForm())
    context["clinics"] = await directory.list_clinics(db_session)
    context["timezones"] = timezones()
    return page(request, "admin/clinics.html", "clinics", **context)


@get("/admin/clinics", guards=ADMIN, include_in_schema=False)
async def clinics_page(
    request: Request[Any, Any, Any], db_session: AsyncSession
) -> Template | Response[str]:
    """All clinics and a form to add one."""
    return await _clinics_page(request, db_session)


@form_post("/admin/clinics", "admin")
async def create_clinic_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, data: Annotated[ClinicForm, Form]
) -> Template | Response[str]:
    """Add a clinic; a mistake shows the form again with what was typed."""
    try:
        clinic = await directory.create_clinic(
            db_session,
            name=data.name,
            timezone=data.timezone.strip(),
            address=data.address.strip() or None,
        )
    except DomainError as exc:
        return await _clinics_page(request, db_session, form=data, error=exc.detail)
    return await _clinics_page(request, db_session, created=clinic)


# --- doctors and clinic closures -------------------------------------------------------


@dataclass
class DoctorForm:
    clinic_id: str = ""
    name: str = ""
    specialty: str = ""
    email: str = ""
    default_slot_minutes: str = "30"


@dataclass
class ExceptionForm:
    """Leave or a closure as typed: clinic-local dates and times."""

    start_date: str = ""
    start_time: str = ""
    end_date: str = ""
    end_time: str = ""
    whole_day: str = ""
    kind: str = "leave"
    note: str = ""
    cancel_affected: str = ""
    action: str = "preview"  # the button pressed: preview or save


@dataclass(frozen=True, slots=True)
class AffectedRow:
    id: int
    day: str
    time: str
    patient: str
    status: str


@dataclass(frozen=True, slots=True)
class ExceptionRow:
    id: int
    kind: str
    span: str
    note: str
    clinic_wide: bool


@dataclass
class ExceptionView:
    """What the exception form shows: the form, a preview or an outcome, upcoming ones."""

    action: str
    target: str
    form: ExceptionForm
    upcoming: list[ExceptionRow] = field(default_factory=list)
    affected: list[AffectedRow] | None = None  # None: no preview or save yet
    error: str | None = None
    saved: bool = False
    cancelled: bool = False
    kinds: tuple[str, ...] = EXCEPTION_KINDS
    editable_base: str | None = None  # a doctor's leave: its rows link to edit and withdraw
    editing: int | None = None  # the exception the form changes; None: the form adds one
    withdrawn: bool = False


def exception_window(form: ExceptionForm, timezone: str) -> tuple[dt.datetime, dt.datetime]:
    """The form's clinic-local start and end as instants. A whole-day exception runs
    from the start date's midnight to the midnight after the end date."""
    zone = ZoneInfo(timezone)
    first = _date(form.start_date, "the start date")
    if first is None:
        raise Invalid(gettext("the start date is missing"))
    last = _date(form.end_date, "the end date") or first
    if form.whole_day:
        start = dt.datetime.combine(first, dt.time(0), tzinfo=zone)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    else:
        start_time = _time(form.start_time, "the start time")
        end_time = _time(form.end_time, "the end time")
        start = dt.datetime.combine(first, start_time, tzinfo=zone)
        end = dt.datetime.combine(last, end_time, tzinfo=zone)
    # Through UTC, so a wall time in a DST gap lands on a real instant.
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


def exception_form(exception: ScheduleException, timezone: str) -> ExceptionForm:
    """The form showing a saved exception, for changing it (exception_window's inverse)."""
    zone = ZoneInfo(timezone)
    start, end = exception.starts_at.astimezone(zone), exception.ends_at.astimezone(zone)
    form = ExceptionForm(kind=exception.kind, note=exception.note or "", action="save")
    if start.time() == end.time() == dt.time(0):
        form.whole_day = "on"
        form.start_date = start.date().isoformat()
        form.end_date = (end.date() - dt.timedelta(days=1)).isoformat()
        return form
    form.start_date, form.start_time = start.date().isoformat(), f"{start:%H:%M}"
    form.end_date, form.end_time = end.date().isoformat(), f"{end:%H:%M}"
    return form


def _span(start: dt.datetime, end: dt.datetime, zone: ZoneInfo) -> str:
    a, b = start.astimezone(zone), end.astimezone(zone)
    if a.time() == b.time() == dt.time(0):
        last = b.date() - dt.timedelta(days=1)
        days = f"{a:%a %d %b %Y}" + (f" {DASH} {last:%a %d %b %Y}" if last != a.date() else "")
        return f"{days}, whole day{'s' if last != a.date() else ''}"
    if a.date() == b.date():
        return f"{a:%a %d %b %Y}, {a:%H:%M}{DASH}{b:%H:%M}"
    return f"{a:%a %d %b %Y %H:%M} {DASH} {b:%a %d %b %Y %H:%M}"


async def upcoming_exceptions(
    session: AsyncSession, *, clinic_id: int, doctor_id: int | None, now: dt.datetime
) -> list[ScheduleException]:
    """Exceptions not yet over: a doctor's own and their clinic's closures, or (doctor_id
    None) the clinic's closures only."""
    mine: ColumnElement[bool] = ScheduleException.doctor_id.is_(None)
    if doctor_id is not None:
        mine = or_(mine, ScheduleException.doctor_id == doctor_id)
    return list(
        await session.scalars(
            select(ScheduleException)
            .where(
                ScheduleException.clinic_id == clinic_id,
                ScheduleException.ends_at > now,
                mine,
            )
            .order_by(ScheduleException.starts_at)
            .limit(100)
        )
    )


async def _exception_rows(
    session: AsyncSession, clinic_id: int, doctor_id: int | None, timezone: str, now: dt.datetime
) -> list[ExceptionRow]:
    zone = ZoneInfo(timezone)
    return [
        ExceptionRow(
            e.id, e.kind, _span(e.starts_at, e.ends_at, zone), e.note or "", e.doctor_id is None
        )
        for e in await upcoming_exceptions(
            session, clinic_id=clinic_id, doctor_id=doctor_id, now=now
        )
    ]


async def _affected_rows(
    session: AsyncSession, affected: list[Appointment], timezone: str
) -> list[AffectedRow]:
    zone = ZoneInfo(timezone)
    ids = {a.patient_id for a in affected}
    names: dict[int, str] = {}
    if ids:
        query = select(Patient.id, Patient.full_name).where(Patient.id.in_(ids))
        names = {i: n for i, n in (await session.execute(query)).all()}
    rows = []
    for a in affected:
        start, end = a.starts_at.astimezone(zone), a.ends_at.astimezone(zone)
        rows.append(
            AffectedRow(
                a.id,
                f"{start:%a %d %b %Y}",
                f"{start:%H:%M}{DASH}{end:%H:%M}",
                names.get(a.patient_id, f"patient {a.patient_id}"),
                a.status.replace("_", " "),
            )
        )
    return rows


async def _add_exception(
    command: Command, view: ExceptionView, *, clinic_id: Id, doctor_id: int | None, timezone: str
) -> None:
    """Preview or save the exception typed into `view.form`; a mistake becomes its error."""
    form = view.form
    try:
        starts_at, ends_at = exception_window(form, timezone)
        result = await schedules.add_exception(
            command.session,
            command.effects,
            clinic_id=clinic_id,
            doctor_id=doctor_id,
            kind=form.kind,
            starts_at=starts_at,
            ends_at=ends_at,
            note=form.note.strip() or None,
            created_by=command.actor.id,
            cancel_affected=bool(form.cancel_affected),
            preview=form.action != "save",
            now=command.now,
        )
    except DomainError as exc:
        view.error = exc.detail
        return
    view.affected = await _affected_rows(command.session, result.affected, timezone)
    if result.exception is not None:
        view.saved, view.cancelled = True, result.cancelled
        view.form = ExceptionForm(kind=form.kind)  # saved: an empty form for the next one


async def _clinic(session: AsyncSession, clinic_id: int) -> Clinic:
    clinic = await session.get(Clinic, clinic_id)
    if clinic is None:
        raise NotFound(gettext("clinic %(clinic_id)s does not exist") % {"clinic_id": clinic_id})
    return clinic


async def _doctors_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    now: dt.datetime,
    clinic_id: int | None,
    block: str = "clinic",
    **context: Any,
) -> Template | Response[str]:
    clinic = await db_session.get(Clinic, clinic_id) if clinic_id is not None else None
    if clinic is not None:
        closures = context.get("closures") or ExceptionView(
            f"/admin/clinics/{clinic.id}/exceptions", "closures", ExceptionForm(kind="closure")
        )
        closures.upcoming = await _exception_rows(db_session, clinic.id, None, clinic.timezone, now)
        context["closures"] = closures
    context.setdefault("form", DoctorForm(clinic_id=str(clinic_id or "")))
    context["clinic"] = clinic
    context["clinics"] = await directory.list_clinics(db_session)
    context["doctors"] = await directory.find_doctors(db_session, clinic_id=clinic_id)
    return page(request, "admin/doctors.html", block, **context)


@get("/admin/doctors", guards=ADMIN, include_in_schema=False)
async def doctors_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, now: dt.datetime, clinic_id: str = ""
) -> Template | Response[str]:
    """A clinic's doctors (all clinics' without `clinic_id`), a form to add one and the
    clinic's closures."""
    chosen = _int(clinic_id)
    if chosen is not None:
        await _clinic(db_session, chosen)
    return await _doctors_page(request, db_session, now, chosen)


@form_post("/admin/doctors", "admin")
async def create_doctor_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    now: dt.datetime,
    data: Annotated[DoctorForm, Form],
) -> Template | Response[str]:
    """Add a doctor to a clinic; a mistake shows the form again with what was typed."""
    clinic_id = _int(data.clinic_id)
    try:
        if clinic_id is None:
            raise Invalid(gettext("choose the doctor's clinic"))
        minutes = _int(data.default_slot_minutes)
        if minutes is None:
            raise Invalid(gettext("the default slot length must be a whole number of minutes"))
        doctor = await directory.create_doctor(
            db_session,
            clinic_id=clinic_id,
            name=data.name,
            specialty=data.specialty,
            email=data.email.strip() or None,
            default_slot_minutes=minutes,
        )
    except DomainError as exc:
        return await _doctors_page(request, db_session, now, clinic_id, form=data, error=exc.detail)
    return await _doctors_page(request, db_session, now, doctor.clinic_id, created=doctor)


@form_post("/admin/clinics/{clinic_id:int}/exceptions", "admin")
async def clinic_exception_page(
    request: Request[Any, Any, Any],
    command: Command,
    clinic_id: Id,
    data: Annotated[ExceptionForm, Form],
) -> Template | Response[str]:
    """Preview or save a closure of the whole clinic."""
    clinic = await _clinic(command.session, clinic_id)
    view = ExceptionView(f"/admin/clinics/{clinic.id}/exceptions", "closures", data)
    timezone = clinic.timezone  # read now: a preview's rollback expires `clinic`
    await _add_exception(
        command,
        view,
        clinic_id=clinic_id,
        doctor_id=None,
        timezone=timezone,
    )
    return await _doctors_page(
        request, command.session, command.now, clinic_id, "closures", closures=view
    )


# --- one doctor's weekly template and leave ---------------------------------------------


@dataclass
class RangeRow:
    """One row of the template editor, as text (what was typed, or what is stored)."""

    weekday: str = "0"
    start: str = ""
    end: str = ""
    slot_minutes: str = ""
    valid_from: str = ""
    valid_to: str = ""
    invalid: bool = False
    focus: bool = False

    @classmethod
    def of(cls, r: schedules.RangeIn) -> RangeRow:
        return cls(
            str(r.weekday),
            r.start.strftime("%H:%M"),
            r.end.strftime("%H:%M"),
            str(r.slot_minutes),
            r.valid_from.isoformat() if r.valid_from else "",
            r.valid_to.isoformat() if r.valid_to else "",
        )

    def blank(self) -> bool:
        return not (self.start.strip() or self.end.strip())


@dataclass
class TemplateEditor:
    rows: list[RangeRow]
    error: str | None = None
    saved: bool = False
    unsaved: bool = False


def rows_from_form(form: Any) -> list[RangeRow]:
    """The editor's rows from its repeated fields, minus those ticked for removal."""
    columns = [form.getall(name, []) for name in RANGE_FIELDS]
    removed = {_int(i) for i in form.getall("remove", [])}
    count = min(len(c) for c in columns)
    weekday, start, end, slot, first, last = ([str(v) for v in c] for c in columns)
    return [
        RangeRow(weekday[i], start[i], end[i], slot[i], first[i], last[i])
        for i in range(count)
        if i not in removed
    ]


def ranges_from_rows(rows: list[RangeRow]) -> tuple[list[schedules.RangeIn], list[int]]:
    """The RangeIns of the non-blank rows, and each one's row position.

    Raises:
        Invalid: a field that is not a time, date or number, naming its row (1-based).
    """
    ranges, positions = [], []
    for i, row in enumerate(rows):
        if row.blank():
            continue
        label = f"row {i + 1}"
        weekday, minutes = _int(row.weekday), _int(row.slot_minutes)
        if weekday is None:
            raise Invalid(gettext("%(label)s: choose a weekday") % {"label": label})
        if minutes is None:
            raise Invalid(
                gettext("%(label)s: the slot length must be a whole number of minutes")
                % {"label": label}
            )
        ranges.append(
            schedules.RangeIn(
                weekday,
                _time(row.start, f"{label}: the start"),
                _time(row.end, f"{label}: the end"),
                minutes,
                _date(row.valid_from, f"{label}: valid from"),
                _date(row.valid_to, f"{label}: valid to"),
            )
        )
        positions.append(i)
    return ranges, positions


def explain(detail: str, positions: list[int], rows: list[RangeRow]) -> str:
    """The domain's `ranges[i]` become the rows the admin sees, which are marked."""
    message = re.sub(r"ranges\[(\d+)\]", lambda m: f"row {positions[int(m[1])] + 1}", detail)
    message = message.replace("slot_minutes", "the slot length")
    message = message.replace("valid_to", "valid to").replace("valid_from", "valid from")
    for number in re.findall(r"row (\d+)", message):
        if 0 < int(number) <= len(rows):
            rows[int(number) - 1].invalid = True
    return message


async def _schedule_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    now: dt.datetime,
    doctor_id: Id,
    block: str = "template",
    *,
    editor: TemplateEditor | None = None,
    leave: ExceptionView | None = None,
) -> Template | Response[str]:
    doctor, clinic = await directory.get_doctor(db_session, doctor_id)
    if editor is None:
        _, ranges = await schedules.get_schedule(db_session, doctor_id)
        editor = TemplateEditor([RangeRow.of(r) for r in ranges])
    if leave is None:
        leave = _new_leave_view(doctor_id)
    leave.editable_base = f"/admin/doctors/{doctor_id}/exceptions"
    leave.upcoming = await _exception_rows(db_session, clinic.id, doctor_id, clinic.timezone, now)
    context = {
        "doctor": doctor,
        "clinic": clinic,
        "editor": editor,
        "leave": leave,
        "weekdays": WEEKDAYS,
    }
    return page(request, "admin/schedule.html", block, **context)


@get("/admin/doctors/{doctor_id:int}/schedule", guards=ADMIN, include_in_schema=False)
async def schedule_page(
    request: Request[Any, Any, Any], db_session: AsyncSession, now: dt.datetime, doctor_id: Id
) -> Template | Response[str]:
    """The doctor's weekly template editor, their leave and a form to add leave."""
    return await _schedule_page(request, db_session, now, doctor_id)


@form_post("/admin/doctors/{doctor_id:int}/schedule", "admin")
async def save_schedule_page(
    request: Request[Any, Any, Any], command: Command, settings: Settings, doctor_id: Id
) -> Template | Response[str]:
    """Add a row to the editor, or save the whole template (replace_schedule)."""
    form = await request.form()
    doctor, _ = await directory.get_doctor(command.session, doctor_id)
    editor = TemplateEditor(rows_from_form(form), unsaved=True)
    if form.get("action") == "add":
        weekday = (_int(editor.rows[-1].weekday) or 0) + 1 if editor.rows else 0
        slot = str(doctor.default_slot_minutes)
        editor.rows.append(RangeRow(str(weekday % 7), slot_minutes=slot, focus=True))
        return await _schedule_page(request, command.session, command.now, doctor_id, editor=editor)
    positions: list[int] = []
    try:
        ranges, positions = ranges_from_rows(editor.rows)
        await schedules.replace_schedule(
            command.session,
            command.effects,
            doctor_id,
            ranges,
            today=command.now.date(),
            horizon_days=settings.booking_horizon_days,
            actor_user_id=command.actor.id,
        )
    except DomainError as exc:
        editor.error = explain(exc.detail, positions, editor.rows)
        return await _schedule_page(request, command.session, command.now, doctor_id, editor=editor)
    _, saved = await schedules.get_schedule(command.session, doctor_id)
    editor = TemplateEditor([RangeRow.of(r) for r in saved], saved=True)
    return await _schedule_page(request, command.session, command.now, doctor_id, editor=editor)


@form_post("/admin/doctors/{doctor_id:int}/exceptions", "admin")
async def doctor_exception_page(
    request: Request[Any, Any, Any],
    command: Command,
    doctor_id: Id,
    data: Annotated[ExceptionForm, Form],
) -> Template | Response[str]:
    """Preview the appointments leave would hit, or save it (optionally cancelling them)."""
    _, clinic = await directory.get_doctor(command.session, doctor_id)
    view = ExceptionView(f"/admin/doctors/{doctor_id}/exceptions", "exceptions", data)
    clinic_id, timezone = clinic.id, clinic.timezone  # a preview's rollback expires them
    await _add_exception(
        command,
        view,
        clinic_id=clinic_id,
        doctor_id=doctor_id,
        timezone=timezone,
    )
    return await _schedule_page(
        request, command.session, command.now, doctor_id, "exceptions", leave=view
    )


def _new_leave_view(doctor_id: int) -> ExceptionView:
    return ExceptionView(f"/admin/doctors/{doctor_id}/exceptions", "exceptions", ExceptionForm())


def _leave_view(doctor_id: int, exception_id: int, form: ExceptionForm) -> ExceptionView:
    view = ExceptionView(
        f"/admin/doctors/{doctor_id}/exceptions/{exception_id}", "exceptions", form
    )
    view.editing = exception_id
    return view


@get(
    "/admin/doctors/{doctor_id:int}/exceptions/{exception_id:int}",
    guards=ADMIN,
    include_in_schema=False,
)
async def leave_edit_page(
    request: Request[Any, Any, Any],
    db_session: AsyncSession,
    now: dt.datetime,
    doctor_id: Id,
    exception_id: Id,
) -> Template | Response[str]:
    """The leave form filled with one planned leave, to change it."""
    _, clinic = await directory.get_doctor(db_session, doctor_id)
    exception = await db_session.scalar(
        select(ScheduleException).where(
            ScheduleException.id == exception_id, ScheduleException.doctor_id == doctor_id
        )
    )
    if exception is None:
        raise NotFound(
            gettext("leave %(exception_id)s of doctor %(doctor_id)s does not exist")
            % {"exception_id": exception_id, "doctor_id": doctor_id}
        )
    view = _leave_view(doctor_id, exception_id, exception_form(exception, clinic.timezone))
    return await _schedule_page(request, db_session, now, doctor_id, "exceptions", leave=view)


@form_post("/admin/doctors/{doctor_id:int}/exceptions/{exception_id:int}", "admin")
async def change_leave_page(
    request: Request[Any, Any, Any],
    command: Command,
    doctor_id: Id,
    exception_id: Id,
    data: Annotated[ExceptionForm, Form],
) -> Template | Response[str]:
    """Preview the bookings changed leave would cover, or save the change."""
    _, clinic = await directory.get_doctor(command.session, doctor_id)
    timezone = clinic.timezone  # read now: a preview's rollback expires `clinic`
    view = _leave_view(doctor_id, exception_id, data)
    try:
        starts_at, ends_at = exception_window(data, timezone)
        result = await schedules.change_exception(
            command.session,
            command.effects,
            exception_id=exception_id,
            doctor_id=doctor_id,
            edit=schedules.ExceptionEdit(data.kind, starts_at, ends_at, data.note),
            actor_id=command.actor.id,
            preview=data.action != "save",
            now=command.now,
        )
    except NotFound:
        raise
    except DomainError as exc:
        view.error = exc.detail
    else:
        affected = await _affected_rows(command.session, result.affected, timezone)
        if result.exception is not None:  # saved: back to adding leave
            view = _new_leave_view(doctor_id)
            view.saved = True
        view.affected = affected
    return await _schedule_page(
        request, command.session, command.now, doctor_id, "exceptions", leave=view
    )


@form_post("/admin/doctors/{doctor_id:int}/exceptions/{exception_id:int}/withdraw", "admin")
async def withdraw_leave_page(
    request: Request[Any, Any, Any], command: Command, doctor_id: Id, exception_id: Id
) -> Template | Response[str]:
    """Withdraw planned leave: its slots reopen."""
    view = _new_leave_view(doctor_id)
    try:
        await schedules.withdraw_exception(
            command.session,
            command.effects,
            exception_id=exception_id,
            doctor_id=doctor_id,
            actor_id=command.actor.id,
            now=command.now,
        )
    except NotFound:
        raise
    except DomainError as exc:
        view.error = exc.detail
    else:
        view.withdrawn = True
    return await _schedule_page(
        request, command.session, command.now, doctor_id, "exceptions", leave=view
    )


ROUTES = [
    clinics_page,
    create_clinic_page,
    doctors_page,
    create_doctor_page,
    clinic_exception_page,
    schedule_page,
    save_schedule_page,
    doctor_exception_page,
    leave_edit_page,
    change_leave_page,
    withdraw_leave_page,
]
