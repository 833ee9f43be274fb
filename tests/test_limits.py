from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TypeVar

import pytest

from app.errors import StoreUnavailable, Throttled
from app.limits import DAY, Bulkhead, DailyQuota, State, TokenBucket, UpstreamLimits
from app.state import MemoryState
from tests.conftest import FakeClock

R = TypeVar("R")

# -- TokenBucket ---------------------------------------------------------------------------


def test_bucket_allows_a_burst_then_paces_reservations_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.reserve(max_wait=10) for _ in range(3)] == [0, 0, 0]
    # The next ones own tokens still to come, half a second apart.
    assert bucket.reserve(max_wait=10) == pytest.approx(0.5)
    assert bucket.reserve(max_wait=10) == pytest.approx(1.0)
    assert bucket.tokens() == pytest.approx(-2.0)


def test_bucket_refuses_a_wait_over_max_wait_without_taking_a_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=1, clock=clock)
    bucket.reserve(max_wait=2)
    assert bucket.reserve(max_wait=2) == pytest.approx(1.0)
    assert bucket.reserve(max_wait=2) == pytest.approx(2.0)
    with pytest.raises(Throttled) as caught:
        bucket.reserve(max_wait=2)
    assert caught.value.reason == "pacing"
    assert caught.value.retry_after == 1  # 3 s to a token, 2 of them it could have waited
    assert bucket.tokens() == pytest.approx(-2.0)  # nothing was taken


def test_bucket_refills_up_to_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=1.0, burst=2, clock=clock)
    bucket.reserve(max_wait=0)
    bucket.reserve(max_wait=0)
    with pytest.raises(Throttled):
        bucket.reserve(max_wait=0)
    clock.advance(1.0)
    assert bucket.reserve(max_wait=0) == 0
    clock.advance(3600)
    assert bucket.tokens() == 2.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (float("inf"), 1), (1, 0)])
def test_bucket_rejects_nonsense(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="need rate > 0 and burst >= 1"):
        TokenBucket(rate, burst)


# -- DailyQuota ----------------------------------------------------------------------------


def test_quota_counts_calls_over_a_rolling_window() -> None:
    clock = FakeClock()
    quota = DailyQuota(limit=3, window=100, clock=clock)
    quota.take()
    clock.advance(10)
    quota.take()
    quota.take()
    status = quota.status()
    assert (status.used, status.remaining, status.next_refill_in) == (3, 0, 90)
    with pytest.raises(Throttled) as caught:
        quota.take()
    assert caught.value.reason == "quota"
    assert caught.value.retry_after == 90  # when the first call leaves the window
    clock.advance(90)
    assert quota.status().remaining == 1
    quota.take()
    with pytest.raises(Throttled) as caught:
        quota.check()
    assert caught.value.retry_after == 10  # the two calls made at t=10 leave at t=110


def test_quota_status_when_nothing_was_called() -> None:
    quota = DailyQuota(limit=25, clock=FakeClock())
    status = quota.status()
    assert (status.limit, status.used, status.remaining) == (25, 0, 25)
    assert status.next_refill_in is None
    assert status.blocked_for == 0
    assert quota.window == DAY


def test_exhaust_blocks_until_the_oldest_counted_call_leaves_the_window() -> None:
    clock = FakeClock()
    quota = DailyQuota(limit=25, window=DAY, clock=clock)
    quota.take()
    clock.advance(3600)
    quota.take()
    quota.exhaust()  # Alpha Vantage says the day is spent: others share the key
    status = quota.status()
    assert status.remaining == 0
    assert status.blocked_for == DAY - 3600
    with pytest.raises(Throttled) as caught:
        quota.check()
    assert caught.value.retry_after == DAY - 3600
    clock.advance(DAY - 3600)
    quota.check()
    assert quota.status().remaining == 24  # the first call left; the second still counts


def test_exhaust_with_no_counted_call_blocks_a_whole_window() -> None:
    clock = FakeClock()
    quota = DailyQuota(limit=25, window=DAY, clock=clock)
    quota.exhaust()
    clock.advance(DAY - 1)
    with pytest.raises(Throttled):
        quota.check()
    clock.advance(1)
    quota.check()


