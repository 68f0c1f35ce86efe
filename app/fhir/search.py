"""FHIR search parameters: which each resource type supports, and parsing a query into
plain values. Pure: no I/O.

The table `SEARCH_PARAMS` is the one source for both the parser and the
CapabilityStatement (app/fhir/capability.py), so what the server declares is exactly what
it understands. Decisions:

- A parameter the server does not know is ignored (and left out of the self link), as
  FHIR's default `Prefer: handling=lenient` says; under `handling=strict` it is a 400.
- A known parameter with a value the server cannot read, or with a modifier
  (`name:exact`), is always a 400: ignoring it would silently widen the result.
- Values separated by commas are alternatives (OR); a repeated parameter narrows (AND),
  which for dates is how a range is written: `start=ge2026-12-01&start=lt2026-12-08`.
- A date without a time means the clinic's local calendar day (a Berlin appointment at
  00:30 on 2 December belongs to 2 December, whatever UTC says). A time needs a UTC offset.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple
from zoneinfo import ZoneInfo

from app.errors import DomainError

INT64_MAX = 2**63 - 1
DEFAULT_COUNT = 100
MAX_COUNT = 500  # `_count` above this is lowered to it (the self link says so)
MAX_OFFSET = 10_000  # deeper pages: narrow the search instead
MAX_ALTERNATIVES = 50  # values of one parameter, comma-separated


class BadSearch(DomainError):
    """A search the server cannot carry out as asked: 400 with an OperationOutcome."""

    status_code = 400


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    type: str  # FHIR search parameter type: token, reference, date, string
    documentation: str


_ID = Param("_id", "token", "the logical id (comma-separated for several)")
# Parameters of every search: paging and the response format.
CONTROL = ("_count", "_offset", "_include", "_format")

SEARCH_PARAMS: dict[str, tuple[Param, ...]] = {
    "Practitioner": (_ID, Param("name", "string", "part of the doctor's name")),
    "PractitionerRole": (
        _ID,
        Param("practitioner", "reference", "Practitioner/{id}"),
        Param("location", "reference", "Location/{id}: the clinic"),
        Param("specialty", "token", "the specialty, as written (case-insensitive)"),
    ),
    "Location": (_ID, Param("name", "string", "part of the clinic's name")),
    "Schedule": (
        _ID,
        Param("actor", "reference", "Practitioner/{id} or Location/{id}"),
    ),
    "HealthcareService": (
        _ID,
        Param("name", "string", "part of the visit type's name"),
        Param("practitioner", "reference", "Practitioner/{id}: the doctor's visit types"),
        Param("location", "reference", "Location/{id}: the clinic's visit types"),
        Param("specialty", "token", "the doctor's specialty, as written (case-insensitive)"),
    ),
    "Slot": (
        Param(
            "schedule",
            "reference",
            "Schedule/{id}: one doctor's calendar (required without service-type)",
        ),
        Param("start", "date", "ge/gt/lt/le/eq; at most 31 days; default the next 7 days"),
        Param("status", "token", "free | busy | busy-unavailable"),
        Param(
            "service-type",
            "token",
            "HealthcareService/{id}: slots of that visit type (its length and buffers)",
        ),
    ),
    "Appointment": (
        _ID,
        Param("patient", "reference", "Patient/{id}"),
        Param("practitioner", "reference", "Practitioner/{id}"),
        Param("location", "reference", "Location/{id}"),
        Param("date", "date", "the start: ge/gt/lt/le/eq"),
        Param("status", "token", "booked | checked-in | fulfilled | noshow | cancelled"),
    ),
    "Patient": (
        _ID,
        Param("name", "string", "the start of any word of the name"),
        Param("birthdate", "date", "the date of birth"),
    ),
}
# `_include` values each type supports: cheap, one query each for the page's references.
INCLUDES: dict[str, tuple[str, ...]] = {
    "Appointment": ("Appointment:patient", "Appointment:practitioner", "Appointment:location"),
    "PractitionerRole": ("PractitionerRole:practitioner", "PractitionerRole:location"),
    "Slot": ("Slot:schedule",),
}
# Parameters of the $find operation (GET /fhir/R4/Appointment/$find).
FIND_PARAMS: tuple[Param, ...] = (
    Param("practitioner", "reference", "Practitioner/{id}, comma-separated for several"),
    Param("location", "reference", "Location/{id}: every active doctor of the clinic"),
    Param("specialty", "token", "with location: only doctors of this specialty"),
    Param(
        "service-type",
        "token",
        "HealthcareService/{id}, comma-separated for several: visits of those types",
    ),
    Param("start", "date", "earliest start (default: now)"),
    Param("end", "date", "latest start (default: 7 days after start; at most 31 days)"),
)

# medbook's appointment statuses as FHIR Appointment.status codes, and back.
APPOINTMENT_STATUS = {
    "booked": "booked",
    "checked_in": "checked-in",
    "completed": "fulfilled",
    "no_show": "noshow",
    "cancelled": "cancelled",
}
# A hold ($hold, or a waitlist offer's) is `pending` until booked or released; it is never
# set through PATCH.
HELD_STATUS = "pending"
FROM_FHIR_STATUS = {code: status for status, code in APPOINTMENT_STATUS.items()}
# A visit type as a coded service type (Slot, Appointment): the HealthcareService's id.
SERVICE_TYPE_SYSTEM = "urn:medbook:fhir:healthcare-service"
# Every code of the R4 value set: the others match nothing here, but are not an error.
FHIR_APPOINTMENT_CODES = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)
SLOT_STATUSES = frozenset(
    {"free", "busy", "busy-unavailable", "busy-tentative", "entered-in-error"}
)


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed search: each known parameter's values (one list per occurrence, each a
    list of comma-separated alternatives), paging, includes, and what was ignored."""

    resource_type: str
    params: dict[str, list[list[str]]]
    count: int
    offset: int
    includes: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()
    used: list[tuple[str, str]] = field(default_factory=list)  # for the self link

    def values(self, name: str) -> list[list[str]]:
        return self.params.get(name, [])

    def any_of(self, name: str) -> list[str] | None:
        """The alternatives of a parameter given once; None if absent.

        Raises:
            BadSearch: given more than once (AND of several makes no sense for it).
        """
        occurrences = self.values(name)
        if not occurrences:
            return None
        if len(occurrences) > 1:
            raise BadSearch(f"give {name} once (separate alternatives with commas)")
        return occurrences[0]


