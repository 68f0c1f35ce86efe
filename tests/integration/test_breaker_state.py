"""Each provider's circuit breaker is visible: closed, open until when, the last error, on
the notifications page and in /metrics."""

import datetime as dt
import re
import time

import pytest
from sqlalchemy import update

from app.notifications.breaker import Breaker, read_state
from db.models import Patient
from tests.integration.auth_helpers import bearer, make_user
from tests.integration.notification_servers import (
    SmsApi,
    eventually,
    notify_settings,
    running_worker,
)
from tests.integration.notification_world import book_api, world_with_contacts
from tests.integration.world import at, day_after_tomorrow


async def test_the_state_reads_closed_open_half_open_and_closed_again(redis):
    breaker = Breaker(redis, "email", threshold=2, cooldown=30, probe_ttl=5)
    now = time.time()
    fresh = await read_state(redis, "email", now)
    assert (fresh.state, fresh.open_until, fresh.failures, fresh.last_error) == (
        "closed",
        None,
        0,
        None,
    )

    assert await breaker.failure(now, "SMTP 421 too busy") == "closed"
    counting = await read_state(redis, "email", now)
    assert (counting.state, counting.failures, counting.last_error) == (
        "closed",
        1,
        "SMTP 421 too busy",
    )
    assert await breaker.failure(now + 1, "SMTP 451 try later") == "opened"
    opened = await read_state(redis, "email", now + 2)
    assert opened.state == "open" and opened.last_error == "SMTP 451 try later"
    assert opened.open_until is not None
    assert abs(opened.open_until.timestamp() - (now + 1 + 30)) < 0.01
    assert opened.last_error_at is not None
    assert abs(opened.last_error_at.timestamp() - (now + 1)) < 0.01

    # The cooldown over, the next send probes; its success closes the breaker.
    assert (await read_state(redis, "email", now + 40)).state == "half_open"
    assert (await breaker.check(now + 40)).probe
    await breaker.success()
    closed = await read_state(redis, "email", now + 41)
    assert (closed.state, closed.open_until, closed.failures) == ("closed", None, 0)
    assert closed.last_error == "SMTP 451 try later"  # kept for the admin after recovery
    assert (await read_state(redis, "sms", now)).state == "closed"  # one breaker each


@pytest.fixture
async def admin(session, settings):
    return bearer(settings, await make_user(session, "admin", "root@example.test"))


async def test_the_page_and_metrics_show_a_closed_breaker(client, admin):
    page = await client.get("/admin/notifications", headers=admin)
    assert page.status_code == 200
    for name in ("email", "sms"):
        row = _row(page.text, name)
        assert "<td>closed</td>" in row and "none in the last day" in row
    metrics = (await client.get("/metrics")).text
    for name in ("email", "sms"):
        assert f'medbook_notify_breaker_open{{channel="{name}"}} 0.0' in metrics
        assert f'medbook_notify_breaker_open_until_seconds{{channel="{name}"}} 0.0' in metrics


async def test_a_provider_down_opens_its_breaker_and_the_page_and_metrics_say_until_when(
    client, session, settings, monkeypatch, admin, redis
):
    world = await world_with_contacts(
        session, settings.secret_key, [("bob@patients.test", "+4930123456", "sms")]
    )
    await session.execute(update(Patient).values(notify_by="sms", phone="+4930123456"))
    await session.commit()
    api = SmsApi()  # never started: connection refused
    worker_settings = notify_settings(
        settings,
        sms=api,
        notify_breaker_threshold=2,
        notify_breaker_cooldown_seconds=600.0,
        notify_retry_base_seconds=0.2,
    )
    before = dt.datetime.now(dt.UTC)
    async with running_worker(worker_settings, monkeypatch):
        day = day_after_tomorrow()
        for hour in (10, 11):
            await book_api(client, world, at(day, hour), who="patient0")

        async def opened():
            return (await read_state(redis, "sms", time.time())).state == "open"

        await eventually(opened, timeout=30, interval=0.05)

    page = await client.get("/admin/notifications", headers=admin)
    row = _row(page.text, "sms")
    until = re.search(r'open</strong> until <time datetime="([^"]+)"', row)
    assert until, row
    opened_until = dt.datetime.fromisoformat(until[1])
    assert before + dt.timedelta(seconds=600) <= opened_until
    assert opened_until <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=600)
    assert "SMS API: ConnectError" in row  # the worker's last error, as it failed
    assert "<td>closed</td>" in _row(page.text, "email")

    metrics = (await client.get("/metrics")).text
    assert 'medbook_notify_breaker_open{channel="sms"} 1.0' in metrics
    assert 'medbook_notify_breaker_open{channel="email"} 0.0' in metrics
    exported = re.search(
        r'medbook_notify_breaker_open_until_seconds\{channel="sms"\} (\S+)', metrics
    )
    assert exported and float(exported[1]) == pytest.approx(opened_until.timestamp(), abs=1)


def _row(html: str, name: str) -> str:
    match = re.search(rf'<tr id="breaker-{name}">(.*?)</tr>', html, re.S)
    assert match, f"no breaker row for {name}"
    return match[1]
