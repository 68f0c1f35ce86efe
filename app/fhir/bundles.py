"""Search result Bundles with their paging links, and OperationOutcome errors. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from app.fhir.resources import Resource
from app.fhir.search import Search

BASE_PATH = "/fhir/R4"


def base_url(public_origin: str) -> str:
    """The FHIR base URL of a site, e.g. https://clinic.example/fhir/R4."""
    return public_origin.rstrip("/") + BASE_PATH


# The OperationOutcome issue code for each HTTP status an error can have.
ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    413: "too-costly",
    415: "not-supported",
    422: "business-rule",
    429: "throttled",
    503: "transient",
}


def outcome(
    status: int, diagnostics: str, information: Sequence[str] = (), code: str | None = None
) -> Resource:
    """An OperationOutcome with one error (a fatal one for 5xx) and optional notes."""
    issues: list[dict[str, Any]] = [
        {
            "severity": "fatal" if status >= 500 else "error",
            "code": code or ISSUE_CODES.get(status, "exception" if status >= 500 else "invalid"),
            "diagnostics": diagnostics,
        }
    ]
    issues += [
        {"severity": "information", "code": "informational", "diagnostics": note}
        for note in information
    ]
    return {"resourceType": "OperationOutcome", "issue": issues}


def searchset(
    base: str,
    path: str,
    search: Search,
    matches: Sequence[Resource],
    *,
    more: bool,
    total: int | None = None,
    included: Sequence[Resource] = (),
) -> Resource:
    """A `searchset` Bundle of one page.

    Args:
        base: the server's base URL, e.g. https://clinic.example/fhir/R4.
        path: what was searched, e.g. `Slot` or `Appointment/$find`.
        search: the parsed search (its used parameters make the links).
        matches: this page's resources.
        more: whether a next page exists.
        total: the number of matches, when known cheaply.
        included: resources `_include` brought (each once).
    """
    links = [{"relation": "self", "url": _page_url(base, path, search, search.offset)}]
    # `_count=0` asks only how many match (`total`): no page follows another.
    more = more and search.count > 0
    if more:
        links.append(
            {"relation": "next", "url": _page_url(base, path, search, search.offset + search.count)}
        )
    if search.offset > 0 and search.count > 0:
        previous = max(0, search.offset - search.count)
        links.append({"relation": "previous", "url": _page_url(base, path, search, previous)})
    entries = [_entry(base, r, "match") for r in matches]
    entries += [_entry(base, r, "include") for r in included]
    bundle: Resource = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle


def _entry(base: str, resource: Resource, mode: str) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if "id" in resource:  # a proposed appointment ($find) has none yet
        entry["fullUrl"] = f"{base}/{resource['resourceType']}/{resource['id']}"
    entry["resource"] = resource
    entry["search"] = {"mode": mode}
    return entry


def _page_url(base: str, path: str, search: Search, offset: int) -> str:
    pairs = [(k, v) for k, v in search.used if k not in ("_count", "_offset")]
    pairs.append(("_count", str(search.count)))
    if offset:
        pairs.append(("_offset", str(offset)))
    return f"{base}/{path}?{urlencode(pairs)}"