def wants_strict(prefer: str | None) -> bool:
    """Whether a `Prefer` header asks for strict handling of unknown parameters."""
    if not prefer:
        return False
    parts = {p.strip().replace(" ", "").lower() for p in prefer.split(",")}
    return "handling=strict" in parts


def parse(
    resource_type: str,
    query: Iterable[tuple[str, str]],
    *,
    strict: bool,
    known: Sequence[Param] | None = None,
) -> Search:
    """Read a search query.

    Args:
        resource_type: e.g. `Slot`.
        query: the query string's (name, value) pairs, in order, repeats included.
        strict: refuse unknown parameters (`Prefer: handling=strict`).
        known: the parameters to accept instead of the type's search parameters
            (operations: `FIND_PARAMS`).

    Raises:
        BadSearch: an unknown parameter under strict handling, a modifier, a bad `_count`,
            `_offset`, `_include` or `_format`, or too many alternatives.
    """
    names = {p.name for p in (known if known is not None else SEARCH_PARAMS[resource_type])}
    params: dict[str, list[list[str]]] = {}
    count, offset = DEFAULT_COUNT, 0
    includes: list[str] = []
    ignored: list[str] = []
    used: list[tuple[str, str]] = []
    for name, value in query:
        if "\x00" in name or "\x00" in value:
            raise BadSearch("a search may not contain a NUL character")
        base, _, modifier = name.partition(":")
        if base in names or base in CONTROL:
            if modifier:
                raise BadSearch(f"the modifier :{modifier} of {base} is not supported")
        elif strict:
            raise BadSearch(f"unknown search parameter {name!r} for {resource_type}")
        else:
            ignored.append(name)
            continue
        if base == "_count":
            count = min(_bounded_int(name, value, 0, INT64_MAX), MAX_COUNT)
            continue
        if base == "_offset":
            offset = _bounded_int(name, value, 0, MAX_OFFSET)
            continue
        if base == "_format":
            if value not in ("json", "application/json", "application/fhir+json"):
                raise BadSearch("only JSON is served: _format=json")
        elif base == "_include":
            if value not in INCLUDES.get(resource_type, ()):
                supported = ", ".join(INCLUDES.get(resource_type, ())) or "none"
                raise BadSearch(f"_include={value} is not supported (supported: {supported})")
            includes.append(value)
        else:
            alternatives = [v.strip() for v in value.split(",")]
            if len(alternatives) > MAX_ALTERNATIVES or not all(alternatives):
                raise BadSearch(f"{name}: give 1 to {MAX_ALTERNATIVES} non-empty values")
            params.setdefault(base, []).append(alternatives)
        used.append((name, value))
    return Search(resource_type, params, count, offset, tuple(includes), tuple(ignored), used)


