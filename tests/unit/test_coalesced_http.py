"""A response's writes of one event-loop turn go out as one (app/web/coalesced_http.py)."""

import asyncio
import hashlib
import inspect

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.web.coalesced_http import CoalescingTransport

# The source of uvicorn's method that CoalescingHttpToolsProtocol._spawn repeats (uvicorn
# 0.55.0). When an upgrade changes it, read the new one: does _spawn still make the task
# as uvicorn would?
UVICORN_START_TASK_SHA256 = "8d0189e65525db4252cf68afc4d089cafa6a7065d1d39c3877354c0a0a7d504c"


def test_uvicorn_method_is_the_one_repeated() -> None:
    source = inspect.getsource(HttpToolsProtocol._start_asgi_task)
    assert hashlib.sha256(source.encode()).hexdigest() == UVICORN_START_TASK_SHA256


class Recorded:
    """A transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


async def test_the_writes_of_one_turn_are_sent_as_one_at_its_end():
    real = Recorded()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"hi")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"]


async def test_writes_turns_apart_go_out_as_they_come():
    real = Recorded()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"head")
    await asyncio.sleep(0)
    transport.write(b"chunk 1")
    await asyncio.sleep(0)
    transport.write(b"chunk 2")
    await asyncio.sleep(0)
    assert real.writes == [b"head", b"chunk 1", b"chunk 2"]


async def test_a_close_sends_what_is_pending_first():
    real = Recorded()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"head")
    transport.write(b"body")
    transport.close()
    assert real.writes == [b"headbody"] and real.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left
    assert real.writes == [b"headbody"]


async def test_nothing_is_written_to_a_transport_closed_meanwhile():
    real = Recorded()
    transport = CoalescingTransport(real, asyncio.get_running_loop())
    transport.write(b"head")
    real.closed = True  # the client went away
    await asyncio.sleep(0)
    assert real.writes == []


async def test_everything_else_is_the_transports_own():
    transport = CoalescingTransport(Recorded(), asyncio.get_running_loop())
    assert transport.get_extra_info("peername") == "extra peername"
    assert not transport.is_closing()
