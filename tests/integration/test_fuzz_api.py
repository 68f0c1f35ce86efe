"""Schemathesis over the whole JSON API as anonymous, patient, desk, doctor and admin,
against a real server (rate limits off): no input may get a 5xx, and every answer must be
one the OpenAPI document describes (its status code, content type and body schema).

A second run generates only input the schema calls valid (schemathesis' positive mode):
it must be accepted, or refused by the state of things (no such object, a taken slot, the
caller's role), never for its form: the schema says every rule the API holds input to.

Bounded and derandomized: the same examples every run, a few per operation and role, so
a failure reproduces and the module stays within a few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import re
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.pytest import _test_builder
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.transport.requests import ManagedCookiesSession

from app.redis import create_redis
from app.settings import get_settings
from app.web.asgi import create_app
from conftest import LiveServer, empty_data_tables
from db.session import create_engine, session_factory
from tests.integration.world import World, make_world

CHECKS = (
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
)
PUBLIC_PATHS = {
    "/api/auth/register",
    "/api/auth/token",
    "/api/auth/refresh",
    "/api/auth/revoke",
    "/api/auth/password-reset",
    "/api/auth/password-reset/confirm",
}
ROLES = ("anonymous", "patient0", "desk", "doctor", "admin")
EXAMPLES_PER_OPERATION = 3  # any input, valid or not
POSITIVE_EXAMPLES_PER_OPERATION = 3  # input the schema calls valid
NO_LIMITS = {
    "RATE_LIMIT_AUTH_PER_MINUTE": "0",
    "RATE_LIMIT_ANONYMOUS_PER_MINUTE": "0",
    "RATE_LIMIT_USER_PER_MINUTE": "0",
    "LOGIN_MAX_FAILURES": "1000000",  # wrong passwords are most of what a fuzzer sends
}


def bounded(examples: int) -> settings:
    """The same examples every run (a failure reproduces), `examples` per operation."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


async def _fresh_world(app_settings) -> World:
    """Empty tables and an empty Redis database (an earlier test's cached users, whose ids
    the new world reuses, would otherwise sign this world's tokens in as them), then the
    world."""
    redis = create_redis(app_settings)
    try:
        await redis.flushdb()
    finally:
        await redis.aclose()
    engine = create_engine(app_settings, application_name="medbook-fuzz")
    try:
        async with engine.begin() as conn:
            await empty_data_tables(conn)
        async with session_factory(engine)() as session:
            return await make_world(session, app_settings.secret_key, patients=2)
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def fuzz_world(settings) -> World:
    return asyncio.run(_fresh_world(settings))


@pytest.fixture(scope="module")
def fuzz_server(fuzz_world) -> Iterator[LiveServer]:
    server = LiveServer(env=NO_LIMITS)
    try:
        yield server
    finally:
        server.stop()


# Schemathesis builds each operation's test when it collects it: its coverage cases (every
# value of every enum, such as the clinic's time zone, for every operation) cost about
# half of a test process's collection CPU, and pytest-xdist collects every test in every
# worker though each runs only its share. So each test is collected with its signature
# only and built, with the same arguments, when it runs (`_built_when_run`).
_build_operation_test = _test_builder.build_operation_test


def _built_later(**arguments):
    test = inspect.signature(arguments["test_func"])
    fixtures = [p for p in test.parameters.values() if p.name != "case"]  # `case` is given

    def not_built(**_fixtures):
        raise AssertionError("a schemathesis test ran unbuilt; see _built_when_run")

    not_built.__signature__ = test.replace(parameters=fixtures)  # type: ignore[attr-defined]
    not_built.build_schemathesis_test = lambda: _build_operation_test(**arguments)  # type: ignore[attr-defined]
    return not_built


_test_builder.build_operation_test = _built_later  # type: ignore[assignment]


@pytest.fixture(autouse=True)
def _built_when_run(request) -> None:
    build = getattr(request.node.obj, "build_schemathesis_test", None)
    if build is not None:
        request.node.obj = build()


# The document the server serves, read from an app built at collection time (building
# one connects to nothing), so every operation is its own test.
DOCUMENT = create_app(get_settings()).openapi_schema.to_schema()

# The zones the fuzzer sends as a clinic's time zone: the clinic's schema lists every IANA
# zone of the machine (some 600), and schemathesis' coverage phase sends one request per
# listed value, per role and per test, which was a quarter of the module's requests, all
# through the same code (a name looked up in the zone database). These few stand for them:
# UTC, the clinics' own, half- and quarter-hour offsets, the date line and odd DST rules.
# Everything else the fuzzer does to the field (wrong types, strings that are no zone) is
# unchanged; test_bad_input.py holds the API to exactly the served list.
FUZZED_ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/St_Johns",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Pacific/Kiritimati",
    "Etc/GMT+12",
]


def _fuzzed(document: dict) -> dict:
    """`document` with the clinic's time zones narrowed to FUZZED_ZONES."""
    fuzzed = copy.deepcopy(document)
    zone = fuzzed["components"]["schemas"]["ClinicIn"]["properties"]["timezone"]
    assert set(FUZZED_ZONES) < set(zone["enum"]), "a fuzzed zone the API does not list"
    zone["enum"] = FUZZED_ZONES
    return fuzzed


FUZZED_DOCUMENT = _fuzzed(DOCUMENT)
api = schemathesis.openapi.from_dict(FUZZED_DOCUMENT)


