"""The admission queue: free slots, first come first served, expiry, cancellation."""

import asyncio

import pytest

from app.web.admission import Admission


async def test_free_slots_are_taken_at_once_then_requests_wait():
    admission = Admission(max_in_flight=2, max_queue=5, max_wait_ms=10_000)
    assert admission.try_enter() and admission.try_enter()
    assert not admission.try_enter()
    waiting = asyncio.create_task(admission.wait())
    await asyncio.sleep(0)  # let it queue
    assert len(admission.waiters) == 1
    admission.leave()  # the slot passes straight to the waiter
    assert await waiting is True
    assert admission.in_flight == 2 and not admission.waiters


async def test_waiters_are_served_in_arrival_order_and_newcomers_queue_behind():
    admission = Admission(max_in_flight=1, max_queue=5, max_wait_ms=10_000)
    assert admission.try_enter()
    order: list[int] = []

    async def request(n: int) -> None:
        assert await admission.wait()
        order.append(n)

    tasks = [asyncio.create_task(request(n)) for n in range(3)]
    await asyncio.sleep(0)
    admission.leave()
    assert not admission.try_enter()  # a newcomer may not jump the queue
    for _ in range(3):
        await asyncio.sleep(0)
        admission.leave()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]
    assert admission.in_flight == 0


async def test_a_full_queue_refuses_at_once():
    admission = Admission(max_in_flight=1, max_queue=1, max_wait_ms=10_000)
    assert admission.try_enter()
    first = asyncio.create_task(admission.wait())
    await asyncio.sleep(0)
    assert await admission.wait() is False  # the queue holds one already
    admission.leave()
    assert await first is True


async def test_a_wait_that_runs_out_is_refused_and_leaves_the_queue():
    admission = Admission(max_in_flight=1, max_queue=5, max_wait_ms=1)
    assert admission.try_enter()
    assert await admission.wait() is False
    assert not admission.waiters
    admission.leave()
    assert admission.in_flight == 0 and admission.try_enter()


async def test_a_request_cancelled_while_waiting_gives_its_slot_on():
    admission = Admission(max_in_flight=1, max_queue=5, max_wait_ms=10_000)
    assert admission.try_enter()
    cancelled = asyncio.create_task(admission.wait())
    behind = asyncio.create_task(admission.wait())
    await asyncio.sleep(0)
    admission.leave()  # hands the slot to `cancelled`, which is cancelled before it runs
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await behind is True  # the slot was passed on, not lost
    admission.leave()
    assert admission.in_flight == 0 and not admission.waiters
