"""Failure-rate mode (the README's Semantics 10): FailureRate's settings, and the count and
time windows of recent calls, through the breaker on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from app.breaker import CircuitBreaker, CircuitOpenError, FailureRate, Listener, Outcome, State
from app.breaker._window import TimeWindow
from tests.breaker.conftest import (
    Boom,
    Gate,
    UnknownSymbol,
    fail_times,
    make,
    ok,
    settle_tasks,
    state_of,
    unknown,
)
from tests.conftest import FakeClock

# -- 10. failure-rate mode ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.01}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"slow_call_threshold": 0.0}, "slow_call_threshold"),
        ({"slow_call_threshold": 1.5}, "slow_call_threshold"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window_calls": None}, "exactly one"),
        ({"window_seconds": 60.0}, "exactly one"),
        ({"window_calls": 0, "minimum_calls": 0}, "minimum_calls"),
        ({"window_calls": 0}, "window_calls"),
        ({"window_calls": 5}, "must not exceed"),
        ({"window_calls": None, "window_seconds": 0.0}, "window_seconds"),
        ({"window_calls": None, "window_seconds": float("inf")}, "window_seconds"),
        ({"window_calls": None, "window_seconds": float("nan")}, "window_seconds"),
        ({"slow_call_seconds": 0.0}, "slow_call_seconds"),
        ({"slow_call_seconds": float("inf")}, "slow_call_seconds"),
    ],
)
def test_invalid_failure_rate_raises_value_error(settings: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"threshold": 0.5, **settings}
    with pytest.raises(ValueError, match=message):
        FailureRate(**values)  # type: ignore[arg-type]


async def test_rate_trips_exactly_at_the_threshold(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=4, window_calls=10))
    for _ in range(3):
        await breaker.call(ok)
    await fail_times(breaker, 2)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.failure_count) == (State.CLOSED, 5, 2)
    assert snap.failure_rate == pytest.approx(0.4)
    await fail_times(breaker, 1)  # 3 of 6
    assert breaker.state is State.OPEN
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count, snap.failure_rate) == (0, 0, None)
    assert snap.retry_after == 30.0


async def test_rate_gives_no_verdict_before_minimum_calls(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=4, window_calls=10))
    await fail_times(breaker, 3)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_count, snap.failure_rate) == (State.CLOSED, 3, 1.0)
    await fail_times(breaker, 1)
    assert breaker.state is State.OPEN


async def test_rate_verdict_can_fall_on_a_success(clock: FakeClock) -> None:
    """The verdict is taken whenever the window changes: the call that reaches minimum_calls
    trips the breaker even when it succeeds."""
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=3, window_calls=10))
    await fail_times(breaker, 2)
    assert await breaker.call(ok) == "ok"
    assert breaker.state is State.OPEN


async def test_rate_mode_ignores_failure_threshold(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, failure_rate=FailureRate(1.0, minimum_calls=5))
    await fail_times(breaker, 4)
    assert breaker.state is State.CLOSED
    await fail_times(breaker, 1)
    assert state_of(breaker) is State.OPEN


async def test_count_window_slides(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.75, minimum_calls=4, window_calls=4))
    await fail_times(breaker, 2)
    for _ in range(3):
        await breaker.call(ok)  # the window: fail ok ok ok
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count) == (4, 1)
    await fail_times(breaker, 1)  # ok ok ok fail: the first failures have fallen out
    assert breaker.snapshot().failure_count == 1
    await fail_times(breaker, 2)  # ok fail fail fail
    assert breaker.state is State.OPEN


async def test_count_window_wraps_many_times(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=3, window_calls=3))
    for _ in range(10):
        await breaker.call(ok)
        await fail_times(breaker, 1)
        await breaker.call(ok)
        snap = breaker.snapshot()
        assert (snap.state, snap.window_calls) == (State.CLOSED, 3)
        assert snap.failure_count == 1


async def test_time_window_forgets_calls_older_than_its_length(clock: FakeClock) -> None:
    rate = FailureRate(0.5, minimum_calls=2, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    await fail_times(breaker, 1)  # at 1000
    clock.advance(5)
    await breaker.call(ok)  # at 1005: 1 of 2 would trip, were the failure still there...
    assert breaker.state is State.OPEN  # ...and it is

    breaker = make(clock, failure_rate=rate)
    await fail_times(breaker, 1)  # at 1005
    clock.advance(9.99)
    assert breaker.snapshot().window_calls == 1
    clock.advance(0.01)  # 10 s later: gone, and the read alone evicted it
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count, snap.failure_rate) == (0, 0, None)
    await fail_times(breaker, 1)
    assert breaker.state is State.CLOSED  # one call, below minimum_calls


async def test_time_window_evicts_bucket_by_bucket(clock: FakeClock) -> None:
    rate = FailureRate(1.0, minimum_calls=3, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    await fail_times(breaker, 1)  # at 1000
    clock.advance(5)
    await fail_times(breaker, 1)  # at 1005
    clock.advance(5)  # 1010: the first is 10 s old, the second 5 s
    assert breaker.snapshot().window_calls == 1
    await fail_times(breaker, 1)
    assert breaker.state is State.CLOSED
    clock.advance(4.5)  # 1014.5: the one from 1005 is still there
    await fail_times(breaker, 1)
    assert state_of(breaker) is State.OPEN


async def test_time_window_below_minimum_never_trips(clock: FakeClock) -> None:
    rate = FailureRate(0.1, minimum_calls=3, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    for _ in range(20):
        await fail_times(breaker, 1)
        clock.advance(5)  # never more than 2 calls within 10 s
    assert breaker.state is State.CLOSED


async def test_time_window_precision_is_one_bucket(clock: FakeClock) -> None:
    """Calls fall into one-second buckets, and a bucket leaves the window whole: a call made
    late in a second counts for a little less than the window's length."""
    rate = FailureRate(1.0, minimum_calls=1, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    clock.advance(0.75)
    await breaker.call(ok)  # at 1000.75, in the bucket [1000, 1001)
    clock.advance(9.25 - 0.01)
    assert breaker.snapshot().window_calls == 1
    clock.advance(0.01)  # 1010: 9.25 s after the call
    assert breaker.snapshot().window_calls == 0


def test_time_window_memory_is_bounded() -> None:
    for seconds, buckets in ((0.5, 1), (2.5, 3), (60, 60), (10**9, 600)):
        rate = FailureRate(0.5, window_calls=None, window_seconds=seconds)
        window = CircuitBreaker("x", failure_rate=rate)._window
        assert isinstance(window, TimeWindow)
        assert len(window._bucket_calls) == buckets


async def test_slow_calls_trip_even_when_all_succeed(clock: FakeClock) -> None:
    rate = FailureRate(
        1.0, minimum_calls=4, window_calls=10, slow_call_seconds=2.0, slow_call_threshold=0.5
    )
    breaker = make(clock, failure_rate=rate)

    async def taking(seconds: float) -> str:
        clock.advance(seconds)
        return "ok"

    await breaker.call(taking, 2.0)  # slow: the limit is inclusive
    await breaker.call(taking, 1.99)
    await breaker.call(taking, 0.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate) == (State.CLOSED, 0.0)
    assert snap.slow_call_rate == pytest.approx(1 / 3)
    async with breaker.guard():  # a block is timed the same way
        clock.advance(5.0)
    assert breaker.state is State.OPEN


async def test_slow_calls_slide_out_of_a_count_window(clock: FakeClock) -> None:
    rate = FailureRate(
        1.0, minimum_calls=3, window_calls=3, slow_call_seconds=1.0, slow_call_threshold=0.6
    )
    breaker = make(clock, failure_rate=rate)

    async def slow() -> str:
        clock.advance(1.0)
        return "ok"

    await breaker.call(slow)
    for _ in range(4):
        await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.slow_call_rate) == (3, 0.0)
    await breaker.call(slow)
    assert state_of(breaker) is State.CLOSED  # 1 of 3: the first slow call is long gone
    await breaker.call(slow)
    assert state_of(breaker) is State.OPEN  # 2 of 3


