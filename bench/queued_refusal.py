"""How long after its wait runs out a queued request's 503 leaves the server (issue 17,
shedding), on an event loop kept busy by the requests in flight.

One process: uvicorn with medbook's protocol (app/web/coalesced_http.py) and a synthetic
app whose every request takes five 1 ms steps of CPU with a 2 ms await between them (a
database round trip), a fixed limit of 8 in flight, a 20 ms wait, up to 30 waiting (the
rules that refuse at once for a standing or too-long queue are off here); 60 client
connections in a closed loop keep the queue full. For each queued request whose wait ran
out, the time from the moment its wait ended (its arrival + the wait) to the write of its
503 on the socket, read on the server's own clock (so the client's lag is not in it). The timer
itself fires late by the loop's lag, in both versions: what differs is what follows it.

    PYTHONPATH=. .venv/bin/python bench/queued_refusal.py [--root TREE] [--seconds 5]

`--root` imports the medbook code of another tree (a base to compare with).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def main(args: argparse.Namespace) -> None:
    import uvicorn

    from app.web import admission as admission_module
    from app.web.admission import Admission, Refusal, Refusals, refusal_headers
    from app.web.coalesced_http import CoalescingHttpToolsProtocol

    # Every newcomer queues while there is room (no refusal at once for a standing or
    # too-long queue): many waits run out, which is what is measured.
    admission_module.STANDING_QUEUE_SECONDS = 1e9

    class Queueing(Admission):
        def leave(self, started: float | None = None) -> None:
            super().leave(None)  # no average of the slots' time: the queue rule stays off

    wait_ms = 20
    admission = Queueing(max_in_flight=8, max_queue=30, max_wait_ms=wait_ms)
    body = b'{"status_code": 503}'
    json_refusal = Refusal.of(refusal_headers(body, b"application/json"), body)
    admission.refusals = Refusals(json_refusal, {"en": json_refusal}, "en")
    delays: list[float] = []

    class Recorder:
        """The connection's socket transport, timing the 503s written on it."""

        def __init__(self, transport, protocol) -> None:
            self.transport, self.protocol = transport, protocol

        def write(self, data: bytes) -> None:
            joined = self.protocol.joined
            if data.startswith(b"HTTP/1.1 503") and joined is not None:
                late = time.monotonic() - (joined + wait_ms / 1000)
                if late > -wait_ms / 2000:  # it waited (not refused at once)
                    delays.append(late * 1000)
            self.transport.write(data)

        def __getattr__(self, name):
            return getattr(self.transport, name)

    class Timed(CoalescingHttpToolsProtocol):
        joined: float | None = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            assert self.out is not None
            self.out._transport = Recorder(transport, self)  # type: ignore[assignment]

        def _start_asgi_task(self, cycle, app) -> None:
            self.joined = time.monotonic() if admission.in_flight >= admission.limit else None
            super()._start_asgi_task(cycle, app)

    class App:
        state = {"admission": admission}

        async def __call__(self, scope, receive, send) -> None:
            await receive()
            for _ in range(5):
                end = time.perf_counter() + 0.001
                while time.perf_counter() < end:
                    pass
                await asyncio.sleep(0.002)
            headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        App(), host="127.0.0.1", port=port, http=Timed, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    stop = time.monotonic() + args.seconds
    statuses: dict[int, int] = {}

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            statuses[status] = statuses.get(status, 0) + 1
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
        writer.close()

    try:
        await asyncio.gather(*(client() for _ in range(60)))
    finally:
        server.should_exit = True
        await serving
    print(
        f"root {args.root or '.'}: answers {statuses}; 503s after a wait that ran out: "
        f"{len(delays)}, written after the wait's end p50 / p90 / p99 / max "
        + (
            " / ".join(f"{percentile(delays, p):.2f}" for p in (50, 90, 99, 100)) + " ms"
            if delays
            else "n/a"
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="")
    parser.add_argument("--seconds", type=float, default=5)
    arguments = parser.parse_args()
    if arguments.root:
        sys.path.insert(0, arguments.root)
    import uvloop

    uvloop.run(main(arguments))
