"""What may happen to an appointment, and when: pure rules, no I/O.

The state machine, who may set which status, the time conditions on a change, who may
book for whom, and what makes a slot bookable. Every path that books or changes a status
asks these (the API, the pages, bulk updates, leave and closures).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from app.errors import Forbidden, Invalid
from app.i18n import gettext
from app.scheduling.availability import Interval, Visit, day_slots
from app.zones import zone

if TYPE_CHECKING:
    from app.access.identity import Principal
    from app.scheduling.slots import DoctorDays, TypeFacts
    from app.settings import Settings

# Legal status changes; anything else answers 422. checked_in -> booked is the undo of a
# check-in made by mistake, for UNDO_CHECK_IN after it. held -> booked is a waitlist offer
# accepted (the hold becomes the appointment); a hold that is declined or lapses is
# deleted, not given a status (app/waitlist/offers.py).
TRANSITIONS: dict[str, frozenset[str]] = {
    "booked": frozenset({"checked_in", "cancelled", "no_show"}),
    "checked_in": frozenset({"completed", "cancelled", "booked"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "no_show": frozenset(),
    "held": frozenset({"booked"}),
}
STATUSES = frozenset(TRANSITIONS)
# Who sets a status: a signed-in role, or the clinic's calendar when leave or a closure
# cancels the bookings it covers (not a role anyone signs in with).
SCHEDULE = "schedule"
# The patient accepting their own waitlist offer: the only setter that moves a hold, and
# the only thing it does. No role touches a hold (it is nobody's appointment yet).
ACCEPT_OFFER = "offer"
# What each may set. Patients cancel their own (visibility limits them to their own);
# doctors run their own day; staff may undo a check-in (`booked` again).
ROLE_TARGETS: dict[str, frozenset[str]] = {
    "patient": frozenset({"cancelled"}),
    "doctor": frozenset({"checked_in", "completed", "no_show", "booked"}),
    "front_desk": frozenset({"checked_in", "completed", "cancelled", "no_show", "booked"}),
    "admin": frozenset({"checked_in", "completed", "cancelled", "no_show", "booked"}),
    SCHEDULE: frozenset({"cancelled"}),
    ACCEPT_OFFER: frozenset({"booked"}),
}
# How long a check-in can be taken back: long enough to notice the wrong card was pressed,
# short enough that a patient seen by the doctor is not "booked" again.
UNDO_CHECK_IN = dt.timedelta(minutes=10)
# Who may book a patient beyond BOOKING_MAX_FUTURE_PER_DOCTOR, giving a reason.
MAY_OVERRIDE_LIMIT = frozenset({"front_desk", "admin"})


@dataclass(frozen=True, slots=True)
class BookingRules:
    min_notice: dt.timedelta
    horizon: dt.timedelta
    max_future_per_doctor: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BookingRules:
        return cls(
            min_notice=dt.timedelta(minutes=settings.booking_min_notice_minutes),
            horizon=dt.timedelta(days=settings.booking_horizon_days),
            max_future_per_doctor=settings.max_future_appointments_per_doctor,
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a status change may not happen: `forbidden` (403) or `invalid` (422)."""

    kind: Literal["forbidden", "invalid"]
    message: str


def sources(target: str, setter: str | None = None) -> frozenset[str]:
    """The statuses from which `target` can be reached (by `setter`: only ACCEPT_OFFER
    starts from a hold, and it from nothing else)."""
    found = frozenset(s for s, targets in TRANSITIONS.items() if target in targets)
    return found & {"held"} if setter == ACCEPT_OFFER else found - {"held"}


def status_columns(target: str, now: dt.datetime) -> dict[str, object]:
    """The columns a change to `target` sets: the status and when it happened."""
    columns: dict[str, object] = {"status": target, "updated_at": now}
    if target == "cancelled":
        columns["cancelled_at"] = now
    if target == "checked_in":
        columns["checked_in_at"] = now
    if target == "booked":  # an undone check-in
        columns["checked_in_at"] = None
    return columns


def check_known(target: str) -> None:
    """Raises Invalid for a status that does not exist."""
    if target not in STATUSES:
        raise Invalid(gettext("unknown status %(target)r") % {"target": target})


