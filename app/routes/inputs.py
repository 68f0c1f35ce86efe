"""Input types and checks every route shares: ids within PostgreSQL's bigint, calendar
days the app can compute with, clock times, and the request-wide refusal of NUL
characters and deeply nested JSON."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from app.errors import Invalid

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
# An id in a JSON body.
IdField = Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)]
DAY_RANGE = f"between {FIRST_DAY} and {LAST_DAY}"


def parse_id(text: str) -> int:
    """An id from a form field or websocket query; ValueError unless 1..INT64_MAX."""
    value = int(text)
    if not 1 <= value <= INT64_MAX:
        raise ValueError(f"id out of range: {text}")
    return value


def check_day(day: dt.date | None, field: str = "date") -> None:
    """Refuse (422) a day outside the calendar the app computes with."""
    if day is not None and not FIRST_DAY <= day <= LAST_DAY:
        raise Invalid(f"{field} must be {DAY_RANGE}, got {day.isoformat()}")


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
