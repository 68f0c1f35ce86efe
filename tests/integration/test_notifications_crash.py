"""A real worker process (`medbook worker`) killed with SIGKILL in the middle of a send:
nothing is lost and nothing is sent twice.

Two moments are tested. (1) Email, killed while the SMTP conversation is under way but
before the message was handed over (the server holds RCPT; the worker sends concurrently, so
the other message may already be out): the row keeps its claim until
its lease lapses, the next dispatch claims it again and a new worker sends it, once.
(2) SMS, killed after the provider accepted the message but before the worker read the
answer (the provider holds its reply): the resend carries the same Idempotency-Key, the
provider answers with the original message, and the row records that one sid. Without an
idempotent provider this second case is the at-least-once window docs/notifications.md
describes; for SMTP it is the time between the server's 250 and our commit.
"""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.reminders import dispatch
from tests.integration.notification_servers import (
    SmsApi,
    SmtpSink,
    eventually,
    notify_settings,
    running_worker,
)
from tests.integration.notification_world import book_api, outbox_rows, world_with_contacts
from tests.integration.world import at, day_after_tomorrow
from tests.processes import kill_process, start_process

ROOT = Path(__file__).resolve().parents[2]


CONTACTS = [
    ("ann@patients.test", "+4930111", "email"),
    ("bob@patients.test", "+4930222", "sms"),
    ("cy@patients.test", "+4930333", "email"),
]


@pytest.fixture
async def world(client, session, settings):
    return await world_with_contacts(session, settings.secret_key, CONTACTS)


def start_worker_process(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("w") as out:
        return start_process(
            [sys.executable, "-m", "app.cli", "worker"],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


async def wait_for(event, process, log: Path, timeout: float = 40.0) -> None:
    for _ in range(int(timeout * 10)):
        if event.is_set():
            return
        if process.poll() is not None:
            raise AssertionError(f"worker exited:\n{log.read_text()}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"the worker never reached the provider:\n{log.read_text()}")


async def book(client, world, hour, who):
    await book_api(client, world, at(day_after_tomorrow(), hour), who)


async def recover(session, engine, worker_settings, monkeypatch, kind="confirmation"):
    """A new worker, and the cron's dispatch each second, until every row is sent."""
    async with running_worker(worker_settings, monkeypatch) as worker:

        async def all_sent():
            await dispatch(engine, worker.queue, worker_settings)
            found = await outbox_rows(session, kind=kind)
            return all(r.status == "sent" for r in found) and found

        return await eventually(all_sent, timeout=40, interval=1.0)


COMMON_ENV = {
    "NOTIFY_SEND_TIMEOUT_SECONDS": "6",
    "NOTIFY_LEASE_SECONDS": "2",
    "MEDBOOK_PUBLIC_ORIGIN": "https://medbook.test",
    "LOG_LEVEL": "INFO",
}


async def test_worker_killed_during_an_smtp_send_loses_nothing_and_sends_once(
    client, world, session, settings, engine, monkeypatch, tmp_path
):
    with SmtpSink() as sink:
        sink.stall_rcpt = 60  # the first message's RCPT hangs: the send is in progress
        env = COMMON_ENV | {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(sink.port),
            "SMTP_TLS": "none",
        }
        log = tmp_path / "worker.log"
        # Booked before the worker runs: the after-commit dispatch job waits in Redis.
        await book(client, world, 10, "patient0")
        await book(client, world, 11, "patient2")
        process = start_worker_process(env, log)
        try:
            await wait_for(sink.stalled, process, log)
        finally:
            kill_process(process)
        # The worker sends concurrently: the other booking's message may not have
        # started, or may already be sent (once); only the stalled one is mid-send.
        before = {
            r.id: (r.status, r.attempts) for r in await outbox_rows(session, kind="confirmation")
        }
        in_flight = [i for i, state in before.items() if state == ("queued", 1)]
        assert len(in_flight) == 1, before
        (other,) = set(before) - set(in_flight)
        assert before[other] in {("queued", 0), ("sent", 1)}, before
        assert len(sink.messages) == (before[other] == ("sent", 1))

        worker_settings = notify_settings(
            settings,
            smtp=sink,
            notify_send_timeout_seconds=6.0,
            notify_lease_seconds=2,
        )
        sent = await recover(session, engine, worker_settings, monkeypatch)
    assert sorted(m.to[0] for m in sink.messages) == ["ann@patients.test", "cy@patients.test"]
    assert max(sink.by_message_id().values()) == 1
    assert {r.provider_message_id for r in sent} == {m.provider_id for m in sink.messages}
    assert {r.id: r.attempts for r in sent} == {in_flight[0]: 2, other: 1}


async def test_worker_killed_after_the_sms_provider_accepted_sends_once(
    client, world, session, settings, engine, monkeypatch, tmp_path
):
    with SmsApi() as api:
        api.respond_after = 60  # accept, then never answer the dying worker
        env = COMMON_ENV | {
            "SMS_API_URL": api.url,
            "SMS_ACCOUNT": "AC1",
            "SMS_TOKEN": "t0k",
        }
        log = tmp_path / "worker.log"
        await book(client, world, 10, "patient1")
        process = start_worker_process(env, log)
        try:
            await wait_for(api.accepted, process, log)
        finally:
            kill_process(process)
        (row,) = await outbox_rows(session, kind="confirmation")
        assert (row.status, row.attempts) == ("queued", 1)
        assert len(api.delivered) == 1  # the provider has it; we do not know yet

        worker_settings = notify_settings(
            settings,
            sms=api,
            notify_send_timeout_seconds=6.0,
            notify_lease_seconds=2,
        )
        (sent,) = await recover(session, engine, worker_settings, monkeypatch)
    assert len(api.requests) == 2 and len(api.delivered) == 1  # resent, delivered once
    (message,) = api.delivered.values()
    assert sent.provider_message_id == message["sid"] and sent.attempts == 2
    keys = {headers["idempotency-key"] for _, _, headers in api.requests}
    assert keys == {f"medbook-notification-{sent.id}"}
