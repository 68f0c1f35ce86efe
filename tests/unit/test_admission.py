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


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_standing_queue_refuses_newcomers_at_once_until_it_empties():
    clock = Clock()
    admission = Admission(max_in_flight=1, max_queue=10, max_wait_ms=10_000, clock=clock)
    assert admission.try_enter()
    first = asyncio.create_task(admission.wait())  # the queue was empty: a burst begins
    await asyncio.sleep(0)
    clock.now += 0.05
    second = asyncio.create_task(admission.wait())  # 50 ms: still a burst, it waits
    await asyncio.sleep(0)
    assert len(admission.waiters) == 2
    clock.now += 0.06  # 110 ms without the queue emptying or moving quickly
    refused = asyncio.create_task(admission.wait())
    await asyncio.sleep(0)
    assert refused.done() and refused.result() is False  # at once, without waiting
    assert len(admission.waiters) == 2  # those already waiting keep their turn
    admission.leave()
    admission.leave()
    assert await first is True and await second is True
    # The queue emptied: the next newcomer may wait again.
    clock.now += 0.01
    third = asyncio.create_task(admission.wait())
    await asyncio.sleep(0)
    assert not third.done() and len(admission.waiters) == 1
    admission.leave()
    assert await third is True


async def test_a_queue_that_moves_quickly_is_not_standing():
    clock = Clock()
    admission = Admission(max_in_flight=1, max_queue=10, max_wait_ms=10_000, clock=clock)
    assert admission.try_enter()
    waiting = asyncio.create_task(admission.wait())
    await asyncio.sleep(0)
    for _ in range(70):  # 210 ms, never empty, but every waiter served within 5 ms
        clock.now += 0.002
        behind = asyncio.create_task(admission.wait())
        await asyncio.sleep(0)
        assert not behind.done()
        clock.now += 0.001
        admission.leave()
        assert await waiting is True
        waiting = behind
    admission.leave()
    assert await waiting is True
