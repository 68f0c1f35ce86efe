"""Input types and checks every route shares: ids within PostgreSQL's bigint, calendar
days the app can compute with, clock times, and the request-wide refusal of NUL
characters and deeply nested JSON."""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import available_timezones

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from app.access import passwords
from app.appointments.commands import MAX_BULK
from app.errors import Invalid
from app.i18n import gettext
from db.models import EXCEPTION_KINDS, NOTIFY_CHOICES, ROLES

INT64_MAX = 2**63 - 1  # ids are PostgreSQL bigints
# Days the clinic calendar computes with: a week or a day either side of any of them
# stays within Python's dates (year 1 to 9999).
FIRST_DAY = dt.date(1900, 1, 1)
LAST_DAY = dt.date(2999, 12, 31)
MAX_JSON_DEPTH = 32

_ID_RANGE: dict[str, Any] = {"minimum": 1, "maximum": INT64_MAX}
# An id in a path or query (the schema shows its exact bounds, not a rounded float).
Id = Annotated[int, Parameter(ge=1, le=INT64_MAX, schema_extra=_ID_RANGE)]
OptionalId = Annotated[int | None, Parameter(ge=1, le=INT64_MAX, schema_extra=_ID_RANGE)]
# An id in a JSON body (the schema's bounds exact too: as floats they would round up to
# 2^63, one past the largest bigint).
IdField = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX, extra_json_schema={"extra": _ID_RANGE})]

_BULK = msgspec.Meta(
    min_length=1,
    max_length=MAX_BULK,
    extra_json_schema={"extra": {"items": {"type": "integer", **_ID_RANGE}}},
)
if TYPE_CHECKING:
    Ids = list[int]
else:  # the appointments a bulk action names: 1 to MAX_BULK ids, each item bounded too
    Ids = Annotated[list[IdField], _BULK]

DAY_RANGE = f"between {FIRST_DAY} and {LAST_DAY}"
# The same bound as the schema says it: the year of a day or moment (1900-2999). msgspec
# cannot bound a date, so check_day enforces it; the pattern tells clients and fuzzers.
YEAR_PATTERN = r"^(19[0-9]{2}|2[0-9]{3})-"
YEARS: dict[str, Any] = {"pattern": YEAR_PATTERN}
Day = Annotated[dt.date, msgspec.Meta(extra_json_schema={"extra": YEARS})]
Moment = Annotated[dt.datetime, msgspec.Meta(extra_json_schema={"extra": YEARS})]
# A day in a query: the same bound.
QueryDay = Annotated[dt.date, Parameter(schema_extra=YEARS)]
OptionalQueryDay = Annotated[dt.date | None, Parameter(schema_extra=YEARS)]

# --- text and choices in request bodies ---------------------------------------------------
# Each rule is written once, here, as a field type: msgspec refuses (400) what breaks it
# and the OpenAPI schema says it, so a handler never checks it by hand. The domain keeps
# its own checks for the HTML forms, from the same constants (passwords.*, db.models).
# tests/unit/test_request_schema.py holds the schema to these rules.

# What accounts.normalise_email accepts: something@something, no spaces or control
# characters (spelled out: JavaScript's \s, which the schema's readers use, is not Python's).
EMAIL_PATTERN = r"^[^@\x00-\x20\x7f]+@[^@\x00-\x20\x7f]+$"
EMAIL_MAX = 254  # RFC 5321's longest address
Email = Annotated[
    str, msgspec.Meta(max_length=EMAIL_MAX, pattern=EMAIL_PATTERN, examples=["ann@example.test"])
]
# A new password: passwords.password_problem's length rule for patients (staff need
# STAFF_MIN_LENGTH, and no password may be a common one: rules a schema cannot hold).
NewPassword = Annotated[
    str, msgspec.Meta(min_length=passwords.MIN_LENGTH, max_length=passwords.MAX_LENGTH)
]
StaffPassword = Annotated[
    str, msgspec.Meta(min_length=passwords.STAFF_MIN_LENGTH, max_length=passwords.MAX_LENGTH)
]
# A password to check (sign-in, the current one): any, but bounded.
Password = Annotated[str, msgspec.Meta(max_length=passwords.MAX_LENGTH)]
NAME_MAX = 200
# A person's, clinic's or doctor's name, a specialty: not blank, at most NAME_MAX.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=NAME_MAX, pattern=r"\S")]
TEXT_MAX = 500
# Free text: a reason, a note, an address.
Text = Annotated[str, msgspec.Meta(max_length=TEXT_MAX)]
# A reason that must say something (staff going beyond the booking limit).
Reason = Annotated[str, msgspec.Meta(max_length=TEXT_MAX, pattern=r"\S")]
# preferences' international number (+ and 7-15 digits); empty clears it.
PHONE_PATTERN = r"^(\+[0-9]{7,15})?$"
Phone = Annotated[str, msgspec.Meta(pattern=PHONE_PATTERN, examples=["+4930123456"])]
TOKEN_MAX = 512  # reset and refresh tokens are far shorter
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=TOKEN_MAX)]
# A code from an authenticator app (6 digits) or a recovery code.
Code = Annotated[str, msgspec.Meta(max_length=64)]
# Wall-clock time as the schedule API writes it: 00:00 to 23:59.
Clock = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["09:00"])]
# Search text in a query.
SEARCH_MAX = 100

