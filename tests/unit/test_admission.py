"""The admission queue: free slots, first come first served, expiry, cancellation."""

import asyncio
import time

import pytest

from app.web.admission import ADMITTED, LAG_WINDOW_SECONDS, PENDING, RUNNING, Admission


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


def lagging(admission: Admission, lag: float, windows: int, now: float = 0.0) -> float:
    """Samples of `lag` every 10 ms (the timer's period) until `windows` windows ended."""
    for _ in range(windows):
        end = admission.window_end
        while admission.window_end == end:
            now += 0.01
            admission.observe_lag(lag, now)
    return now


def test_the_limit_shrinks_while_the_loop_lags_and_grows_back_when_it_keeps_up():
    admission = Admission(max_in_flight=15, max_queue=10, max_wait_ms=30, lag_target_ms=10)
    admission.window_end = 0.1
    now = lagging(admission, 0.012, windows=1)
    assert admission.limit == 11  # a whole window over the target: three quarters
    now = lagging(admission, 0.05, windows=10, now=now)
    assert admission.limit == 2  # never below two
    now = lagging(admission, 0.007, windows=5, now=now)
    assert admission.limit == 2  # between the target and half of it: held
    now = lagging(admission, 0.001, windows=5, now=now)
    assert admission.limit == 7  # one more per window the loop keeps up
    lagging(admission, 0.001, windows=20, now=now)
    assert admission.limit == 15  # and never above the maximum


def test_one_slow_turn_of_the_loop_does_not_shrink_the_limit():
    admission = Admission(max_in_flight=15, max_queue=10, max_wait_ms=30, lag_target_ms=10)
    admission.window_end = 0.1
    now = 0.0
    for sample in [0.001] * 4 + [0.2] + [0.001] * 5:  # a 200 ms collection, say
        now = round(now + 0.01, 6)
        admission.observe_lag(sample, now)
    assert admission.limit == 15


def serving(admission: Admission, clock: Clock, held: list[float], lag: float = 0.001) -> None:
    """One window: requests that held their slot for `held` seconds end in it (the loop
    keeping up), then the window closes."""
    for seconds in held:
        assert admission.try_enter()
        started = clock.now
        clock.now += seconds
        admission.leave(started)
    end = admission.window_end
    now = end - LAG_WINDOW_SECONDS
    while now < end:  # the timer's samples, up to the window's end
        now = min(now + 0.01, end)
        admission.observe_lag(lag, now)
    admission.window_end = end + LAG_WINDOW_SECONDS  # as observe_lag sets it when adaptive


def test_the_limit_shrinks_while_admitted_requests_hold_their_slots_too_long():
    clock = Clock()
    admission = Admission(
        max_in_flight=15,
        max_queue=10,
        max_wait_ms=30,
        clock=clock,
        lag_target_ms=10,
        service_target_ms=50,
    )
    admission.window_end = LAG_WINDOW_SECONDS
    serving(admission, clock, [0.01] * 17 + [0.06] * 3)  # 3 in 20 over the target
    assert admission.limit == 11  # the loop kept up; the requests did not
    serving(admission, clock, [0.01] * 17 + [0.06] * 2 + [0.03])  # 1 in 10 over: held
    assert admission.limit == 11
    serving(admission, clock, [0.01] * 17 + [0.03] * 3)  # under the target, not under half
    assert admission.limit == 11
    serving(admission, clock, [0.01] * 18 + [0.3] * 2)  # nine in ten under half: one more
    assert admission.limit == 12  # a few long ones (sign-ins waiting for a hash) or not
    serving(admission, clock, [])  # nothing ended (the loop idle): the lag decides
    assert admission.limit == 13


def test_slow_requests_do_not_shrink_a_fixed_limit():
    clock = Clock()
    admission = Admission(
        max_in_flight=15, max_queue=10, max_wait_ms=30, clock=clock, service_target_ms=50
    )
    for _ in range(3):
        serving(admission, clock, [0.5] * 20)
    assert admission.limit == 15