async def test_a_guarded_block_is_timed_from_its_start(clock: FakeClock) -> None:
    rate = FailureRate(1.0, minimum_calls=2, window_calls=10, slow_call_seconds=1.0)
    breaker = make(clock, failure_rate=rate)
    async with breaker.guard():
        clock.advance(0.5)
    assert breaker.snapshot().slow_call_rate == 0.0
    async with breaker.guard():
        clock.advance(1.0)
    assert breaker.snapshot().slow_call_rate == 0.5


async def test_a_slow_failure_counts_as_both(clock: FakeClock) -> None:
    rate = FailureRate(0.5, minimum_calls=2, window_calls=10, slow_call_seconds=1.0)
    breaker = make(clock, failure_rate=rate)

    async def slow_failure() -> str:
        clock.advance(1.0)
        raise Boom

    with pytest.raises(Boom):
        await breaker.call(slow_failure)
    snap = breaker.snapshot()
    assert (snap.failure_rate, snap.slow_call_rate) == (1.0, 1.0)


async def test_slow_rate_is_zero_without_a_slow_limit(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5))

    async def slow() -> str:
        clock.advance(3600)
        return "ok"

    await breaker.call(slow)
    assert breaker.snapshot().slow_call_rate == 0.0


async def test_rate_ignores_ignored_and_cancelled_calls(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=1, window_calls=5))
    with pytest.raises(UnknownSymbol):
        await breaker.call(unknown)
    gate = Gate()
    task = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    inner = make(clock)
    inner.force_open()
    with pytest.raises(CircuitOpenError):
        await breaker.call(inner.call, ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls) == (State.CLOSED, 0)