class Booked(Protocol):
    """What the rules read of an appointment (the ORM object, or a row of its columns)."""

    @property
    def status(self) -> str: ...
    @property
    def starts_at(self) -> dt.datetime: ...
    @property
    def ends_at(self) -> dt.datetime: ...
    @property
    def checked_in_at(self) -> dt.datetime | None: ...


def _hold_expiry(appointment: Booked) -> dt.datetime | None:
    """When a hold lapses (rows read before holds existed do not carry the column)."""
    return getattr(appointment, "hold_expires_at", None)


def refusal(
    setter: str,
    appointment: Booked,
    target: str,
    now: dt.datetime,
    *,
    timezone: str | None = None,
) -> Refusal | None:
    """Why `setter` (a role, or SCHEDULE) may not set `target` on the appointment; None if
    they may. The role is judged first, then the state machine, then the clock: a check-in
    only on the appointment's day in the clinic's `timezone` (required for a check-in),
    its undo only within UNDO_CHECK_IN, a no-show only after the start, no cancelling once
    it has ended (except by leave or closure, which cancel what they cover), a hold only
    by its offer's acceptance before it lapses."""
    current = appointment.status
    if target not in ROLE_TARGETS.get(setter, frozenset()):
        return Refusal("forbidden", f"your role may not mark appointments {target}")
    if (current == "held") != (setter == ACCEPT_OFFER):
        return Refusal("invalid", f"a {current} slot cannot become {target} this way")
    if target not in TRANSITIONS[current]:
        return Refusal("invalid", f"a {current} appointment cannot become {target}")
    if setter == ACCEPT_OFFER:
        expires = _hold_expiry(appointment)
        if expires is None or now >= expires:
            return Refusal("invalid", "this offer has expired")
        return None
    if target == "checked_in":
        if timezone is None:
            raise ValueError("a check-in is judged on the clinic's day: give its timezone")
        tz = zone(timezone)
        if now.astimezone(tz).date() != appointment.starts_at.astimezone(tz).date():
            return Refusal(
                "invalid", "a patient can be checked in only on the day of the appointment"
            )
    if target == "booked":
        at = appointment.checked_in_at
        if at is None or now - at > UNDO_CHECK_IN:
            minutes = int(UNDO_CHECK_IN.total_seconds() // 60)
            return Refusal("invalid", f"a check-in can be undone only within {minutes} minutes")
    if target == "no_show" and now < appointment.starts_at:
        return Refusal("invalid", "a no-show can be recorded only after the start time")
    if target == "cancelled" and setter != SCHEDULE and now >= appointment.ends_at:
        return Refusal(
            "invalid", "a past appointment cannot be cancelled; mark it completed or no-show"
        )
    return None


@dataclass(frozen=True, slots=True)
class Guard:
    """`refusal` as conditions on the row, for an UPDATE that changes only what it may:
    the status is one of `allowed_from`, it started by `started_by` and ends after
    `ends_after`, it starts on the clinic-local day of `on_day_of` (a check-in), it was
    checked in at or after `checked_in_since` (an undone check-in), its hold lapses after
    `held_until_after` (an accepted offer) (None: no such condition)."""

    allowed_from: tuple[str, ...]
    started_by: dt.datetime | None
    ends_after: dt.datetime | None
    on_day_of: dt.datetime | None = None
    checked_in_since: dt.datetime | None = None
    held_until_after: dt.datetime | None = None


def guard(setter: str, target: str, now: dt.datetime) -> Guard:
    """The rows `setter` may set to `target` now (no status at all when their role may not):
    exactly those for which `refusal` gives no reason (the day of a check-in is judged in
    each appointment's clinic's time zone)."""
    if target not in ROLE_TARGETS.get(setter, frozenset()):
        return Guard((), None, None)
    if setter == ACCEPT_OFFER:
        return Guard(tuple(sorted(sources(target, setter))), None, None, held_until_after=now)
    return Guard(
        tuple(sorted(sources(target))),
        now if target == "no_show" else None,
        now if target == "cancelled" and setter != SCHEDULE else None,
        now if target == "checked_in" else None,
        now - UNDO_CHECK_IN if target == "booked" else None,
    )


def check_transition(
    setter: str,
    appointment: Booked,
    target: str,
    now: dt.datetime,
    *,
    timezone: str | None = None,
) -> None:
    """Raises Forbidden or Invalid when `refusal` gives a reason."""
    why = refusal(setter, appointment, target, now, timezone=timezone)
    if why is not None:
        raise (Forbidden if why.kind == "forbidden" else Invalid)(why.message)


def check_bulk_target(target: str) -> None:
    """Raises Invalid for a status no appointment can be set to in bulk (unknown, or
    `booked`: a check-in is undone one at a time, each audited)."""
    check_known(target)
    if target == "booked" or not sources(target):
        raise Invalid(
            gettext("no appointment can be set back to %(target)s in bulk") % {"target": target}
        )


def check_reschedule(role: str, current: str) -> None:
    """Patients move their own bookings, front desks and admins anyone's; doctors do not.

    Raises:
        Forbidden: a doctor.
        Invalid: the appointment is no longer booked.
    """
    if role == "doctor":
        raise Forbidden(gettext("doctors do not reschedule; the front desk does"))
    if current != "booked":
        raise Invalid(
            gettext("a %(current)s appointment cannot be rescheduled") % {"current": current}
        )


def target_patient(actor: Principal, patient_id: int | None) -> int:
    """Who the booking is for: patients book for themselves, front desks and admins for
    anyone (a front desk only with its own clinic's doctors: see `check_desk_clinic`;
    that the patient exists is checked with their facts)."""
    if actor.role == "patient":
        if patient_id is not None and patient_id != actor.patient_id:
            raise Forbidden(gettext("patients can book only for themselves"))
        assert actor.patient_id is not None
        return actor.patient_id
    if actor.role in ("front_desk", "admin"):
        if patient_id is None:
            raise Invalid(gettext("patient_id is required when staff book"))
        return patient_id
    raise Forbidden(gettext("your role may not book appointments"))


def check_desk_clinic(actor: Principal, clinic_id: int) -> None:
    """Raises Forbidden when a front desk books with another clinic's doctor."""
    if actor.role == "front_desk" and actor.clinic_id != clinic_id:
        raise Forbidden(gettext("front desks book only with their own clinic's doctors"))


def for_visit_type(rules: BookingRules, visit_type: TypeFacts | None) -> BookingRules:
    """The clinic's rules with a visit type's own minimum notice and horizon, where it
    sets them (a vaccination bookable the same hour; a first visit at most 30 days out)."""
    if visit_type is None:
        return rules
    return BookingRules(
        min_notice=rules.min_notice
        if visit_type.min_notice_minutes is None
        else dt.timedelta(minutes=visit_type.min_notice_minutes),
        horizon=rules.horizon
        if visit_type.horizon_days is None
        else dt.timedelta(days=visit_type.horizon_days),
        max_future_per_doctor=rules.max_future_per_doctor,
    )


def check_may_book_type(role: str, visit_type: TypeFacts | None) -> None:
    """Raises Forbidden when a patient asks for a type the clinic books by staff only."""
    if visit_type is not None and not visit_type.online and role not in MAY_BOOK_STAFF_ONLY:
        raise Forbidden(
            gettext("%(name)s is booked by the clinic's staff only") % {"name": visit_type.name}
        )


# Who may see and book a visit type that is not bookable online.
MAY_BOOK_STAFF_ONLY = frozenset({"front_desk", "admin", "doctor"})


def booked_visit(
    starts_at: dt.datetime,
    ends_at: dt.datetime,
    visit_type_id: int | None,
    buffer_before: int,
    buffer_after: int,
) -> Visit | None:
    """The shape an appointment keeps when it moves: its own length and buffers for a
    visit of a type (what was booked, even if the type has been edited since); None for a
    plain slot, which takes the template's slot at its new time, as it always has."""
    if visit_type_id is None and not buffer_before and not buffer_after:
        return None
    minutes = int((ends_at - starts_at).total_seconds() // 60)
    return Visit(minutes, buffer_before, buffer_after)


def find_slot(data: DoctorDays, start: dt.datetime, visit: Visit | None = None) -> Interval:
    """The slot starting exactly at `start`: the template's, or a visit of `visit`'s shape
    (default: the visit type of `data`), or Invalid."""
    if visit is None and data.visit_type is not None:
        visit = data.visit_type.visit
    tz = zone(data.timezone)
    day = start.astimezone(tz).date()
    for slot in day_slots(day, data.ranges, tz, visit=visit):
        if slot.start == start:
            return Interval(slot.start, slot.end)
    if visit is not None and any(s.start == start for s in day_slots(day, data.ranges, tz)):
        raise Invalid(
            gettext("a %(minutes)s-minute visit at this time runs past the doctor's hours")
            % {"minutes": visit.minutes}
        )
    raise Invalid(gettext("this time is not on the doctor's slot grid"))


def check_bookable(
    data: DoctorDays,
    slot: Interval,
    rules: BookingRules,
    now: dt.datetime,
    visit: Visit | None = None,
) -> None:
    """Raises Invalid when the slot may not be booked now: the doctor is inactive, it is
    past, too soon, beyond the horizon, or it (with the visit's buffers) meets leave or a
    closure."""
    span = slot
    if visit is not None:
        span = Interval(
            slot.start - dt.timedelta(minutes=visit.buffer_before),
            slot.end + dt.timedelta(minutes=visit.buffer_after),
        )
    if not data.active:
        raise Invalid(gettext("this doctor is not taking appointments"))
    if slot.start < now:
        raise Invalid(gettext("this time is in the past"))
    if slot.start < now + rules.min_notice:
        minutes = int(rules.min_notice.total_seconds() // 60)
        raise Invalid(
            gettext("appointments need at least %(minutes)s minutes' notice") % {"minutes": minutes}
        )
    if slot.start > now + rules.horizon:
        raise Invalid(
            gettext("appointments can be booked at most %(days)s days ahead")
            % {"days": rules.horizon.days}
        )
    if any(span.overlaps(b) for b in data.blocked):
        raise Invalid(gettext("the doctor is not available then (leave or closure)"))


def check_override(role: str, override_reason: str | None) -> str | None:
    """The reason staff give for booking beyond the per-doctor limit, tidied; None when
    none was given.

    Raises:
        Forbidden: a patient (or any role but front desk and admin) gave one.
        Invalid: a reason of only blanks.
    """
    if override_reason is None:
        return None
    if role not in MAY_OVERRIDE_LIMIT:
        raise Forbidden(gettext("only the front desk and admins may book beyond the limit"))
    reason = " ".join(override_reason.split())
    if not reason:
        raise Invalid(gettext("override_reason must say why the limit is exceeded"))
    return reason


def check_room_for_one_more(
    held: int, rules: BookingRules, *, role: str = "patient", override_reason: str | None = None
) -> bool:
    """Whether a patient holding `held` future bookings with a doctor may take another one
    with them: within the limit, or beyond it when staff give a reason.

    Returns:
        True when this booking goes beyond the limit (on the staff's reason).

    Raises:
        Invalid: beyond the limit without a reason (staff are told a reason lets them).
    """
    if held < rules.max_future_per_doctor:
        return False
    if override_reason and role in MAY_OVERRIDE_LIMIT:
        return True
    raise over_the_limit(rules, role=role)


def check_room_to_move(
    held: int, starts_at: dt.datetime, now: dt.datetime, rules: BookingRules
) -> None:
    """Raises Invalid when moving a booking that starts at `starts_at` to a future slot
    would take the patient past the limit: only one that has already begun (not counted
    in `held`, their future bookings with the doctor) adds to what they hold."""
    if starts_at <= now:
        check_room_for_one_more(held, rules)


class OverTheLimit(Invalid):
    """A booking beyond the per-doctor limit. `limit` says the rule alone, for pages that
    tell staff in their own words how to go beyond it (the detail names the API field)."""

    def __init__(self, detail: str, *, limit: str) -> None:
        super().__init__(detail)
        self.limit = limit


def over_the_limit(rules: BookingRules, *, role: str = "patient") -> OverTheLimit:
    """The refusal of a booking beyond the limit; staff are told a reason lets them."""
    limit = gettext("a patient may hold at most %(count)s future appointments with one doctor") % {
        "count": rules.max_future_per_doctor
    }
    detail = limit
    if role in MAY_OVERRIDE_LIMIT:
        detail += gettext("; to book beyond it, give an override_reason (it is recorded)")
    return OverTheLimit(detail, limit=limit)
