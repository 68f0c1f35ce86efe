"""The CapabilityStatement (`GET /fhir/R4/metadata`), built from the same tables the
search parser reads (app/fhir/search.py), so it lists exactly what is served. Pure."""

from __future__ import annotations

from app.fhir.resources import Resource
from app.fhir.search import FIND_PARAMS, INCLUDES, SEARCH_PARAMS, Param

FHIR_VERSION = "4.0.1"
# Which interactions each type has: every type is read and searched; Appointment is also
# patched (status changes: cancel, check in, ...). Operations are listed on their type.
PATCHED = frozenset({"Appointment"})
OPERATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "Appointment": (
        ("find", "free slots as proposed Appointments (GET)"),
        ("hold", "hold a proposed Appointment for a patient until it lapses (POST)"),
        ("book", "book a proposed Appointment, a free slot or a hold (POST)"),
    ),
}


def _param(p: Param) -> dict[str, str]:
    return {"name": p.name, "type": p.type, "documentation": p.documentation}


def capability_statement(base: str, software_version: str, date: str) -> Resource:
    """What this server does, for `base` (its FHIR base URL)."""
    kinds = []
    for resource_type, params in SEARCH_PARAMS.items():
        interactions = [{"code": "read"}, {"code": "search-type"}]
        if resource_type in PATCHED:
            interactions.append({"code": "patch"})
        kind: Resource = {
            "type": resource_type,
            "interaction": interactions,
            "versioning": "no-version",
            "readHistory": False,
            "updateCreate": False,
            "searchParam": [_param(p) for p in params],
        }
        if resource_type in INCLUDES:
            kind["searchInclude"] = list(INCLUDES[resource_type])
        if resource_type in OPERATIONS:
            kind["operation"] = [
                {
                    "name": name,
                    "definition": f"{base}/OperationDefinition/Appointment-{name}",
                    "documentation": documentation,
                }
                for name, documentation in OPERATIONS[resource_type]
            ]
        kinds.append(kind)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "publisher": "medbook",
        "kind": "instance",
        "software": {"name": "medbook", "version": software_version},
        "implementation": {"description": "medbook scheduling", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": ["json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Bearer tokens from POST /api/auth/token; unknown search parameters are "
                    "ignored unless Prefer: handling=strict. $find parameters: "
                    + ", ".join(p.name for p in FIND_PARAMS)
                ),
                "security": {
                    "cors": False,
                    "description": "OAuth2-style bearer access tokens (JWT) of medbook",
                },
                "resource": kinds,
                # SMART Scheduling Links: the manifest of the bulk slot feed (public).
                "operation": [
                    {
                        "name": "bulk-publish",
                        "definition": f"{base}/OperationDefinition/bulk-publish",
                        "documentation": "manifest of Location, Schedule and Slot NDJSON",
                    }
                ],
            }
        ],
    }
