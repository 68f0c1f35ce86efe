"""The appointment rules without a database: every from-state x to-state x setter."""

import datetime as dt
import itertools
from typing import NamedTuple

import pytest

from app.access.identity import Principal
from app.appointments import rules
from app.appointments.rules import BookingRules
from app.errors import Forbidden, Invalid
from app.scheduling.availability import Interval, TemplateRange
from app.scheduling.slots import DoctorDays

STATES = ("booked", "checked_in", "completed", "cancelled", "no_show", "held")
SETTERS = ("patient", "doctor", "front_desk", "admin", rules.SCHEDULE, rules.ACCEPT_OFFER, "nobody")

# Written out here, not read from the module, so a changed table fails this test.
LEGAL = {
    ("booked", "checked_in"),
    ("booked", "cancelled"),
    ("booked", "no_show"),
    ("checked_in", "completed"),
    ("checked_in", "cancelled"),
    ("checked_in", "booked"),  # the undo of a check-in
    ("held", "booked"),  # a waitlist offer accepted: the hold becomes the appointment
}
MAY_SET = {
    "patient": {"cancelled"},
    "doctor": {"checked_in", "completed", "no_show", "booked"},
    "front_desk": {"checked_in", "completed", "cancelled", "no_show", "booked"},
    "admin": {"checked_in", "completed", "cancelled", "no_show", "booked"},
    rules.SCHEDULE: {"cancelled"},
    rules.ACCEPT_OFFER: {"booked"},
    "nobody": set(),
}

STARTS = dt.datetime(2030, 3, 4, 9, 0, tzinfo=dt.UTC)
ENDS = STARTS + dt.timedelta(minutes=30)
BEFORE = STARTS - dt.timedelta(hours=2)
DURING = STARTS + dt.timedelta(minutes=10)
AFTER = ENDS + dt.timedelta(hours=2)
CHECKED_IN = STARTS - dt.timedelta(minutes=5)
UNDO = dt.timedelta(minutes=10)  # written out: a changed window fails these tests
HOLD_EXPIRES = STARTS - dt.timedelta(hours=1)  # a hold lapses between "before" and "during"


class Booked(NamedTuple):
    status: str
    starts_at: dt.datetime = STARTS
    ends_at: dt.datetime = ENDS
    checked_in_at: dt.datetime | None = CHECKED_IN
    hold_expires_at: dt.datetime | None = HOLD_EXPIRES


MOMENTS = {
    "day_before": STARTS - dt.timedelta(days=1),
    "before": BEFORE,
    "during": DURING,
    "at_start": STARTS,
    "at_end": ENDS,
    "after": AFTER,
    "day_after": STARTS + dt.timedelta(days=1),
}


def expected(setter: str, current: str, target: str, moment: str) -> str | None:
    """The verdict the clinic expects: role first, then the state machine, then the clock."""
    if target not in MAY_SET[setter]:
        return "forbidden"
    if (current == "held") != (setter == rules.ACCEPT_OFFER):
        return "invalid"  # only an accepted offer moves a hold, and it moves nothing else
    if (current, target) not in LEGAL:
        return "invalid"
    if setter == rules.ACCEPT_OFFER:
        return "invalid" if MOMENTS[moment] >= HOLD_EXPIRES else None  # a lapsed offer
    if target == "checked_in" and moment in ("day_before", "day_after"):
        return "invalid"  # a check-in only on the appointment's day
    if target == "booked" and MOMENTS[moment] - CHECKED_IN > UNDO:
        return "invalid"  # an undo only within ten minutes of the check-in
    if target == "no_show" and moment in ("day_before", "before"):
        return "invalid"  # a no-show only once the start has come
    if (
        target == "cancelled"
        and setter != rules.SCHEDULE
        and moment in ("at_end", "after", "day_after")
    ):
        return "invalid"  # an ended appointment is completed or a no-show, not cancelled
    return None


CASES = list(itertools.product(SETTERS, STATES, STATES, MOMENTS))


@pytest.mark.parametrize(("setter", "current", "target", "moment"), CASES)
def test_every_transition_by_every_setter_at_every_moment(setter, current, target, moment):
    now = MOMENTS[moment]
    why = rules.refusal(setter, Booked(current), target, now, timezone="UTC")
    assert (why.kind if why else None) == expected(setter, current, target, moment)

    def check():
        rules.check_transition(setter, Booked(current), target, now, timezone="UTC")

    verdict = expected(setter, current, target, moment)
    if verdict is None:
        check()
    else:
        with pytest.raises(Forbidden if verdict == "forbidden" else Invalid) as raised:
            check()
        assert raised.value.args[0] == why.message


