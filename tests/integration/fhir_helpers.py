"""Shared by the FHIR tests: calls that check the media type and validate every resource
against the R4B models of fhir.resources (the same as R4 for these resources)."""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

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