def _bounded_int(name: str, value: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"\d{1,19}", value) or not lo <= int(value) <= hi:
        raise BadSearch(f"{name} must be a whole number from {lo} to {hi}")
    return int(value)


def ids(values: Sequence[str] | None, name: str = "_id") -> list[int] | None:
    """Logical ids (medbook's are numbers); an id that is no number matches nothing."""
    if values is None:
        return None
    return [int(v) for v in values if re.fullmatch(r"[1-9]\d{0,18}", v) and int(v) <= INT64_MAX]


_REFERENCE = re.compile(r"(?:.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[^/]+)|(?P<bare>[^/]+)")


def reference_ids(
    values: Sequence[str] | None, name: str, types: Sequence[str]
) -> dict[str, list[int]] | None:
    """The ids of references such as `Practitioner/12` (a bare `12` when only one type
    fits, or an absolute URL ending in Type/id), by type.

    Raises:
        BadSearch: a reference to a type this parameter does not take.
    """
    if values is None:
        return None
    found: dict[str, list[int]] = {t: [] for t in types}
    for value in values:
        match = _REFERENCE.fullmatch(value)
        kind = match["type"] if match and match["type"] else None
        target = (match["id"] if kind else match["bare"]) if match else None
        if kind is None:
            if len(types) != 1:
                raise BadSearch(f"{name}: write the type, e.g. {types[0]}/1")
            kind = types[0]
        if kind not in types:
            raise BadSearch(f"{name} takes a reference to {' or '.join(types)}, not {kind}")
        found[kind] += ids([target or ""]) or []
    return found


def service_type_ids(values: Sequence[str] | None) -> list[int] | None:
    """The visit type ids a `service-type` asks for: `HealthcareService/{id}`, `{id}` or
    the token `urn:medbook:fhir:healthcare-service|{id}` (None: not asked).

    Raises:
        BadSearch: a value in none of these forms.
    """
    if values is None:
        return None
    plain = []
    for value in values:
        system, bar, code = value.rpartition("|")
        if bar and system not in ("", SERVICE_TYPE_SYSTEM):
            raise BadSearch(f"service-type: the system is {SERVICE_TYPE_SYSTEM}, not {system}")
        plain.append(code if bar else value)
    refs = reference_ids(plain, "service-type", ["HealthcareService"])
    assert refs is not None
    return refs["HealthcareService"]


class LocalDay(NamedTuple):
    """A calendar day in the clinic's time zone; `end` marks the instant after it."""

    day: dt.date
    end: bool