@pytest.mark.parametrize(("setter", "current", "target", "moment"), CASES)
def test_the_guard_passes_exactly_the_rows_refusal_allows(setter, current, target, moment):
    """The status-change statement's WHERE, written out in Python: the same verdict as
    `refusal` for every setter, state, target and moment."""
    now = MOMENTS[moment]
    guard = rules.guard(setter, target, now)
    passes = (
        current in guard.allowed_from
        and (guard.started_by is None or guard.started_by >= STARTS)
        and (guard.ends_after is None or guard.ends_after < ENDS)
        and (guard.on_day_of is None or guard.on_day_of.date() == STARTS.date())  # UTC clinic
        and (guard.checked_in_since is None or guard.checked_in_since <= CHECKED_IN)
        and (guard.held_until_after is None or guard.held_until_after < HOLD_EXPIRES)
    )
    assert passes == (expected(setter, current, target, moment) is None)


def test_the_table_covers_every_state_and_nothing_else():
    assert set(STATES) == rules.STATUSES
    assert {(s, t) for s in STATES for t in STATES if t in rules.TRANSITIONS[s]} == LEGAL


@pytest.mark.parametrize("target", STATES)
def test_sources_are_the_states_a_target_is_reached_from(target):
    assert rules.sources(target) == {s for s, t in LEGAL if t == target} - {"held"}
    # only an accepted offer starts from a hold
    expected_by_offer = {"held"} if target == "booked" else set()
    assert rules.sources(target, rules.ACCEPT_OFFER) == expected_by_offer


def test_leave_and_closures_cancel_what_is_active_even_once_it_has_ended():
    assert rules.sources("cancelled") == {"booked", "checked_in"}
    for current in ("booked", "checked_in"):
        assert rules.refusal(rules.SCHEDULE, Booked(current), "cancelled", AFTER) is None


def test_the_day_of_a_check_in_is_the_clinics():
    # 09:00 in Berlin on 5 March is 08:00 UTC; 23:30 UTC on 4 March is already the 5th there.
    morning = Booked("booked", dt.datetime(2030, 3, 5, 8, 0, tzinfo=dt.UTC))
    late_evening = dt.datetime(2030, 3, 4, 23, 30, tzinfo=dt.UTC)
    assert rules.refusal("front_desk", morning, "checked_in", late_evening, timezone="UTC")
    assert not rules.refusal(
        "front_desk", morning, "checked_in", late_evening, timezone="Europe/Berlin"
    )
    why = rules.refusal("front_desk", morning, "checked_in", late_evening, timezone="UTC")
    assert why is not None and why.message == (
        "a patient can be checked in only on the day of the appointment"
    )
    with pytest.raises(ValueError, match="timezone"):
        rules.refusal("front_desk", morning, "checked_in", late_evening)


def test_a_check_in_is_undone_only_within_ten_minutes_of_it():
    done = Booked("checked_in", checked_in_at=DURING)
    assert not rules.refusal("front_desk", done, "booked", DURING + UNDO)
    late = rules.refusal("front_desk", done, "booked", DURING + UNDO + dt.timedelta(seconds=1))
    assert late == rules.Refusal("invalid", "a check-in can be undone only within 10 minutes")
    never = Booked("checked_in", checked_in_at=None)  # no stamp: nothing to measure from
    assert rules.refusal("admin", never, "booked", DURING) is not None
    assert rules.refusal("patient", done, "booked", DURING).kind == "forbidden"


def test_unknown_and_unreachable_targets():
    with pytest.raises(Invalid, match="unknown status 'flying'"):
        rules.check_known("flying")
    with pytest.raises(Invalid, match="unknown status"):
        rules.check_bulk_target("flying")
    with pytest.raises(Invalid, match="set back to booked"):
        rules.check_bulk_target("booked")
    for target in ("checked_in", "completed", "cancelled", "no_show"):
        rules.check_bulk_target(target)
        rules.check_known(target)


def test_status_columns_stamp_when_it_happened():
    now = DURING
    assert rules.status_columns("cancelled", now) == {
        "status": "cancelled",
        "updated_at": now,
        "cancelled_at": now,
    }
    assert rules.status_columns("checked_in", now) == {
        "status": "checked_in",
        "updated_at": now,
        "checked_in_at": now,
    }
    assert rules.status_columns("booked", now) == {
        "status": "booked",
        "updated_at": now,
        "checked_in_at": None,
    }
    for target in ("completed", "no_show"):
        assert rules.status_columns(target, now) == {"status": target, "updated_at": now}


@pytest.mark.parametrize(
    ("role", "current", "error"),
    [
        ("doctor", "booked", Forbidden),
        ("doctor", "checked_in", Forbidden),
        *[(r, "booked", None) for r in ("patient", "front_desk", "admin")],
        *[(r, s, Invalid) for r in ("patient", "front_desk", "admin") for s in STATES[1:]],
    ],
)
def test_who_may_reschedule_what(role, current, error):
    if error is None:
        rules.check_reschedule(role, current)
    else:
        with pytest.raises(error):
            rules.check_reschedule(role, current)


def principal(role: str, **links) -> Principal:
    return Principal(1, "x@t.test", role, **links)


