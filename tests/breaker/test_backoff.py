"""Backoff of the open timeout (the README's Semantics 11): Backoff's settings, and how long
each re-open from HALF_OPEN lasts, on a fake clock and an injected random()."""

from __future__ import annotations

import pytest

from app.breaker import Backoff, CircuitBreaker, CircuitOpenError, FailureRate, State
from tests.breaker.conftest import fail_times, make, ok, state_of, trip
from tests.conftest import FakeClock

# -- 11. backoff of the open timeout -------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"multiplier": 0.99}, "multiplier"),
        ({"multiplier": float("inf")}, "multiplier"),
        ({"multiplier": float("nan")}, "multiplier"),
        ({"max_timeout": -1.0}, "max_timeout"),
        ({"max_timeout": float("inf")}, "max_timeout"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": 1.0}, "jitter"),
    ],
)
def test_invalid_backoff_raises_value_error(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**settings)  # type: ignore[arg-type]


class Randoms:
    """An injected random(): hands out the given values in turn, counting the draws."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)
        self.draws = 0

    def __call__(self) -> float:
        value = self.values[self.draws % len(self.values)]
        self.draws += 1
        return value


async def reopen(breaker: CircuitBreaker, clock: FakeClock) -> None:
    """Wait out the open timeout, then fail the probe."""
    clock.advance(breaker.snapshot().retry_after)
    assert state_of(breaker) is State.HALF_OPEN
    await fail_times(breaker, 1)
    assert breaker.state is State.OPEN


async def test_backoff_doubles_the_timeout_up_to_its_cap(clock: FakeClock) -> None:
    randoms = Randoms(0.5)
    breaker = make(clock, backoff=Backoff(2.0, max_timeout=300, jitter=0), random=randoms)
    await trip(breaker)
    snap = breaker.snapshot()
    assert (snap.open_timeout, snap.reopens, snap.retry_after) == (30, 0, 30)
    assert randoms.draws == 0  # the first opening is never jittered
    for reopens, timeout in enumerate((60, 120, 240, 300, 300), start=1):
        await reopen(breaker, clock)
        snap = breaker.snapshot()
        assert (snap.open_timeout, snap.reopens, snap.retry_after) == (timeout, reopens, timeout)
        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(ok)
        assert info.value.retry_after == timeout
        clock.advance(timeout - 0.001)
        assert state_of(breaker) is State.OPEN  # it really stays open that long
        clock.advance(-(timeout - 0.001))


@pytest.mark.parametrize(
    ("draw", "timeouts"),
    [
        (0.0, (10 * 2 * 0.5, 10 * 4 * 0.5, 10 * 8 * 0.5)),
        (1.0, (10 * 2 * 1.5, 50, 50)),  # 10 * 4 * 1.5 = 60: jitter applies before the cap
    ],
)
async def test_backoff_jitter_stays_within_its_bounds(
    clock: FakeClock, draw: float, timeouts: tuple[float, ...]
) -> None:
    randoms = Randoms(draw)
    breaker = make(
        clock, timeout=10, backoff=Backoff(2.0, max_timeout=50, jitter=0.5), random=randoms
    )
    await trip(breaker)
    assert breaker.snapshot().open_timeout == 10
    for timeout in timeouts:
        await reopen(breaker, clock)
        assert breaker.snapshot().open_timeout == timeout
    assert randoms.draws == len(timeouts)  # one draw per re-open, taken when it opens


async def test_backoff_starts_over_when_the_breaker_closes(clock: FakeClock) -> None:
    breaker = make(clock, success_threshold=1, backoff=Backoff(2.0, jitter=0))
    await trip(breaker)
    await reopen(breaker, clock)
    await reopen(breaker, clock)
    assert breaker.snapshot().open_timeout == 120
    clock.advance(120)
    await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.reopens, snap.open_timeout) == (State.CLOSED, 0, 120)
    await trip(breaker)
    assert breaker.snapshot().open_timeout == 30  # a fresh opening from CLOSED
    await reopen(breaker, clock)
    assert breaker.snapshot().open_timeout == 60  # and the first re-open again


async def test_backoff_starts_over_on_reset(clock: FakeClock) -> None:
    breaker = make(clock, backoff=Backoff(2.0, jitter=0))
    await trip(breaker)
    await reopen(breaker, clock)
    await reopen(breaker, clock)
    breaker.reset()
    assert breaker.snapshot().reopens == 0
    await trip(breaker)
    await reopen(breaker, clock)
    snap = breaker.snapshot()
    assert (snap.reopens, snap.open_timeout) == (1, 60)


async def test_reopens_are_counted_without_backoff(clock: FakeClock) -> None:
    breaker = make(clock)
    await trip(breaker)
    await reopen(breaker, clock)
    await reopen(breaker, clock)
    snap = breaker.snapshot()
    assert (snap.reopens, snap.open_timeout, snap.retry_after) == (2, 30, 30)


async def test_force_open_ignores_backoff(clock: FakeClock) -> None:
    breaker = make(clock, backoff=Backoff(2.0, jitter=0))
    await trip(breaker)
    await reopen(breaker, clock)
    clock.advance(60)
    assert state_of(breaker) is State.HALF_OPEN
    breaker.force_open()  # manual: not a re-open
    snap = breaker.snapshot()
    assert (snap.reopens, snap.open_timeout, snap.retry_after) == (1, 30, 30)
    clock.advance(10**6)
    assert state_of(breaker) is State.OPEN


@pytest.mark.parametrize(("open_for", "expected"), [(30.0, 300.0), (0.0, 0.0)])
async def test_backoff_survives_huge_exponents(
    clock: FakeClock, open_for: float, expected: float
) -> None:
    # 1e10**31 is past the largest float: the exponent must not overflow.
    breaker = make(
        clock,
        failure_threshold=1,
        timeout=open_for,
        backoff=Backoff(1e10, max_timeout=300, jitter=0.5),
    )
    await fail_times(breaker, 1)
    for _ in range(40):
        clock.advance(breaker.snapshot().retry_after)
        await fail_times(breaker, 1)  # the probe fails
    snap = breaker.snapshot()
    assert (snap.reopens, snap.open_timeout) == (40, expected)
    assert type(snap.open_timeout) is float


async def test_backoff_and_failure_rate_together(clock: FakeClock) -> None:
    breaker = make(
        clock,
        failure_rate=FailureRate(0.5, minimum_calls=2, window_calls=4),
        backoff=Backoff(3.0, jitter=0),
        random=Randoms(0.0),
    )
    await fail_times(breaker, 2)
    assert breaker.snapshot().open_timeout == 30
    await reopen(breaker, clock)
    assert breaker.snapshot().open_timeout == 90
