"""`/schema` documents issue 18's contract (../shared/DESIGN.md): visit types, the
waitlist and offers, every endpoint with its parameters, its body and its answer's fields."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_request_schema import DOCUMENT

VISIT_TYPE = {"id", "name", "minutes", "buffer_before_minutes", "buffer_after_minutes", "online"}
OFFER = {"id", "doctor_id", "start", "end", "expires_at", "status"}
WAITLIST_IN = {"doctor_id", "clinic_id", "specialty", "visit_type_id", "from", "to"}
WAITLIST_IN |= {"earliest", "latest", "weekdays", "patient_id"}


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return DOCUMENT["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def answer(path: str, method: str, status: str) -> dict[str, Any]:
    content = DOCUMENT["paths"][path][method]["responses"][status]["content"]
    return resolve(content["application/json"]["schema"])


def body(path: str, method: str) -> dict[str, Any]:
    content = DOCUMENT["paths"][path][method]["requestBody"]["content"]
    return resolve(content["application/json"]["schema"])


@pytest.mark.parametrize(
    ("path", "methods"),
    [
        ("/api/doctors/{doctor_id}/visit-types", {"get", "post"}),
        ("/api/doctors/{doctor_id}/visit-types/{visit_type_id}", {"patch", "delete"}),
        ("/api/appointments/available-slots", {"get"}),
        ("/api/appointments", {"get", "post"}),
        ("/api/waitlist", {"get", "post"}),
        ("/api/waitlist/{entry_id}", {"delete"}),
        ("/api/offers", {"get"}),
        ("/api/offers/{offer_id}/accept", {"post"}),
        ("/api/offers/{offer_id}/decline", {"post"}),
    ],
)
def test_every_endpoint_is_documented(path, methods):
    assert methods <= set(DOCUMENT["paths"][path])


def test_the_answers_name_the_contracts_fields():
    listed = answer("/api/doctors/{doctor_id}/visit-types", "get", "200")
    assert set(resolve(listed["items"])["properties"]) >= VISIT_TYPE
    created = answer("/api/doctors/{doctor_id}/visit-types", "post", "201")
    assert set(created["properties"]) >= VISIT_TYPE
    offers = answer("/api/offers", "get", "200")
    offer = resolve(offers["properties"]["items"]["items"])
    assert OFFER <= set(offer["properties"]) <= set(offer["required"])
    assert offer["properties"]["status"]["enum"] == ["open", "accepted", "declined", "expired"]
    assert {"visit_type_id", "visit_type_name"} <= set(offer["properties"])  # additive
    entry = answer("/api/waitlist", "post", "201")
    assert {"id", "status", *WAITLIST_IN} <= set(entry["properties"])
    waiting = resolve(answer("/api/waitlist", "get", "200")["properties"]["items"]["items"])
    assert waiting == entry
    for path in ("/api/offers/{offer_id}/accept", "/api/offers/{offer_id}/decline"):
        assert {"409", "404"} <= set(DOCUMENT["paths"][path]["post"]["responses"])
    assert (
        "409"
        in DOCUMENT["paths"]["/api/doctors/{doctor_id}/visit-types/{visit_type_id}"]["delete"][
            "responses"
        ]
    )


def test_the_bodies_and_parameters_take_the_visit_type():
    assert set(body("/api/waitlist", "post")["properties"]) == WAITLIST_IN
    assert "visit_type_id" in body("/api/appointments", "post")["properties"]
    parameters = DOCUMENT["paths"]["/api/appointments/available-slots"]["get"]["parameters"]
    assert {"doctor_id", "date", "visit_type_id"} <= {p["name"] for p in parameters}
    assert VISIT_TYPE - {"id"} <= set(
        body("/api/doctors/{doctor_id}/visit-types", "post")["properties"]
    )