@pytest.mark.parametrize(("limit", "window"), [(0, DAY), (1, 0), (1, float("nan"))])
def test_quota_rejects_nonsense(limit: int, window: float) -> None:
    with pytest.raises(ValueError, match="need limit >= 1 and window > 0"):
        DailyQuota(limit, window)


# -- Bulkhead ------------------------------------------------------------------------------


async def test_bulkhead_refuses_beyond_its_size_after_a_bounded_wait() -> None:
    bulkhead = Bulkhead("b", max_concurrency=2)
    release = asyncio.Event()

    async def hold(max_wait: float = 0) -> None:
        async with bulkhead.slot(max_wait):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    assert bulkhead.in_flight == 2
    with pytest.raises(Throttled) as caught:
        async with bulkhead.slot(max_wait=0.01):
            pass
    assert (caught.value.reason, caught.value.retry_after) == ("bulkhead", 1)

    # A waiter within its bound gets the first slot that frees.
    waiter = asyncio.create_task(hold(max_wait=10))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*holders, waiter)
    assert bulkhead.in_flight == 0


async def test_bulkhead_frees_its_slot_when_the_call_fails_or_is_cancelled() -> None:
    bulkhead = Bulkhead("b", max_concurrency=1)
    with pytest.raises(RuntimeError):
        async with bulkhead.slot(max_wait=0):
            raise RuntimeError
    started = asyncio.Event()

    async def hang() -> None:
        async with bulkhead.slot(max_wait=0):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(hang())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert bulkhead.in_flight == 0
    async with bulkhead.slot(max_wait=0):
        assert bulkhead.in_flight == 1


# -- UpstreamLimits ------------------------------------------------------------------------


def make_limits(
    clock: FakeClock | None = None,
    *,
    pacing: tuple[float, int] | None = None,
    quota: tuple[int, float] | None = None,
    max_wait: float = 0,
) -> UpstreamLimits:
    """Limits on a memory store that reads `clock` (the real clocks without one)."""
    state = MemoryState() if clock is None else MemoryState(clock)
    kwargs = {} if clock is None else {"clock": clock}
    return UpstreamLimits(state, key="k", pacing=pacing, quota=quota, max_wait=max_wait, **kwargs)


async def test_admit_checks_the_quota_before_taking_a_slot_or_a_token() -> None:
    clock = FakeClock()
    limits = make_limits(clock, pacing=(1, 1), quota=(1, DAY), max_wait=2)
    bulkhead = Bulkhead("b", 1)
    async with limits.admit(bulkhead):
        await limits.count_call()
    with pytest.raises(Throttled) as caught:
        async with limits.admit(bulkhead):
            pass
    assert caught.value.reason == "quota"
    assert (await limits.status()).tokens == 0  # the refused call took no token


async def test_admit_waits_for_a_paced_turn_within_max_wait() -> None:
    limits = make_limits(pacing=(50, 1), max_wait=1)  # real clock: turns 20 ms apart
    bulkhead = Bulkhead("b", 4)
    loop = asyncio.get_running_loop()
    started: list[float] = []

    async def call() -> None:
        async with limits.admit(bulkhead):
            started.append(loop.time())

    await asyncio.gather(*(call() for _ in range(3)))
    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert all(gap >= 0.015 for gap in gaps), gaps


async def test_admit_refuses_pacing_waits_over_max_wait() -> None:
    clock = FakeClock()
    limits = make_limits(clock, pacing=(1, 1), max_wait=0)
    bulkhead = Bulkhead("b", 4)
    async with limits.admit(bulkhead):
        pass
    with pytest.raises(Throttled) as caught:
        async with limits.admit(bulkhead):
            pass
    assert caught.value.reason == "pacing"
    assert bulkhead.in_flight == 0  # the refused call gave its slot back


async def test_count_call_does_nothing_without_a_quota() -> None:
    limits = make_limits()
    for _ in range(100):
        await limits.count_call()
    assert (await limits.status()).quota is None


