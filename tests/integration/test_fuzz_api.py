"""Schemathesis over the whole JSON API as anonymous, patient, desk, doctor and admin,
against a real server (rate limits off): no input may get a 5xx, and every answer must be
one the OpenAPI document describes (its status code, content type and body schema).

Bounded and derandomized: the same examples every run, a few per operation and role, so
a failure reproduces and the module stays within about two minutes on two cores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from app.settings import get_settings
from app.web.asgi import create_app
from conftest import ALLOW_AUDIT_TRUNCATE, DATA_TABLES, LiveServer
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
EXAMPLES_PER_OPERATION = 5
NO_LIMITS = {
    "RATE_LIMIT_AUTH_PER_MINUTE": "0",
    "RATE_LIMIT_ANONYMOUS_PER_MINUTE": "0",
    "RATE_LIMIT_USER_PER_MINUTE": "0",
}


async def _fresh_world(app_settings) -> World:
    engine = create_engine(app_settings, application_name="medbook-fuzz")
    try:
        async with engine.begin() as conn:
            await conn.execute(text(ALLOW_AUDIT_TRUNCATE))
            await conn.execute(text(f"TRUNCATE {DATA_TABLES} RESTART IDENTITY CASCADE"))
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


# The document the server serves, read from an app built at collection time (building
# one connects to nothing), so every operation is its own test.
DOCUMENT = create_app(get_settings()).openapi_schema.to_schema()
api = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def role_headers(fuzz_world) -> dict[str, dict[str, str]]:
    return {role: {} if role == "anonymous" else fuzz_world.headers(role) for role in ROLES}


@api.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_input_gets_a_5xx_or_an_undocumented_answer(case, fuzz_server, role_headers):
    """Each generated request is sent once per role (the same input, every audience)."""
    for headers in role_headers.values():
        response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)


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
