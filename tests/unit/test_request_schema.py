"""The OpenAPI schema carries every rule the API's request bodies and parameters are held
to (issue #22): each rule below must be in the schema, with the value the code enforces,
and each rule's value agrees with the domain's own check of it (the HTML forms use that)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from zoneinfo import available_timezones

import pytest

from app.access import passwords
from app.access.accounts import normalise_email
from app.appointments.rules import check_bulk_target
from app.errors import Invalid
from app.notifications.preferences import _looks_like_phone
from app.records.records import MAX_REASON_CHARS
from app.routes import inputs
from app.routes.api_directory import MAX_RANGES
from app.settings import get_settings
from app.web.asgi import create_app
from db.models import APPOINTMENT_STATUSES, EXCEPTION_KINDS, NOTIFY_CHOICES, ROLES

DOCUMENT = create_app(get_settings()).openapi_schema.to_schema()  # connects to nothing

EMAIL = {"pattern": inputs.EMAIL_PATTERN, "maxLength": inputs.EMAIL_MAX}
NEW_PASSWORD = {"minLength": passwords.MIN_LENGTH, "maxLength": passwords.MAX_LENGTH}
STAFF_PASSWORD = {"minLength": passwords.STAFF_MIN_LENGTH, "maxLength": passwords.MAX_LENGTH}
PASSWORD = {"maxLength": passwords.MAX_LENGTH}
NAME = {"minLength": 1, "maxLength": inputs.NAME_MAX, "pattern": r"\S"}
TEXT = {"maxLength": inputs.TEXT_MAX}
YEARS = {"pattern": inputs.YEAR_PATTERN}
PHONE = {"pattern": inputs.PHONE_PATTERN}
TOKEN = {"minLength": 1, "maxLength": inputs.TOKEN_MAX}
SLOT_MINUTES = {"minimum": 5, "maximum": 240}
CLOCK = {"pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9]$"}


def enum(*choices: str) -> dict[str, Any]:
    return {"enum": set(choices)}


def accepted_in_bulk(status: str) -> bool:
    try:
        check_bulk_target(status)
    except Invalid:
        return False
    return True


# (schema component, property, the constraints it must carry)
BODY_RULES = [
    ("RegisterBody", "email", EMAIL),
    ("RegisterBody", "password", NEW_PASSWORD),
    ("RegisterBody", "full_name", NAME),
    ("RegisterBody", "date_of_birth", YEARS),
    ("RegisterBody", "phone", PHONE),
    ("Credentials", "email", {"maxLength": inputs.EMAIL_MAX}),
    ("Credentials", "password", PASSWORD),
    ("Credentials", "totp", {"maxLength": 64}),
    ("RefreshBody", "refresh_token", TOKEN),
    ("PasswordChange", "current_password", PASSWORD),
    ("PasswordChange", "new_password", NEW_PASSWORD),
    ("ResetRequest", "email", EMAIL),
    ("ResetConfirm", "token", TOKEN),
    ("ResetConfirm", "new_password", NEW_PASSWORD),
    ("NewAccount", "role", enum(*ROLES)),
    ("NewAccount", "email", EMAIL),
    ("NewAccount", "password", STAFF_PASSWORD),
    ("NewAccount", "full_name", NAME),
    ("AccountChange", "role", enum(*ROLES)),
    ("ClinicIn", "name", NAME),
    ("ClinicIn", "timezone", enum(*available_timezones())),
    ("ClinicIn", "address", TEXT),
    ("DoctorIn", "name", NAME),
    ("DoctorIn", "specialty", NAME),
    ("DoctorIn", "email", EMAIL),
    ("DoctorIn", "default_slot_minutes", SLOT_MINUTES),
    ("RangeBody", "weekday", {"minimum": 0, "maximum": 6}),
    ("RangeBody", "start", CLOCK),
    ("RangeBody", "end", CLOCK),
    ("RangeBody", "slot_minutes", SLOT_MINUTES),
    ("RangeBody", "valid_from", YEARS),
    ("RangeBody", "valid_to", YEARS),
    ("ScheduleIn", "ranges", {"maxItems": MAX_RANGES}),
    ("ScheduleIn", "reason", TEXT),
    ("ExceptionIn", "starts_at", YEARS),
    ("ExceptionIn", "ends_at", YEARS),
    ("ExceptionIn", "kind", enum(*EXCEPTION_KINDS)),
    ("ExceptionIn", "note", TEXT),
    ("ExceptionPatch", "starts_at", YEARS),
    ("ExceptionPatch", "ends_at", YEARS),
    ("ExceptionPatch", "kind", enum(*EXCEPTION_KINDS)),
    ("ExceptionPatch", "note", TEXT),
    ("BookingIn", "start", YEARS),
    ("BookingIn", "reason", TEXT),
    ("BookingIn", "override_reason", TEXT),
    ("AppointmentPatch", "start", YEARS),
    ("AppointmentPatch", "reason", TEXT),
    ("BulkIn", "appointment_ids", {"minItems": 1, "maxItems": 500}),
    ("BulkIn", "status", enum(*(s for s in APPOINTMENT_STATUSES if accepted_in_bulk(s)))),
    ("PreferenceIn", "notify_by", enum(*NOTIFY_CHOICES)),
    ("PreferenceIn", "phone", PHONE),
    ("ExportIn", "from", YEARS),
    ("ExportIn", "to", YEARS),
]
# (method, path, parameter, the constraints it must carry)
PARAMETER_RULES = [
    ("get", "/api/doctors", "name", {"maxLength": inputs.SEARCH_MAX}),
    ("get", "/api/doctors", "specialty", {"maxLength": inputs.SEARCH_MAX}),
    ("get", "/api/users", "role", enum(*ROLES)),
    ("get", "/api/appointments/available-slots", "date", YEARS),
    ("get", "/api/appointments", "date", YEARS),
    ("get", "/api/analytics/no-shows", "from", YEARS),
    ("get", "/api/analytics/no-shows", "to", YEARS),
    ("get", "/api/analytics/report.csv", "from", YEARS),
    (
        "get",
        "/api/patients/{patient_id}/records",
        "break_glass_reason",
        {"maxLength": MAX_REASON_CHARS},
    ),
]


def constraints(schema: dict[str, Any]) -> dict[str, Any]:
    """A property's constraints, wherever Litestar put them (beside or inside a oneOf
    with null), numbers as ints, an enum as a set without null."""
    found: dict[str, Any] = {}
    for part in [schema, *schema.get("oneOf", [])]:
        for key, value in part.items():
            if key == "enum":
                found[key] = {v for v in value if v is not None}
            elif key not in ("oneOf", "type", "format", "examples", "default", "description"):
                found[key] = int(value) if isinstance(value, float) else value
    return found


@pytest.mark.parametrize(("component", "name", "rule"), BODY_RULES)
def test_each_body_rule_is_in_the_schema(component, name, rule):
    schema = DOCUMENT["components"]["schemas"][component]["properties"][name]
    found = constraints(schema)
    assert {k: found.get(k) for k in rule} == rule, (component, name, schema)


@pytest.mark.parametrize(("method", "path", "name", "rule"), PARAMETER_RULES)
def test_each_parameter_rule_is_in_the_schema(method, path, name, rule):
    (parameter,) = [p for p in DOCUMENT["paths"][path][method]["parameters"] if p["name"] == name]
    found = constraints(parameter["schema"])
    assert {k: found.get(k) for k in rule} == rule, (path, name, parameter)


def accepted_by_domain(check, value) -> bool:
    try:
        check(value)
    except (Invalid, ValueError):
        return False
    return True


def test_the_schema_rules_agree_with_the_domain_checks():
    """What a pattern admits, the domain's own check of the same rule admits too (the
    pattern may be stricter, never looser: a schema-valid request is never refused for it)."""
    email = re.compile(inputs.EMAIL_PATTERN)
    for text in ("ann@example.test", "a@b", "@b", "a@", "a b@c", "abc", "a@b@c"):
        if email.search(text):
            assert accepted_by_domain(normalise_email, text), text
    phone = re.compile(inputs.PHONE_PATTERN)
    for text in ("+4930123456", "+1234567", "+123456", "+1234567890123456", "030 1234", "+49"):
        assert bool(phone.search(text)) == _looks_like_phone(text), text
    years = re.compile(inputs.YEAR_PATTERN)
    for day in ("1899-12-31", "1900-01-01", "2026-12-07", "2999-12-31", "3000-01-01"):
        in_schema = bool(years.search(day))
        assert in_schema == accepted_by_domain(inputs.check_day, dt.date.fromisoformat(day))
    clock = re.compile(CLOCK["pattern"])
    for text in ("00:00", "09:30", "23:59", "24:00", "25:00", "9:30", "12:60"):
        assert bool(clock.search(text)) == accepted_by_domain(inputs.parse_clock, text), text
    for role in ("patient", "doctor", "front_desk", "admin"):
        shortest = "k3#Vq9!z" * 4
        minimum = passwords.STAFF_MIN_LENGTH if role != "patient" else passwords.MIN_LENGTH
        assert passwords.password_problem(shortest[:minimum], role=role) is None
        assert passwords.password_problem(shortest[: minimum - 1], role=role) is not None
    assert passwords.password_problem(shortest[:1] * (passwords.MAX_LENGTH + 1)) is not None
