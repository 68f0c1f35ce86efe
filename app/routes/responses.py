"""What each kind of API route can answer besides its success, for the OpenAPI document
(`responses=` on the route). tests/integration/test_fuzz_api.py fails on an answer a
route's table does not list."""

from __future__ import annotations

import msgspec
from litestar.openapi.datastructures import ResponseSpec


class ErrorOut(msgspec.Struct):
    """Every error answer: `{status_code, detail}`, some with more (`extra`, `alternatives`)."""

    status_code: int
    detail: str


def error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorOut, description=description, generate_examples=False)


MEANINGS = {
    400: "a request that does not parse or breaks the schema: a wrong type, an id beyond "
    "2^63-1, a NUL character, JSON nested too deep",
    401: "not signed in, or the bearer token is invalid or expired",
    403: "signed in, but this role (or this user) may not do this",
    404: "no such object, or one the caller may not see (both read alike)",
    413: "the upload is larger than the limit",
    409: "the slot was taken meanwhile; `alternatives` lists the nearest free ones",
    422: "well-formed, but the rules refuse it (the detail says which): a day outside "
    "1900-01-01..2999-12-31, a time off the slot grid, a transition not allowed, ...",
    429: "too many requests; `Retry-After` says when to try again",
    503: "PostgreSQL or Redis is briefly unavailable or the server is at capacity; "
    "`Retry-After` says when to try again",
}


def answers(*codes: int, **meanings: str) -> dict[int, ResponseSpec]:
    """The error answers `codes`, each with its usual meaning or the one given as
    `_404="..."` (keyword: an underscore and the code)."""
    return {code: error(meanings.get(f"_{code}", MEANINGS[code])) for code in sorted(set(codes))}


# Every route can meet a malformed request, an invalid bearer token, the rate limit and an
# outage; a guarded one also a role it does not admit.
ANY_ROUTE = (400, 401, 429, 503)
SIGNED_IN = (*ANY_ROUTE, 403)
# The tables by kind of route: what it reads or changes, and whether it names an object.
PUBLIC = answers(*ANY_ROUTE)
READ = answers(*SIGNED_IN)
BY_ID = answers(*SIGNED_IN, 404)
RULES = answers(*SIGNED_IN, 422)
BY_ID_RULES = answers(*SIGNED_IN, 404, 422)
BOOKING = answers(*SIGNED_IN, 404, 409, 422)