async def test_a_shrunk_limit_holds_waiters_back_and_a_grown_one_hands_slots_over():
    admission = Admission(max_in_flight=4, max_queue=10, max_wait_ms=10_000, lag_target_ms=10)
    assert all(admission.try_enter() for _ in range(4))
    waiting = [asyncio.create_task(admission.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    admission.set_limit(2)
    admission.leave()
    admission.leave()  # four in flight, two allowed: the freed slots are not handed on
    await asyncio.sleep(0)
    assert admission.in_flight == 2 and not any(task.done() for task in waiting)
    admission.leave()  # three would be too many still: only now is one handed over
    assert admission.in_flight == 2 and await waiting[0] is True
    admission.set_limit(3)  # room for one more: the next waiter gets it at once
    assert await waiting[1] is True and admission.in_flight == 3


async def test_a_lagging_loop_refuses_newcomers_without_waiting():
    admission = Admission(max_in_flight=1, max_queue=10, max_wait_ms=30, lag_target_ms=10)
    assert admission.try_enter()
    admission.observe_lag(0.035, 0.01)
    admission.observe_lag(0.031, 0.05)  # the loop keeps later than any wait may be
    assert admission.join_queue() is None and not admission.waiters
    admission.observe_lag(0.005, 0.06)
    waiting = admission.join_queue()
    assert waiting is not None and len(admission.waiters) == 1
    admission.leave()
    assert await admission.turn(waiting) is True


async def test_one_stall_of_the_loop_does_not_refuse_the_requests_it_held_up():
    admission = Admission(max_in_flight=1, max_queue=10, max_wait_ms=30, lag_target_ms=10)
    assert admission.try_enter()
    admission.observe_lag(0.001, 0.01)
    admission.observe_lag(0.2, 0.22)  # one 200 ms turn, over now
    waiting = admission.join_queue()
    assert waiting is not None  # queued, to be served as the loop works off the stall
    admission.leave()
    assert await admission.turn(waiting) is True


async def test_the_lag_timer_sees_a_blocked_loop():
    admission = Admission(max_in_flight=15, max_queue=10, max_wait_ms=30, lag_target_ms=10)
    samples: list[float] = []
    observe = admission.observe_lag

    def recorded(lag: float, now: float) -> None:
        samples.append(lag)
        observe(lag, now)

    admission.observe_lag = recorded  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    admission.watch(loop)
    await asyncio.sleep(0)
    time.sleep(0.06)  # the loop is blocked: the timer, due 10 ms after watch(), waits
    assert admission.current_lag() >= 0.05  # overdue now, before the timer has run
    assert not samples
    await asyncio.sleep(0.02)
    assert samples[0] >= 0.05  # the timer's own sample, once it ran
    admission.loop = None  # the timer stops at its next tick
    await asyncio.sleep(0.02)
    assert admission.loop is None


def test_a_fixed_limit_stays_whatever_the_lag():
    admission = Admission(max_in_flight=15, max_queue=10, max_wait_ms=30, lag_target_ms=0)
    for tick in range(1, 31):  # three windows' worth
        admission.observe_lag(0.5, tick * 0.01)
    assert admission.limit == 15 and admission.lag == 0.5  # measured all the same


async def test_a_newcomer_is_refused_at_once_when_those_ahead_fill_the_slots_whole_wait():
    clock = Clock()
    admission = Admission(max_in_flight=2, max_queue=60, max_wait_ms=30, clock=clock)
    for _ in range(20):  # admitted requests that each held their slot 20 ms
        assert admission.try_enter()
        started = clock.now
        clock.now += 0.02
        admission.leave(started)
    assert admission.service == pytest.approx(0.02 * (1 - 0.95**20))
    admission.service = 0.02
    assert admission.try_enter() and admission.try_enter()
    # Two slots, one freed every 10 ms: three waiters are served within 30 ms, not four.
    queued = [admission.join_queue() for _ in range(3)]
    assert all(queued) and admission.join_queue() is None
    assert len(admission.waiters) == 3
    for waiting in queued:
        admission.leave()
        assert waiting is not None and await admission.turn(waiting) is True


async def test_a_queued_request_cancelled_before_it_ran_passes_a_slot_handed_to_it_on():
    admission = Admission(max_in_flight=1, max_queue=5, max_wait_ms=10_000)
    assert admission.try_enter()
    first, behind = admission.join_queue(), admission.join_queue()
    assert first is not None and behind is not None
    admission.leave()  # the slot goes to `first`, whose task is cancelled before it runs
    scope = {ADMITTED: PENDING}
    admission.unstarted(scope, first)
    assert behind.waiter.result() is True  # passed on, not lost
    assert admission.in_flight == 1 and not admission.waiters
    admission.unstarted(scope, first)  # once only
    assert admission.in_flight == 1
    admission.unstarted({ADMITTED: RUNNING}, behind)  # it ran: it frees the slot itself
    assert admission.in_flight == 1
    admission.leave()
    assert admission.in_flight == 0