class Comparison(NamedTuple):
    op: str  # ">=", ">", "<", "<="
    moment: dt.datetime | LocalDay


_DATE_VALUE = re.compile(r"(?P<prefix>eq|ne|lt|gt|le|ge|sa|eb|ap)?(?P<value>\d.*)")


def date_comparisons(occurrences: Sequence[Sequence[str]], name: str) -> list[Comparison]:
    """What a date parameter asks, as comparisons (all must hold) of the instant.

    Raises:
        BadSearch: several alternatives, an unsupported prefix (ne, sa, eb, ap), a value
            that is neither a date nor a date and time with a UTC offset.
    """
    result: list[Comparison] = []
    for alternatives in occurrences:
        if len(alternatives) != 1:
            raise BadSearch(f"{name} takes one value per occurrence")
        match = _DATE_VALUE.fullmatch(alternatives[0])
        if not match:
            raise BadSearch(f"{name}: {alternatives[0]!r} is not a date such as ge2026-12-01")
        prefix = match["prefix"] or "eq"
        if prefix not in ("eq", "lt", "gt", "le", "ge"):
            raise BadSearch(f"{name}: the prefix {prefix} is not supported (eq, lt, le, gt, ge)")
        result += _compare(prefix, _moment(match["value"], name))
    return result


def _moment(text: str, name: str) -> dt.datetime | dt.date:
    try:
        if "T" not in text:
            return dt.date.fromisoformat(text) if len(text) == 10 else _bad_date(text, name)
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _bad_date(text, name)
    if moment.tzinfo is None:
        raise BadSearch(f"{name}: a time needs a UTC offset, e.g. {text}+01:00 or {text}Z")
    if not dt.date(1900, 1, 1) <= moment.date() <= dt.date(2999, 12, 31):
        raise BadSearch(f"{name}: dates from 1900 to 2999")
    return moment


def _bad_date(text: str, name: str) -> dt.date:
    raise BadSearch(f"{name}: {text!r} is not a date (YYYY-MM-DD) or an instant with offset")


def _compare(prefix: str, value: dt.datetime | dt.date) -> list[Comparison]:
    if isinstance(value, dt.datetime):
        if prefix == "eq":
            return [Comparison(">=", value), Comparison("<=", value)]
        op = {"lt": "<", "gt": ">", "le": "<=", "ge": ">="}[prefix]
        return [Comparison(op, value)]
    if not dt.date(1900, 1, 1) <= value <= dt.date(2999, 12, 31):
        raise BadSearch("dates from 1900 to 2999")
    first, after = LocalDay(value, False), LocalDay(value, True)
    return {
        "eq": [Comparison(">=", first), Comparison("<", after)],
        "ge": [Comparison(">=", first)],
        "gt": [Comparison(">=", after)],
        "lt": [Comparison("<", first)],
        "le": [Comparison("<", after)],
    }[prefix]


def resolve(moment: dt.datetime | LocalDay, timezone: str) -> dt.datetime:
    """A comparison's moment as an instant, days read in the clinic's time zone."""
    if isinstance(moment, dt.datetime):
        return moment
    day = moment.day + dt.timedelta(days=1) if moment.end else moment.day
    return dt.datetime.combine(day, dt.time(), tzinfo=ZoneInfo(timezone)).astimezone(dt.UTC)


def window(
    comparisons: Sequence[Comparison], timezone: str
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The half-open span [lo, hi) of instants the comparisons allow (None: unbounded)."""
    lo: dt.datetime | None = None
    hi: dt.datetime | None = None
    step = dt.timedelta(microseconds=1)
    for op, moment in comparisons:
        at = resolve(moment, timezone)
        if op in (">=", ">"):
            bound = at + step if op == ">" else at
            lo = bound if lo is None else max(lo, bound)
        else:
            bound = at + step if op == "<=" else at
            hi = bound if hi is None else min(hi, bound)
    return lo, hi
