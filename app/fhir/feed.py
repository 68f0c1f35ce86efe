"""The SMART Scheduling Links bulk feed: a `$bulk-publish` manifest with NDJSON files of
Location, Schedule and Slot, for portals that discover free times in bulk
(https://github.com/smart-on-fhir/smart-scheduling-links, specification.md).

Made by a SAQ job (tasks/fhir_feed.py) every few minutes, never on request: the slots are
read through the same availability cache as the pages (`SlotCache`), laid out for the
next `FEED_DAYS` days, and only free ones are published (the specification lets a
publisher leave busy slots out; a portal wants what can be booked). Each run writes a new
generation of files into the export store (S3 or disk) under `fhir-feed/{generation}/`,
then the manifest that names them, then deletes generations older than the one before:
a portal that read the previous manifest a moment ago still finds its files.

The feed holds no patient data: clinics, doctors' calendars and free times, as the public
pages show them, so the manifest and its files are public (docs/security.md).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from botocore.exceptions import ClientError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.appointments.rules import BookingRules
from app.errors import NotFound
from app.fhir import resources
from app.fhir.scheduling import doctors_slots
from app.fhir.search import Comparison
from app.scheduling.slots import SlotCache
from app.storage import Store
from db.models import Clinic, Doctor

FEED_DAYS = 28
PREFIX = "fhir-feed/"
MANIFEST_KEY = f"{PREFIX}manifest.json"
NDJSON = "application/fhir+ndjson"
# SMART Scheduling Links' extension: where a person books this slot.
DEEP_LINK = "http://fhir-registry.smarthealthit.org/StructureDefinition/booking-deep-link"
_FILE = re.compile(r"\d{1,20}/(location|schedule|slot-\d{1,19})\.ndjson")


@dataclass(frozen=True, slots=True)
class FeedFile:
    name: str  # e.g. slot-3 (the Slot file of clinic 3): storage keys are lower case
    resource_type: str
    body: bytes


def _ndjson(rows: Sequence[dict]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)


def feed_schedule(doctor: Doctor, clinic: Clinic) -> dict:
    """A doctor's Schedule as the feed lists it: its actor is the Location (the
    specification's rule), the specialty as its service type."""
    return {
        "resourceType": "Schedule",
        "id": str(doctor.id),
        "serviceType": [{"text": doctor.specialty}],
        "actor": [resources.ref("Location", clinic.id, clinic.name)],
    }


async def build(
    session: AsyncSession,
    cache: SlotCache,
    *,
    rules: BookingRules,
    now: dt.datetime,
    public_origin: str,
) -> list[FeedFile]:
    """The feed's files: every clinic, every active doctor's Schedule, and one Slot file
    per clinic with its doctors' free slots of the next `FEED_DAYS` days."""
    clinics = list(await session.scalars(select(Clinic).order_by(Clinic.id)))
    doctors = list(
        await session.scalars(select(Doctor).where(Doctor.active.is_(True)).order_by(Doctor.id))
    )
    # The reads are done: end their transaction before the slots of every doctor (seconds
    # of work on other connections), which left it idle past the idle-in-transaction
    # timeout, so the connection was closed and the job failed and ran again.
    await session.commit()
    by_id = {c.id: c for c in clinics}
    files = [
        FeedFile("location", "Location", _ndjson([resources.location(c) for c in clinics])),
        FeedFile(
            "schedule",
            "Schedule",
            _ndjson([feed_schedule(d, by_id[d.clinic_id]) for d in doctors]),
        ),
    ]
    origin = public_origin.rstrip("/")
    span = [Comparison(">=", now), Comparison("<", now + dt.timedelta(days=FEED_DAYS))]
    clinic_of = {d.id: d.clinic_id for d in doctors}
    per_clinic: dict[int, list[dict]] = {c.id: [] for c in clinics}
    for found in await doctors_slots(cache, list(clinic_of), span, rules, now):
        if found.status != "free":
            continue
        s, doctor_id = found.slot, found.doctor_id
        day = s.start_local[:10]  # the clinic's calendar day: the slot page's `date`
        link = {"url": DEEP_LINK, "valueUrl": f"{origin}/doctors/{doctor_id}/slots?date={day}"}
        per_clinic[clinic_of[doctor_id]].append(
            {
                **resources.slot(doctor_id, s.starts, s.start_local, s.end_local, "free"),
                "extension": [link],
            }
        )
    for clinic_id, rows in per_clinic.items():
        rows.sort(key=lambda r: (r["start"], r["id"]))
        files.append(FeedFile(f"slot-{clinic_id}", "Slot", _ndjson(rows)))
    return files


async def publish(store: Store, files: Sequence[FeedFile], *, now: dt.datetime, base: str) -> dict:
    """Store a generation of files, then the manifest naming them, then forget
    generations before the previous one.

    Args:
        base: the FHIR base URL the files are served under (`{base}/$bulk-publish/...`).

    Returns:
        The manifest.
    """
    generation = str(int(now.timestamp() * 1000))
    for file in files:
        await store.put(f"{PREFIX}{generation}/{file.name}.ndjson", file.body, NDJSON)
    manifest = {
        "transactionTime": now.astimezone(dt.UTC).replace(microsecond=0).isoformat(),
        "request": f"{base}/$bulk-publish",
        "output": [
            {"type": f.resource_type, "url": f"{base}/$bulk-publish/{generation}/{f.name}.ndjson"}
            for f in files
        ],
        "error": [],
    }
    previous = await _generation(store)
    await store.put(MANIFEST_KEY, json.dumps(manifest).encode(), "application/json")
    keep = {generation, previous}
    for key, _ in await store.keys(PREFIX):
        part = key[len(PREFIX) :].split("/", 1)[0]
        if key != MANIFEST_KEY and part not in keep:
            await store.delete(key)
    return manifest


async def _stored(store: Store, key: str) -> bytes | None:
    """The stored bytes, or None when the key is not stored (on disk or in S3)."""
    try:
        return await store.get(key)
    except FileNotFoundError:
        return None
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise


async def _generation(store: Store) -> str | None:
    raw = await _stored(store, MANIFEST_KEY)
    if raw is None:
        return None
    outputs = json.loads(raw).get("output") or [{}]
    url = str(outputs[0].get("url", ""))
    return url.rsplit("/$bulk-publish/", 1)[-1].split("/", 1)[0] or None


async def manifest(store: Store) -> bytes:
    """The published manifest.

    Raises:
        NotFound: nothing published yet.
    """
    raw = await _stored(store, MANIFEST_KEY)
    if raw is None:
        raise NotFound("the feed has not been published yet; try again in a few minutes")
    return raw


async def feed_file(store: Store, path: str) -> bytes:
    """One NDJSON file of a generation, `{generation}/{name}.ndjson`.

    Raises:
        NotFound: no such file (an unknown name, or a generation already replaced twice).
    """
    raw = await _stored(store, f"{PREFIX}{path}") if _FILE.fullmatch(path) else None
    if raw is None:
        raise NotFound(f"no feed file {path}: read the manifest again")
    return raw