async def test_window_is_cleared_on_every_state_change(clock: FakeClock) -> None:
    breaker = make(
        clock,
        success_threshold=1,
        failure_rate=FailureRate(0.5, minimum_calls=2, window_calls=10),
    )
    await breaker.call(ok)
    await fail_times(breaker, 1)
    assert breaker.state is State.OPEN
    assert breaker.snapshot().window_calls == 0
    clock.advance(30)
    await breaker.call(ok)  # the probe closes it
    assert breaker.snapshot().window_calls == 0
    await fail_times(breaker, 1)  # the failures before the trip are forgotten
    assert (breaker.state, breaker.snapshot().window_calls) == (State.CLOSED, 1)
    breaker.reset()
    assert breaker.snapshot().window_calls == 0
    await breaker.call(ok)
    breaker.force_open()
    breaker.reset()
    assert breaker.snapshot().window_calls == 0


async def test_rate_mode_half_open_is_unchanged(clock: FakeClock) -> None:
    breaker = make(
        clock, success_threshold=2, failure_rate=FailureRate(0.5, minimum_calls=1, window_calls=5)
    )
    await fail_times(breaker, 1)
    clock.advance(30)
    await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count, snap.window_calls) == (State.HALF_OPEN, 1, 0)
    await fail_times(breaker, 1)  # the first failure re-opens
    assert breaker.state is State.OPEN
    clock.advance(30)
    await breaker.call(ok)
    await breaker.call(ok)
    assert state_of(breaker) is State.CLOSED


async def test_rate_mode_does_not_record_stale_results(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=1, window_calls=5))
    gate = Gate()

    def boom() -> str:
        raise Boom

    late_failure = asyncio.create_task(breaker.call(gate, boom))
    late_success = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    breaker.reset()  # a new generation, still CLOSED
    gate.release.set()
    with pytest.raises(Boom):
        await late_failure
    await late_success
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls) == (State.CLOSED, 0)


async def test_rate_mode_reports_durations_to_listeners(clock: FakeClock) -> None:
    durations: list[float] = []

    class Timer(Listener):
        def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
            durations.append(duration)

    breaker = CircuitBreaker("x", clock=clock, listeners=[Timer()], failure_rate=FailureRate(1.0))

    async def slow() -> str:
        clock.advance(1.5)
        return "ok"

    await breaker.call(slow)
    assert durations == [1.5]
