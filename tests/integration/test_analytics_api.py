"""Reports over HTTP: who may see what, the numbers, the dashboard and its fragment."""

import datetime as dt
import re

import pytest
from sqlalchemy import text

from app.analytics import reports, rollups
from app.routes import api_analytics
from tests.integration.analytics_data import add_random_appointments, expected_rollups
from tests.integration.world import make_world

DAYS = [dt.date(2026, 5, 1) + dt.timedelta(days=i) for i in range(14)]
RANGE = {"from": "2026-05-01", "to": "2026-05-14"}


@pytest.fixture
async def world(client, session, settings, engine):
    world = await make_world(session, settings.secret_key, patients=5)
    await add_random_appointments(session, world, DAYS, seed=11)
    async with engine.begin() as conn:
        await rollups.refresh_days(conn, DAYS)
    return world


async def get(client, world, who, path, **params):
    return await client.get(path, params=RANGE | params, headers=world.headers(who))


async def test_no_shows_by_clinic_equal_the_direct_aggregate(client, world, session):
    daily, _ = await expected_rollups(session, DAYS)
    response = await get(client, world, "admin", "/api/analytics/no-shows", group_by="clinic")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["from"], body["to"], body["clinic_id"]) == ("2026-05-01", "2026-05-14", None)
    for row in body["rows"]:
        mine = [v for k, v in daily.items() if k[0] == row["key"]]
        no_show = sum(v["no_show"] for v in mine)
        attended = sum(v["checked_in"] + v["completed"] for v in mine)
        assert (row["no_show"], row["attended"]) == (no_show, attended)
        assert row["no_show_rate"] == round(no_show / (no_show + attended), 4)
    assert [r["label"] for r in body["rows"]] == ["Berlin", "New York"]
    assert body["total"]["no_show"] == sum(v["no_show"] for v in daily.values())


@pytest.mark.parametrize("group_by", ["doctor", "weekday", "hour", "lead_time"])
async def test_every_grouping_adds_up_to_the_same_total(client, world, group_by):
    by_clinic = (await get(client, world, "admin", "/api/analytics/no-shows")).json()["total"]
    body = (await get(client, world, "admin", "/api/analytics/no-shows", group_by=group_by)).json()
    assert body["group_by"] == group_by
    assert body["total"] | {"key": 0, "label": "all"} == by_clinic
    assert len(body["rows"]) > 1


async def test_popular_slots_and_utilisation(client, world, session):
    daily, buckets = await expected_rollups(session, DAYS)
    body = (
        await get(client, world, "admin", "/api/analytics/popular-slots", clinic_id=world.clinic_id)
    ).json()
    expected = [[0] * 24 for _ in range(7)]
    for (clinic, day, dimension, hour), v in buckets.items():
        if clinic == world.clinic_id and dimension == "hour":
            expected[day.weekday()][hour] += v["appointments"]
    assert body["bookings"] == expected
    assert body["max"] == max(map(max, expected)) > 0

    body = (
        await get(client, world, "admin", "/api/analytics/utilisation", clinic_id=world.clinic_id)
    ).json()
    assert body["by"] == "doctor"
    (row,) = body["rows"]
    assert row["available_minutes"] == 14 * 12 * 60  # 08:00-20:00 every day
    booked = sum(v["booked_minutes"] for k, v in daily.items() if k[0] == world.clinic_id)
    assert row["booked_minutes"] == booked
    assert row["utilisation"] == round(booked / (14 * 12 * 60), 4)
    everyone = (await get(client, world, "admin", "/api/analytics/utilisation")).json()
    assert everyone["by"] == "clinic" and len(everyone["rows"]) == 2


async def test_front_desk_sees_its_own_clinic_only(client, world):
    own = await get(client, world, "desk", "/api/analytics/utilisation")
    assert own.status_code == 200
    assert own.json()["clinic_id"] == world.clinic_id
    assert [r["key"] for r in own.json()["rows"]] == [world.doctor_id]
    other = await get(
        client, world, "desk", "/api/analytics/no-shows", clinic_id=world.other_clinic_id
    )
    assert other.status_code == 403
    assert "own clinic" in other.json()["detail"]
    for who in ("doctor", "patient0"):
        for path in ("/api/analytics/no-shows", "/api/analytics/popular-slots"):
            assert (await get(client, world, who, path)).status_code == 403


async def test_bad_parameters_are_4xx(client, world):
    reversed_range = await client.get(
        "/api/analytics/no-shows",
        params={"from": "2026-05-10", "to": "2026-05-01"},
        headers=world.headers("admin"),
    )
    assert reversed_range.status_code == 422
    unknown = await get(client, world, "admin", "/api/analytics/no-shows", group_by="moon")
    assert unknown.status_code == 422
    too_long = await client.get(
        "/api/analytics/utilisation",
        params={"from": "2020-01-01", "to": "2026-01-01"},
        headers=world.headers("admin"),
    )
    assert too_long.status_code == 422
    assert "at most 1100 days" in too_long.json()["detail"]
    # What does not parse is Litestar's 400, still JSON with a detail.
    for params in ({"from": "May 1st"}, {"clinic_id": "one"}):
        unparsable = await get(client, world, "admin", "/api/analytics/popular-slots", **params)
        assert unparsable.status_code == 400, unparsable.text
        assert unparsable.json()["status_code"] == 400 and unparsable.json()["detail"]


