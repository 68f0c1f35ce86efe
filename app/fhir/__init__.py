"""FHIR R4 scheduling API: medbook's doctors, clinics, slots and appointments as FHIR
resources (docs/fhir.md). Pure mapping and search parsing, plus reads over the request's
session; no Litestar (app/routes/fhir.py is the web side)."""
