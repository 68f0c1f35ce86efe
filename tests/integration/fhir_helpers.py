"""Shared by the FHIR tests: calls that check the media type and validate every resource
against the R4B models of fhir.resources (the same as R4 for these resources)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from app.analytics.exports import export_store
from app.fhir import feed
from app.scheduling.slots import SlotCache
from db.session import session_factory

FHIR_JSON = "application/fhir+json"


def conforms(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate a resource (a Bundle's entries too) and check it survives a round trip."""
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert json.loads(model.model_dump_json()) == resource
    for entry in resource.get("entry", []):
        conforms(entry["resource"])
    return resource


async def fhir_call(client, method, path, headers, *, status=200, **kwargs) -> dict[str, Any]:
    """A FHIR call that must answer `status` with a valid resource (OperationOutcome on
    errors) in application/fhir+json."""
    answer = await client.request(method, f"/fhir/R4/{path}", headers=headers, **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith(FHIR_JSON), answer.headers
    body = answer.json()
    if status >= 400:
        assert body["resourceType"] == "OperationOutcome", body
    return conforms(body)


def resources_of(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


async def api_book(client, world, who, start, **extra) -> int:
    """Book through the JSON API (the pages' engine); the new appointment's id."""
    body = {"doctor_id": world.doctor_id, "start": start.isoformat(), **extra}
    answer = await client.post("/api/appointments", json=body, headers=world.headers(who))
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@asynccontextmanager
async def feed_store(settings) -> AsyncIterator[Any]:
    """The export store the bulk feed is published into, without feeds before or after."""
    store = export_store(settings)

    async def clear():
        for key, _ in await store.keys(feed.PREFIX):
            await store.delete(key)

    await clear()
    try:
        yield store
    finally:
        await clear()


def job_context(settings, engine, redis, store) -> dict[str, Any]:
    """What the worker hands the feed job (tasks/worker.py), built from the test's parts."""
    services = SimpleNamespace(slot_cache=SlotCache(redis, engine), exports=store)
    return {"services": services, "settings": settings, "sessions": session_factory(engine)}