async def test_report_csv(client, world):
    response = await get(
        client, world, "admin", "/api/analytics/report.csv", report="no-shows", group_by="clinic"
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    lines = response.text.strip().split("\n")
    assert lines[0] == "clinic,label,appointments,attended,no_show,no_show_rate"
    assert [line.split(",")[1] for line in lines[1:]] == ["Berlin", "New York"]


async def test_openapi_documents_the_three_contract_endpoints(client, world):
    """The parameters of ../shared/DESIGN.md, `group_by`'s allowed values, and the answers
    the app really gives (each one is provoked in the tests above and in
    test_analytics_routing.py: 403 other clinic, 422 bad range, 400 unparsable, 503 timeout)."""
    schema = (await client.get("/schema/openapi.json")).json()
    contract = {
        "no-shows": {"from", "to", "group_by", "clinic_id"},
        "popular-slots": {"from", "to", "clinic_id"},
        "utilisation": {"from", "to", "clinic_id"},
        "cancellations": {"from", "to", "clinic_id"},
    }
    for path, expected in contract.items():
        operation = schema["paths"][f"/api/analytics/{path}"]["get"]
        parameters = {p["name"]: p for p in operation["parameters"]}
        assert set(parameters) == expected
        for name in expected:
            assert parameters[name]["in"] == "query" and not parameters[name]["required"]
            assert parameters[name].get("description")
        for name in ("from", "to"):
            formats = {s.get("format") for s in parameters[name]["schema"]["oneOf"]}
            assert "date" in formats
        assert {"200", "400", "401", "403", "422", "503"} <= set(operation["responses"])
        error = operation["responses"]["403"]["content"]["application/json"]["schema"]
        assert error["$ref"].endswith("/ErrorOut")
        assert "another clinic" in operation["responses"]["403"]["description"]
        assert "timeout" in operation["responses"]["503"]["description"]
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.rsplit("/", 1)[1] in schema["components"]["schemas"]
    group_by = {
        p["name"]: p for p in schema["paths"]["/api/analytics/no-shows"]["get"]["parameters"]
    }["group_by"]["schema"]
    assert group_by["enum"] == ["clinic", "doctor", "weekday", "hour", "lead_time"]
    assert group_by["default"] == "clinic"
    error_out = schema["components"]["schemas"]["ErrorOut"]
    assert set(error_out["required"]) == {"status_code", "detail"}
    csv_report = schema["paths"]["/api/analytics/report.csv"]["get"]
    report = next(p for p in csv_report["parameters"] if p["name"] == "report")
    assert report["required"] and report["schema"]["enum"] == list(api_analytics.REPORTS)
    export = schema["paths"]["/api/analytics/exports"]["post"]
    assert {"202", "400", "403", "422", "503"} <= set(export["responses"])
    file = schema["paths"]["/api/analytics/exports/{export_id}/file"]["get"]["responses"]
    assert {"200", "302", "404"} <= set(file)

    # Each enum value is accepted and anything else is the documented 422, not a 500.
    for value in group_by["enum"]:
        response = await get(client, world, "admin", "/api/analytics/no-shows", group_by=value)
        assert response.status_code == 200, (value, response.text)


async def test_dashboard_page_and_fragment(client, world):
    page = await get(client, world, "admin", "/analytics")
    assert page.status_code == 200
    html = page.text
    assert "<html" in html and 'id="report"' in html
    assert html.count('role="img"') == 5  # five charts, each with a title and a description
    assert len(re.findall(r"<title id=", html)) == 5 and len(re.findall(r"<desc id=", html)) == 5
    assert html.count("<table") >= 5  # every chart has its data table
    assert "Start hour (clinic time)" in html and "No-show rate (%)" in html
    assert "<script>" not in html and "style=" not in html  # CSP: no inline script or style
    assert page.headers["vary"] == "HX-Request"

    fragment = await client.get(
        "/analytics", params=RANGE, headers=world.headers("desk") | {"HX-Request": "true"}
    )
    assert fragment.text.lstrip().startswith('<div id="report"')
    assert "<html" not in fragment.text
    assert "Berlin" in fragment.text and "New York" not in fragment.text
    assert fragment.headers["vary"] == "HX-Request"

    assert (await get(client, world, "doctor", "/analytics")).status_code == 403
    other = await get(client, world, "desk", "/analytics", clinic_id=world.other_clinic_id)
    assert other.status_code == 403


async def test_an_empty_range_renders(client, world, session):
    await session.execute(text("TRUNCATE clinic_daily_stats, clinic_bucket_stats"))
    await session.commit()
    page = await get(client, world, "admin", "/analytics")
    assert page.status_code == 200
    assert "No appointments in this range." in page.text


async def test_long_ranges_read_whole_months_and_edge_days_alike(client, session, settings, engine):
    """20 Apr - 10 Jun: edge days of April and June from the daily rollups, May from the
    monthly one; the answers equal the direct aggregate all the same."""
    world = await make_world(session, settings.secret_key, patients=5)
    days = [dt.date(2026, 4, 20) + dt.timedelta(days=i) for i in range(52)]
    await add_random_appointments(session, world, days, seed=17, per_day=3)
    async with engine.begin() as conn:
        for chunk in rollups.day_chunks(days[0], days[-1], 10):
            await rollups.refresh_days(conn, chunk)
    monthly = await session.scalar(text("SELECT count(*) FROM clinic_monthly_stats"))
    assert monthly == 2 * 3  # two doctors, April to June
    daily, buckets = await expected_rollups(session, days)
    params = {"from": "2026-04-20", "to": "2026-06-10"}
    admin = world.headers("admin")

    body = (await client.get("/api/analytics/no-shows", params=params, headers=admin)).json()
    assert body["total"]["no_show"] == sum(v["no_show"] for v in daily.values())
    by_weekday = (
        await client.get(
            "/api/analytics/no-shows", params=params | {"group_by": "weekday"}, headers=admin
        )
    ).json()
    expected_weekday = [0] * 7
    for (_, day, _), v in daily.items():
        expected_weekday[day.weekday()] += v["no_show"]
    assert [r["no_show"] for r in by_weekday["rows"]] == expected_weekday

    popular = (
        await client.get("/api/analytics/popular-slots", params=params, headers=admin)
    ).json()
    matrix = [[0] * 24 for _ in range(7)]
    for (_, day, dimension, hour), v in buckets.items():
        if dimension == "hour":
            matrix[day.weekday()][hour] += v["appointments"]
    assert popular["bookings"] == matrix

    util = (await client.get("/api/analytics/utilisation", params=params, headers=admin)).json()
    assert util["total"]["available_minutes"] == sum(v["available_minutes"] for v in daily.values())
    assert util["total"]["booked_minutes"] == sum(v["booked_minutes"] for v in daily.values())

    cancelled = (
        await client.get("/api/analytics/cancellations", params=params, headers=admin)
    ).json()
    assert cancelled["cancelled"] == sum(v["cancelled"] for v in daily.values())
    assert sum(cancelled["by_lead_time"].values()) == cancelled["cancelled"]

    # Narrower ranges inside the same months give different, still exact, answers.
    inside = {"from": "2026-05-03", "to": "2026-05-30"}
    body = (await client.get("/api/analytics/no-shows", params=inside, headers=admin)).json()
    expected = sum(
        v["no_show"]
        for k, v in daily.items()
        if dt.date(2026, 5, 3) <= k[1] <= dt.date(2026, 5, 30)
    )
    assert body["total"]["no_show"] == expected


async def test_dashboard_equals_the_separate_reports_and_follows_each_refresh(
    world, engine, session
):
    """The dashboard derives its five reports from two queries and keeps them in memory
    until the rollups change: the same numbers as each report's own query, never stale."""
    for clinic_id in (None, world.clinic_id):
        scope = reports.ReportScope(DAYS[0], DAYS[-1], clinic_id)
        for group_by in reports.GROUPS:
            board = await reports.dashboard(engine, scope, group_by)
            async with engine.connect() as conn:
                assert board.no_shows == await reports.no_shows(conn, scope, group_by)
                assert board.no_shows_by_hour == await reports.no_shows(conn, scope, "hour")
                assert board.popular == await reports.popular_slots(conn, scope)
                assert board.utilisation == await reports.utilisation(conn, scope)
                assert board.cancellations == await reports.cancellations(conn, scope)
            assert board.no_shows.rows and board.popular.counts and board.utilisation.rows

    scope = reports.ReportScope(DAYS[0], DAYS[-1], None)
    first = await reports.dashboard(engine, scope, "clinic")
    assert await reports.dashboard(engine, scope, "clinic") is first  # from memory
    changed = await session.scalar(
        text(
            "UPDATE appointments SET status = 'no_show', updated_at = now() WHERE id = "
            "(SELECT min(id) FROM appointments WHERE status = 'booked' "
            "AND starts_at >= '2026-05-02' AND starts_at < '2026-05-13') RETURNING id"
        )
    )
    await session.commit()
    assert changed is not None
    async with engine.begin() as conn:
        await rollups.refresh_days(conn, DAYS)
    after = await reports.dashboard(engine, scope, "clinic")
    assert after.no_shows.total.no_show == first.no_shows.total.no_show + 1
    assert after.cancellations.appointments == first.cancellations.appointments
