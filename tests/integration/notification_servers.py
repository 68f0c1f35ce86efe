"""Real local servers for notification tests: an SMTP sink (aiosmtpd) and a Twilio-style
SMS API (http.server), each in its own thread on a free port, plus a SAQ worker runner."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from aiosmtpd.controller import Controller
from saq import Worker

import tasks.worker as tasks_worker
from conftest import free_port


@dataclasses.dataclass
class Received:
    at: float
    to: list[str]
    message: EmailMessage
    queue_id: str  # what the sink named it in its answer to DATA

    @property
    def provider_id(self) -> str:
        """What medbook should record for it: its Message-ID and the sink's answer."""
        return f"{self.message['Message-ID']} (2.0.0 Ok: queued as {self.queue_id})"

    @property
    def text(self) -> str:
        part = self.message.get_body(("plain",))
        assert part is not None
        return part.get_content()

    @property
    def html(self) -> str:
        part = self.message.get_body(("html",))
        assert part is not None
        return part.get_content()

    @property
    def ics(self) -> str:
        for part in self.message.iter_attachments():
            if part.get_content_type() == "text/calendar":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                return payload.decode()
        raise AssertionError("no text/calendar attachment")


class SmtpSink:
    """aiosmtpd on a free port, keeping every message it accepts (with the time).

    `stall_rcpt`: hold the next RCPT for this many seconds (a send that is in progress
    when a worker dies; the message has not been handed over yet).
    `refuse`: answer DATA with this code (e.g. 451) for the next N messages.
    An accepted message is answered as Postfix does, `250 2.0.0 Ok: queued as <id>`.
    """

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.port = free_port()
        self.stall_rcpt = 0.0
        self.stalled = threading.Event()
        self.refuse: list[int] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.stall_rcpt:
            stall, self.stall_rcpt = self.stall_rcpt, 0.0
            self.stalled.set()
            await asyncio.sleep(stall)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            code = self.refuse.pop(0)
            return f"{code} try again later" if code < 500 else f"{code} rejected"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        queue_id = f"4Q{self.port}X{len(self.messages) + 1:05d}"
        self.messages.append(Received(time.time(), list(envelope.rcpt_tos), message, queue_id))
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def by_message_id(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in self.messages:
            counts[str(m.message["Message-ID"])] = counts.get(str(m.message["Message-ID"]), 0) + 1
        return counts

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class SmsApi:
    """A Twilio-style `POST /Accounts/{sid}/Messages.json`, honouring Idempotency-Key.

    `fail_next`: answer 503 to this many requests; `always_fail`: 503 forever;
    `respond_after`: accept (record) the next message, then wait this long before
    answering (the answer a dying worker never reads). `stop()` / `start()` take the
    server down and up on the same port (connection refused in between).
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/2010-04-01"
        self.requests: list[tuple[float, dict[str, str], dict[str, str]]] = []
        self.delivered: dict[str, dict[str, Any]] = {}  # idempotency key -> message
        self.fail_next = 0
        self.always_fail = False
        self.respond_after = 0.0
        self.accepted = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                headers = {k.lower(): v for k, v in self.headers.items()}
                with api._lock:
                    api.requests.append((time.time(), form, headers))
                    if api.always_fail or api.fail_next > 0:
                        api.fail_next = max(0, api.fail_next - 1)
                        status, body = 503, {"message": "service unavailable"}
                    else:
                        key = headers.get("idempotency-key") or f"anon-{len(api.requests)}"
                        if key not in api.delivered:
                            api.delivered[key] = {
                                "sid": f"SM{len(api.delivered) + 1:08d}",
                                "to": form.get("To"),
                                "body": form.get("Body"),
                                "at": time.time(),
                            }
                        status, body = 201, {"sid": api.delivered[key]["sid"], "status": "queued"}
                    delay, api.respond_after = api.respond_after, 0.0
                if delay:
                    api.accepted.set()
                    time.sleep(delay)
                raw = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(raw)))
                    self.end_headers()
                    self.wfile.write(raw)
                except OSError:
                    pass  # the client went away

        return Handler

    def start(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SmsApi:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def notify_settings(
    settings: Any, *, smtp: SmtpSink | None = None, sms: SmsApi | None = None, **changes: Any
) -> Any:
    """Test settings: fast retries and leases; email to `smtp`, SMS to `sms` (account AC1,
    token t0k) when given; any other setting as `changes` says."""
    providers: dict[str, Any] = {}
    if smtp is not None:
        providers |= {"smtp_host": "127.0.0.1", "smtp_port": smtp.port}
    if sms is not None:
        providers |= {"sms_api_url": sms.url, "sms_account": "AC1", "sms_token": "t0k"}
    base = {
        "notify_retry_base_seconds": 1.0,
        "notify_retry_max_seconds": 30.0,
        "notify_send_timeout_seconds": 3.0,
        "notify_lease_seconds": 2,
        "notify_breaker_threshold": 5,
        "notify_breaker_cooldown_seconds": 2.0,
        "smtp_tls": "none",
        "smtp_from": "Clinic Reminders <reminders@medbook.test>",
        "public_origin": "https://medbook.test",
    }
    return dataclasses.replace(settings, **(base | providers | changes))


class _PromptWorker(tasks_worker.Worker):
    """Our worker (which stops at once when idle; SAQ's waits its grace for its own loops),
    moving due scheduled jobs (retries after backoff) to the queue every 0.1 s, not every
    second: a retry starts within ~0.1 s of its time, so backoff tests can use short
    delays. SAQ locks its scheduler for whole seconds (a Redis SETEX); the test's worker
    is the only one on its queue, so it lifts the lock first."""

    async def schedule(self, lock: int = 1) -> None:
        await self.queue.redis.delete(self.queue._schedule)
        await super().schedule(1)


@asynccontextmanager
async def running_worker(settings: Any, monkeypatch: Any) -> AsyncIterator[Worker]:
    """The real worker settings (startup, functions) for `settings`, run in this process
    without its cron (tests call the dispatcher, as the cron would)."""
    monkeypatch.setattr(tasks_worker, "get_settings", lambda: settings)
    options = tasks_worker.worker_settings()
    queue = options.pop("queue")
    options.pop("cron_jobs")
    options["shutdown_grace_period_s"] = 1
    options["timers"] = {"schedule": 0.1, "sweep": 3600}
    await queue.connect()
    worker = _PromptWorker(queue, **options, dequeue_timeout=0.5)
    task = asyncio.create_task(worker.start())
    try:
        yield worker
    finally:
        await worker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await queue.disconnect()


async def eventually(check: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll an async `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: last {result!r}")
        await asyncio.sleep(interval)