if TYPE_CHECKING:
    TimeZone = str
    Role = str
    ExceptionKind = str
    NotifyBy = str
else:
    # Choices from their one list: the IANA zones this machine knows, db.models' tuples.
    TimeZone = Literal[tuple(sorted(available_timezones()))]
    Role = Literal[ROLES]
    ExceptionKind = Literal[EXCEPTION_KINDS]
    NotifyBy = Literal[NOTIFY_CHOICES]


def parse_id(text: str) -> int:
    """An id from a form field or websocket query; ValueError unless 1..INT64_MAX."""
    value = int(text)
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"id out of range: {text}")
    return value


def check_day(day: dt.date | None, field: str = "date") -> None:
    """Refuse (422) a day outside the calendar the app computes with."""
    if day is not None and not FIRST_DAY <= day <= LAST_DAY:
        raise Invalid(
            gettext("%(field)s must be %(day_range)s, got %(value)s")
            % {"field": field, "day_range": DAY_RANGE, "value": day.isoformat()}
        )


def check_moment(moment: dt.datetime | None, field: str) -> None:
    """The same bound for a date and time."""
    if moment is not None:
        check_day(moment.date(), field)


def parse_day(text: str) -> dt.date:
    """A YYYY-MM-DD day within the calendar; ValueError otherwise."""
    day = dt.date.fromisoformat(text)
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"a day {DAY_RANGE}")
    return day


_CLOCK = re.compile(r"\d{2}:\d{2}")


def parse_clock(text: str) -> dt.time:
    """A wall-clock time written HH:MM (00:00-23:59); ValueError otherwise."""
    if not _CLOCK.fullmatch(text):
        raise ValueError(f"not a time like 09:30: {text!r}")
    return dt.time.fromisoformat(text)


# --- the request-wide check (a before_request hook) -------------------------------------

_JSON_BODIES = ("application/json", "application/fhir+json", "application/json-patch+json")
_CHECKED_BODIES = (*_JSON_BODIES, "application/x-www-form-urlencoded")
# An escaped NUL in JSON text: \u0000 not itself escaped (\\u0000 is a backslash and text).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")
NUL_DETAIL = "text may not contain a NUL character (\\u0000)"
DEPTH_DETAIL = f"JSON may nest at most {MAX_JSON_DEPTH} levels deep"


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in JSON text (strings skipped)."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_JSON_STRING.sub(b"", body)):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


async def refuse_bad_input(request: Request[Any, Any, Any]) -> None:
    """Refuse (400) a NUL character in the path, the query or a JSON or form body, and
    JSON nested deeper than MAX_JSON_DEPTH, before any handler parses them.

    PostgreSQL cannot store NUL in text, and the JSON parser recurses once per level:
    both were 500s. Multipart uploads pass unread (their files may hold any bytes).
    The body read here is cached by Litestar for the handler.
    """
    scope = request.scope
    if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
        raise ValidationException(NUL_DETAIL)
    if request.method in ("GET", "HEAD", "OPTIONS", "DELETE"):
        return
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _CHECKED_BODIES:
        return
    body = await request.body()
    if content_type in _JSON_BODIES:
        if _JSON_NUL.search(body):
            raise ValidationException(NUL_DETAIL)
        # Cheap first: only a body with that many brackets can nest that deep.
        if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and (
            json_depth(body) > MAX_JSON_DEPTH
        ):
            raise ValidationException(DEPTH_DETAIL)
    elif b"%00" in body.lower() or b"\x00" in body:
        raise ValidationException(NUL_DETAIL)
