"""A small open-loop load generator with a lean HTTP/1.1 client.

Requests leave on a fixed schedule whatever the server's pace, and latency is measured from
each request's *scheduled* time, so a slow server cannot hide its queueing (no coordinated
omission). The client speaks just enough HTTP/1.1 over keep-alive connections (request
bytes built up front, responses read by Content-Length) to cost tens of microseconds per
request: on a 2-core machine shared with the server, a general-purpose client such as
httpx costs about a millisecond per request and would be measured instead of the server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

Request = tuple[str, str, dict | None, dict | None]  # method, path, json body, headers


@dataclass
class Result:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    duration_s: float = 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
        return ordered[index]

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.count / self.duration_s if self.duration_s else 0.0

    def row(self) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        return (
            f"| {self.name} | {self.count} | {self.rate:.0f} | {self.pct(50):.2f} | "
            f"{self.pct(95):.2f} | {self.pct(99):.2f} | {max(self.latencies_ms or [0]):.1f} | "
            f"{codes} | {self.errors} |"
        )


HEADER = (
    "| scenario | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | statuses | errors |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
)


class Client:
    """Keep-alive HTTP/1.1 connections to one host; one request per connection at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    @staticmethod
    def encode(request: Request, host: str) -> bytes:
        method, path, body, headers = request
        payload = json.dumps(body).encode() if body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.idle:
            try:
                return await self._exchange(*self.idle.pop(), raw)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass  # the server closed an idle keep-alive connection: use a fresh one
        return await self._exchange(*await asyncio.open_connection(self.host, self.port), raw)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
    ) -> tuple[int, bytes]:
        try:
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, body

    async def request(self, request: Request) -> tuple[int, bytes]:
        return await self.send(self.encode(request, self.host))

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


async def run(
    client: Client,
    streams: dict[str, tuple[float, Callable[[int], Request]]],
    seconds: float,
) -> dict[str, Result]:
    """Run several request streams at once, each at its own constant rate.

    Args:
        streams: name -> (requests per second, function of the request number).
        seconds: how long to send.
    """
    results = {name: Result(name) for name in streams}
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter() + 0.05

    async def one(name: str, scheduled: float, raw: bytes) -> None:
        result = results[name]
        try:
            status, _ = await client.send(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            return
        result.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        result.statuses[status] = result.statuses.get(status, 0) + 1

    async def stream(name: str, rate: float, make: Callable[[int], Request]) -> None:
        n = 0
        while True:
            scheduled = start + n / rate
            if scheduled - start >= seconds:
                return
            raw = Client.encode(make(n), client.host)  # built before its time comes
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(name, scheduled, raw))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1

    await asyncio.gather(*(stream(n, r, m) for n, (r, m) in streams.items()))
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    for result in results.values():
        result.duration_s = seconds
    return results
