"""`concurrently`: results in order; on a failure nothing it started outlives it."""

import asyncio

import pytest

from app.concurrently import concurrently


async def test_results_come_back_in_order():
    async def later(value, seconds):
        await asyncio.sleep(seconds)
        return value

    assert await concurrently(later("a", 0.02), later("b", 0), later("c", 0.01)) == ("a", "b", "c")


async def test_a_failure_is_raised_as_itself_after_the_others_have_ended():
    ended = []
    slow_started = asyncio.Event()

    async def slow():
        try:
            slow_started.set()
            await asyncio.sleep(60)
        finally:
            ended.append("slow")  # a query on the request's session, in the real case

    async def failing():
        await slow_started.wait()
        raise LookupError("the report timed out")

    with pytest.raises(LookupError, match="timed out"):
        await concurrently(slow(), failing())
    # asyncio.gather would have raised while `slow` still ran.
    assert ended == ["slow"]


async def test_gather_is_what_left_the_others_running():
    """The behaviour `concurrently` exists to avoid, shown on asyncio.gather itself."""
    ended = []

    async def slow():
        try:
            await asyncio.sleep(0.05)
        finally:
            ended.append("slow")

    async def failing():
        raise LookupError

    with pytest.raises(LookupError):
        await asyncio.gather(slow(), failing())
    assert ended == []
    await asyncio.sleep(0.1)
    assert ended == ["slow"]
