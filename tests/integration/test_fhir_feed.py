"""The SMART Scheduling Links feed: the SAQ job publishes Location, Schedule and Slot
NDJSON and a $bulk-publish manifest, served publicly; free slots only, the availability
of the pages; generations replaced without pulling files from under a reader."""

import datetime as dt
import json
from urllib.parse import urlsplit

import pytest

from app.fhir import feed
from tasks.fhir_feed import publish_fhir_feed
from tests.integration.fhir_helpers import (
    api_book,
    conforms,
    feed_store,
    fhir_call,
    job_context,
    resources_of,
)
from tests.integration.world import at, day_after_tomorrow, make_world


@pytest.fixture
async def store(settings):
    async with feed_store(settings) as store:
        yield store


@pytest.fixture
async def world(client, session, settings, store):
    return await make_world(session, settings.secret_key, patients=1)


async def lines(client, url):
    answer = await client.get(urlsplit(url).path)  # no credentials: the feed is public
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(feed.NDJSON)
    return [conforms(json.loads(line)) for line in answer.text.splitlines()]


async def test_the_job_publishes_free_slots_and_a_manifest(
    client, world, settings, db, redis, store
):
    missing = await fhir_call(client, "GET", "$bulk-publish", {}, status=404)
    assert "not been published" in missing["issue"][0]["diagnostics"]
    day = day_after_tomorrow()
    taken = at(day, 10)
    await api_book(client, world, "patient0", taken)
    result = await publish_fhir_feed(job_context(settings, db, redis, store))
    answer = await client.get("/fhir/R4/$bulk-publish")
    assert answer.status_code == 200
    manifest = answer.json()
    assert result["files"] == len(manifest["output"]) == 4  # Location, Schedule, 2 clinics' Slots
    by_type: dict[str, list] = {}
    for output in manifest["output"]:
        by_type.setdefault(output["type"], []).extend(await lines(client, output["url"]))
    assert {r["id"] for r in by_type["Location"]} == {
        str(world.clinic_id),
        str(world.other_clinic_id),
    }
    schedules = {r["id"]: r for r in by_type["Schedule"]}
    assert schedules[str(world.doctor_id)]["actor"][0]["reference"] == f"Location/{world.clinic_id}"
    slots = [
        s for s in by_type["Slot"] if s["schedule"]["reference"] == f"Schedule/{world.doctor_id}"
    ]
    assert all(s["status"] == "free" for s in slots)
    starts = {s["start"] for s in slots}
    assert taken.isoformat() not in starts
    # The same free slots as the API's Slot search for that day.
    search = await fhir_call(
        client,
        "GET",
        "Slot",
        world.headers("patient0"),
        params={
            "schedule": f"Schedule/{world.doctor_id}",
            "start": [f"ge{day}", f"lt{day + dt.timedelta(days=1)}"],
            "status": "free",
        },
    )
    day_starts = {s["start"] for s in resources_of(search)}
    assert len(day_starts) == 23 and day_starts <= starts
    link = slots[0]["extension"][0]
    assert (
        link["url"] == feed.DEEP_LINK
        and f"/doctors/{world.doctor_id}/slots?date=" in link["valueUrl"]
    )


async def test_a_new_generation_keeps_the_previous_one(client, world, settings, db, redis, store):
    ctx = job_context(settings, db, redis, store)
    urls = []
    for _ in range(3):
        await publish_fhir_feed(ctx)
        urls.append((await client.get("/fhir/R4/$bulk-publish")).json()["output"][0]["url"])
    assert len(set(urls)) == 3
    assert (await client.get(urlsplit(urls[2]).path)).status_code == 200
    assert (await client.get(urlsplit(urls[1]).path)).status_code == 200  # read a moment ago
    gone = await client.get(urlsplit(urls[0]).path)
    assert gone.status_code == 404 and gone.json()["resourceType"] == "OperationOutcome"
    generation = urlsplit(urls[2]).path.split("/")[-2]
    for name in ("manifest.json", "secrets.ndjson", "location.pdf"):
        await fhir_call(client, "GET", f"$bulk-publish/{generation}/{name}", {}, status=404)


async def test_the_job_holds_no_transaction_while_it_builds_the_slots(
    world, settings, db, redis, store, monkeypatch
):
    """The build's slots take seconds at scale (every doctor, 28 days, a cold cache): a
    transaction left open over them sat idle past the idle-in-transaction timeout, the
    connection was closed and the job failed (and ran again)."""
    ctx = job_context(settings, db, redis, store)
    opened = []

    def sessions():
        session = job_context(settings, db, redis, store)["sessions"]()
        opened.append(session)
        return session

    ctx["sessions"] = sessions
    seen = []
    build_slots = feed.doctors_slots

    async def watched(*args, **kwargs):
        seen.append([s.in_transaction() for s in opened])
        return await build_slots(*args, **kwargs)

    monkeypatch.setattr(feed, "doctors_slots", watched)
    result = await publish_fhir_feed(ctx)
    assert result["resources"] > 0
    assert seen == [[False]]