@pytest.fixture(scope="module")
def role_headers(fuzz_world) -> dict[str, dict[str, str]]:
    return {role: {} if role == "anonymous" else fuzz_world.headers(role) for role in ROLES}


@pytest.fixture(scope="module")
def http() -> Iterator[ManagedCookiesSession]:
    """One HTTP session for the module's requests (some 300 a test): its connections to the
    server are kept open between requests, where schemathesis would open one a request.
    What a response sets as a cookie is dropped after each request, as schemathesis's own
    session does, so no request is sent with another's cookies. The environment's proxy and
    netrc settings are not read: the server is local, and requests reads them again for
    every request (some tens of thousands in the module), a large share of the test
    process's CPU."""
    with ManagedCookiesSession() as session:
        session.trust_env = False
        yield session


@api.parametrize()
@bounded(EXAMPLES_PER_OPERATION)
def test_no_input_gets_a_5xx_or_an_undocumented_answer(case, fuzz_server, role_headers, http):
    """Each generated request is sent once per role (the same input, every audience)."""
    for headers in role_headers.values():
        response = case.call(base_url=fuzz_server.url, headers=headers, session=http, timeout=30)
        case.validate_response(response, checks=CHECKS)


# Positive data only: requests the schema calls valid (no NUL character: the API refuses
# it everywhere, a rule the 400 answer of every operation states, not each string's schema).
accepting = schemathesis.openapi.from_dict(FUZZED_DOCUMENT)
accepting.config.generation.update(modes=[GenerationMode.POSITIVE], allow_x00=False)
# A valid request may still meet the state of things: no such object (404), a slot or name
# taken or leave already over (409), a role or a signed-out caller (401, 403); and 422 for a
# rule no schema can hold, each matched by its detail here. A 400 never: that answer means
# the request broke the schema, and this one did not.
BY_STATE = {401, 403, 404, 409, 415}
RULES_NO_SCHEMA_HOLDS = re.compile(
    "|".join(
        (
            r"must not be after|must be after|is before",  # one field against another
            r"in the past|minutes' notice|days ahead|must not be in the future",  # now
            r"slot grid|not available then|not taking appointments|shorter than one slot",
            r"overlap|covers at most \d+ days",
            r"most common ones|a common one|name part of the email",  # the password lists
            r"must include a UTC offset",  # date-time with a zone is the schema's format
            r"does not exist|needs an existing",  # an id in a body naming nothing
            r"is required when staff book|patient_id",  # who books for whom (the role)
            r"cannot be rescheduled|cannot be set|not allowed|cannot go from",  # status rules
            r"at most \d+ future appointments",  # the per-doctor limit (state)
            r"export|clinic",  # which clinic a report or export may cover (the role)
            r"second factor is for staff",  # the account's role
            r"cursor is not one this API returned",  # a cursor is the API's own token
            r"give either status or start",  # one field or the other
            r"give doctor_id with visit_type_id",  # a visit type needs its doctor
            r"give either doctor_id, or clinic_id",  # whom a waitlist entry waits for
            r"range is already over|range must start within",  # a waitlist range and now
            r"give the patient's number",  # staff add a patient to the waitlist (the role)
            r"at most \d+ entries at once",  # the waitlist limit (state)
            r"reset link is invalid or has expired",  # a token the API issued
            r"the file is empty|give a title",  # the upload's content (415: its type)
            r"add a mobile number",  # SMS chosen by a patient with no number on file
            r"no email address to send to",  # e-mail chosen with no address on file
            r"cannot demote or deactivate themselves",  # which account the admin is
        )
    )
)


@accepting.parametrize()
@bounded(POSITIVE_EXAMPLES_PER_OPERATION)
def test_input_the_schema_calls_valid_is_accepted(case, fuzz_server, role_headers, http):
    """Each request the schema calls valid, once per role: a success or a refusal by the
    state of things, never a 400 (or a 422 for a rule the schema could have said)."""
    refused = []
    for role, headers in role_headers.items():
        response = case.call(base_url=fuzz_server.url, headers=headers, session=http, timeout=30)
        case.validate_response(response, checks=CHECKS)
        code = response.status_code
        if code < 300 or code in BY_STATE:
            continue
        detail = response.json().get("detail", "") if code == 422 else ""
        if code == 422 and RULES_NO_SCHEMA_HOLDS.search(detail):
            continue
        refused.append(f"{role}: {code} {response.text[:300]}")
    assert refused == [], f"{case.method} {case.formatted_path}\n{case.body!r}\n" + "\n".join(
        refused
    )


def test_every_operation_lists_the_refusals_every_route_can_give():
    """Malformed input, a bad token, the rate limit and an outage can meet any route; a
    guarded one also a role it does not admit; an id in the path may name nothing."""
    missing = []
    for path, operations in DOCUMENT["paths"].items():
        if path.startswith("/health/"):
            continue  # probes: no credentials, no rate limit, no input
        for method, operation in operations.items():
            codes = set(operation["responses"])
            expected = {"400", "401", "429", "503"}
            if operation.get("security") or path not in PUBLIC_PATHS:
                expected.add("403")
            if "{" in path:
                expected.add("404")
            if not expected <= codes:
                missing.append(f"{method.upper()} {path}: {sorted(expected - codes)}")
    assert missing == []


def test_ids_are_bounded_to_bigint_in_the_schema():
    for path, operations in DOCUMENT["paths"].items():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                schema = parameter["schema"]
                if parameter["name"].endswith("_id") and schema.get("type") == "integer":
                    assert (schema["minimum"], schema["maximum"]) == (1, 2**63 - 1), path