async def test_the_state_is_the_stores_so_limits_over_one_store_share_one_budget() -> None:
    """Two processes' limits over one store, as SQLite or Redis give them: one budget."""
    clock = FakeClock()
    state = MemoryState(clock)
    first, second = (
        UpstreamLimits(state, key="k", pacing=None, quota=(2, DAY), max_wait=0, clock=clock)
        for _ in range(2)
    )
    await first.count_call()
    await second.count_call()
    for limits in (first, second):
        with pytest.raises(Throttled):
            await limits.count_call()
    other_key = UpstreamLimits(state, key="other", pacing=None, quota=(2, DAY), max_wait=0)
    await other_key.count_call()  # another API key has a budget of its own


async def test_a_store_that_does_not_answer_makes_no_call_possible() -> None:
    """No upstream call while the budget cannot be proven."""

    class DeadState:
        async def update(self, key: str, change: Callable[[State, float], tuple[State, R]]) -> R:
            raise StoreUnavailable("down")

    limits = UpstreamLimits(DeadState(), key="k", pacing=None, quota=(25, DAY), max_wait=0)
    with pytest.raises(Throttled) as caught:
        async with limits.admit(Bulkhead("b", 1)):
            pass
    assert caught.value.reason == "store"
    assert "store" in caught.value.detail


# -- the upstream's own limit answers --------------------------------------------------------


async def admitted(limits: UpstreamLimits) -> bool:
    try:
        async with limits.admit(Bulkhead("b", 4)):
            return True
    except Throttled:
        return False


async def admitted_or_raise(limits: UpstreamLimits) -> None:
    async with limits.admit(Bulkhead("b", 4)):
        pass


@pytest.mark.parametrize(("period", "seconds"), [("second", 1), ("minute", 60), (None, 30)])
async def test_a_short_limit_pauses_calls_for_its_period_and_leaves_the_day_alone(
    period: str | None, seconds: int
) -> None:
    clock = FakeClock()
    limits = make_limits(clock, pacing=(1, 1), quota=(25, DAY))
    assert await limits.limit_reached(period, seconds) == seconds
    with pytest.raises(Throttled) as caught:
        await admitted_or_raise(limits)
    assert (caught.value.reason, caught.value.retry_after) == ("pacing", seconds)
    assert (await limits.status()).paused_for == seconds
    clock.advance(seconds - 0.5)
    assert not await admitted(limits)
    clock.advance(0.5)
    assert await admitted(limits)
    quota = (await limits.status()).quota
    assert quota is not None
    assert (quota.remaining, quota.blocked_for) == (25, 0)


async def test_a_shorter_pause_never_cuts_a_longer_one() -> None:
    limits = make_limits(FakeClock())
    await limits.limit_reached("minute", 60)
    assert await limits.limit_reached("second", 1) == 60
    assert (await limits.status()).paused_for == 60


async def test_admit_waits_out_a_short_pause_within_max_wait() -> None:
    limits = make_limits(max_wait=1)  # real clock
    loop = asyncio.get_running_loop()
    await limits.limit_reached("second", 0.05)
    started = loop.time()
    assert await admitted(limits)
    assert loop.time() - started >= 0.04


async def test_a_daily_answer_spends_the_quota_until_its_window_frees_up() -> None:
    clock = FakeClock()
    limits = make_limits(clock, quota=(25, DAY))
    async with limits.admit(Bulkhead("b", 1)):
        await limits.count_call()
    clock.advance(100)
    assert await limits.limit_reached("day", 3600) == DAY - 100
    with pytest.raises(Throttled) as caught:
        await admitted_or_raise(limits)
    assert (caught.value.reason, caught.value.retry_after) == ("quota", DAY - 100)
    quota = (await limits.status()).quota
    assert quota is not None
    assert quota.remaining == 0
    clock.advance(DAY - 101)
    assert not await admitted(limits)
    clock.advance(1)
    assert await admitted(limits)


async def test_a_daily_answer_stops_calls_for_a_day_with_the_quota_off_too() -> None:
    """A key that says it is spent is spent, whatever the service counts."""
    clock = FakeClock()
    limits = make_limits(clock)
    assert await limits.limit_reached("day", 3600) == DAY
    with pytest.raises(Throttled) as caught:
        await admitted_or_raise(limits)
    assert (caught.value.reason, caught.value.retry_after) == ("quota", DAY)
    clock.advance(DAY - 1)
    assert not await admitted(limits)
    clock.advance(1)
    assert await admitted(limits)