def test_who_books_for_whom():
    me = principal("patient", patient_id=7)
    assert rules.target_patient(me, None) == 7
    assert rules.target_patient(me, 7) == 7
    with pytest.raises(Forbidden, match="only for themselves"):
        rules.target_patient(me, 8)
    for role in ("front_desk", "admin"):
        staff = principal(role, clinic_id=1)
        assert rules.target_patient(staff, 8) == 8
        with pytest.raises(Invalid, match="patient_id is required"):
            rules.target_patient(staff, None)
    with pytest.raises(Forbidden, match="may not book"):
        rules.target_patient(principal("doctor", doctor_id=3), 8)

    rules.check_desk_clinic(principal("front_desk", clinic_id=1), 1)
    rules.check_desk_clinic(principal("admin"), 2)
    with pytest.raises(Forbidden, match="own clinic"):
        rules.check_desk_clinic(principal("front_desk", clinic_id=1), 2)


BOOKING = BookingRules(
    min_notice=dt.timedelta(hours=1), horizon=dt.timedelta(days=30), max_future_per_doctor=3
)
NOON = dt.datetime(2030, 3, 4, 12, 0, tzinfo=dt.UTC)  # a Monday


def doctor_days(active=True, blocked=()) -> DoctorDays:
    """Monday 09:00-17:00 UTC in 30-minute slots."""
    ranges = [TemplateRange(0, dt.time(9), dt.time(17), 30, None, None)]
    return DoctorDays(1, 1, "UTC", active, ranges, list(blocked), [])


def test_only_starts_on_the_grid_are_slots():
    slot = rules.find_slot(doctor_days(), NOON + dt.timedelta(hours=2))
    assert slot == Interval(NOON + dt.timedelta(hours=2), NOON + dt.timedelta(hours=2, minutes=30))
    for off_grid in (dt.timedelta(hours=2, minutes=10), dt.timedelta(hours=6)):
        with pytest.raises(Invalid, match="slot grid"):
            rules.find_slot(doctor_days(), NOON + off_grid)


@pytest.mark.parametrize(
    ("start", "data", "why"),
    [
        (NOON + dt.timedelta(hours=2), doctor_days(active=False), "not taking"),
        (NOON - dt.timedelta(hours=1), doctor_days(), "past"),
        (NOON + dt.timedelta(minutes=30), doctor_days(), "60 minutes' notice"),
        (NOON + dt.timedelta(days=35), doctor_days(), "30 days ahead"),
        (
            NOON + dt.timedelta(hours=2),
            doctor_days(
                blocked=[Interval(NOON + dt.timedelta(hours=1), NOON + dt.timedelta(hours=3))]
            ),
            "leave or closure",
        ),
        (NOON + dt.timedelta(hours=1), doctor_days(), None),  # exactly the notice: fine
        (NOON + dt.timedelta(days=28), doctor_days(), None),
    ],
)
def test_what_makes_a_slot_bookable(start, data, why):
    slot = Interval(start, start + dt.timedelta(minutes=30))
    if why is None:
        rules.check_bookable(data, slot, BOOKING, NOON)
    else:
        with pytest.raises(Invalid, match=why):
            rules.check_bookable(data, slot, BOOKING, NOON)


def test_a_patient_holds_at_most_the_limit_with_one_doctor():
    for held in range(3):
        assert rules.check_room_for_one_more(held, BOOKING) is False
    for held in (3, 4):
        with pytest.raises(Invalid, match="at most 3 future appointments") as refused:
            rules.check_room_for_one_more(held, BOOKING)
        assert "override_reason" not in refused.value.detail  # patients get no such offer
        # A reason counts only from staff.
        with pytest.raises(Invalid, match="at most 3"):
            rules.check_room_for_one_more(held, BOOKING, role="patient", override_reason="x")


@pytest.mark.parametrize("role", ["front_desk", "admin"])
def test_staff_go_beyond_the_limit_only_with_a_reason(role):
    with pytest.raises(Invalid, match="give an override_reason"):
        rules.check_room_for_one_more(3, BOOKING, role=role)
    assert rules.check_room_for_one_more(3, BOOKING, role=role, override_reason="family")
    assert not rules.check_room_for_one_more(2, BOOKING, role=role, override_reason="family")
    assert rules.check_override(role, "  needs  a series ") == "needs a series"
    assert rules.check_override(role, None) is None
    with pytest.raises(Invalid, match="say why"):
        rules.check_override(role, "   ")


@pytest.mark.parametrize("role", ["patient", "doctor"])
def test_only_the_desk_and_admins_may_override_the_limit(role):
    with pytest.raises(Forbidden, match="only the front desk and admins"):
        rules.check_override(role, "because")
    assert rules.check_override(role, None) is None


def test_a_move_adds_to_what_is_held_only_for_a_booking_already_begun():
    future, begun = NOON + dt.timedelta(hours=1), NOON - dt.timedelta(minutes=10)
    for held in (3, 5):  # at or over the limit: a future booking still moves
        rules.check_room_to_move(held, future, NOON, BOOKING)
    rules.check_room_to_move(2, begun, NOON, BOOKING)
    for starts_at in (begun, NOON):
        with pytest.raises(Invalid, match="at most 3 future appointments"):
            rules.check_room_to_move(3, starts_at, NOON, BOOKING)
