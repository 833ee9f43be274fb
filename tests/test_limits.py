from __future__ import annotations

import asyncio
import itertools

import pytest

from app.errors import Throttled
from app.limits import DAY, Bulkhead, DailyQuota, TokenBucket, UpstreamLimits
from tests.conftest import FakeClock

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


async def test_admit_checks_the_quota_before_taking_a_slot_or_a_token() -> None:
    clock = FakeClock()
    quota = DailyQuota(limit=1, clock=clock)
    pacing = TokenBucket(rate=1, burst=1, clock=clock)
    limits = UpstreamLimits(pacing=pacing, quota=quota, max_wait=2, clock=clock)
    bulkhead = Bulkhead("b", 1)
    async with limits.admit(bulkhead):
        limits.count_call()
    with pytest.raises(Throttled) as caught:
        async with limits.admit(bulkhead):
            pass
    assert caught.value.reason == "quota"
    assert pacing.tokens() == 0  # the refused call took no token


async def test_admit_waits_for_a_paced_turn_within_max_wait() -> None:
    pacing = TokenBucket(rate=50, burst=1)  # real clock: turns 20 ms apart
    limits = UpstreamLimits(pacing=pacing, quota=None, max_wait=1)
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
    limits = UpstreamLimits(
        pacing=TokenBucket(rate=1, burst=1, clock=clock), quota=None, max_wait=0, clock=clock
    )
    bulkhead = Bulkhead("b", 4)
    async with limits.admit(bulkhead):
        pass
    with pytest.raises(Throttled) as caught:
        async with limits.admit(bulkhead):
            pass
    assert caught.value.reason == "pacing"
    assert bulkhead.in_flight == 0  # the refused call gave its slot back


def test_count_call_does_nothing_without_a_quota() -> None:
    limits = UpstreamLimits(pacing=None, quota=None, max_wait=2)
    for _ in range(100):
        limits.count_call()


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
    quota = DailyQuota(limit=25, clock=clock)
    limits = UpstreamLimits(
        pacing=TokenBucket(rate=1, burst=1, clock=clock), quota=quota, max_wait=0, clock=clock
    )
    limits.limit_reached(period, seconds)
    with pytest.raises(Throttled) as caught:
        await admitted_or_raise(limits)
    assert (caught.value.reason, caught.value.retry_after) == ("pacing", seconds)
    assert limits.paused_for() == seconds
    clock.advance(seconds - 0.5)
    assert not await admitted(limits)
    clock.advance(0.5)
    assert await admitted(limits)
    assert quota.status().remaining == 25
    assert quota.status().blocked_for == 0


async def test_a_shorter_pause_never_cuts_a_longer_one() -> None:
    clock = FakeClock()
    limits = UpstreamLimits(pacing=None, quota=None, max_wait=0, clock=clock)
    limits.limit_reached("minute", 60)
    limits.limit_reached("second", 1)
    assert limits.paused_for() == 60


async def test_admit_waits_out_a_short_pause_within_max_wait() -> None:
    limits = UpstreamLimits(pacing=None, quota=None, max_wait=1)  # real clock
    loop = asyncio.get_running_loop()
    limits.limit_reached("second", 0.05)
    started = loop.time()
    assert await admitted(limits)
    assert loop.time() - started >= 0.04


async def test_a_daily_answer_spends_the_quota_until_its_window_frees_up() -> None:
    clock = FakeClock()
    quota = DailyQuota(limit=25, clock=clock)
    limits = UpstreamLimits(pacing=None, quota=quota, max_wait=0, clock=clock)
    async with limits.admit(Bulkhead("b", 1)):
        limits.count_call()
    clock.advance(100)
    limits.limit_reached("day", 3600)
    with pytest.raises(Throttled) as caught:
        await admitted_or_raise(limits)
    assert (caught.value.reason, caught.value.retry_after) == ("quota", DAY - 100)
    assert quota.status().remaining == 0
    clock.advance(DAY - 101)
    assert not await admitted(limits)
    clock.advance(1)
    assert await admitted(limits)


async def test_a_daily_answer_stops_calls_for_a_day_with_the_quota_off_too() -> None:
    """A key that says it is spent is spent, whatever the service counts."""
    clock = FakeClock()
    limits = UpstreamLimits(pacing=None, quota=None, max_wait=0, clock=clock)
    limits.limit_reached("day", 3600)
    with pytest.raises(Throttled) as caught:
        await admitted_or_raise(limits)
    assert (caught.value.reason, caught.value.retry_after) == ("quota", DAY)
    clock.advance(DAY - 1)
    assert not await admitted(limits)
    clock.advance(1)
    assert await admitted(limits)
