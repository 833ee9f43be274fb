from __future__ import annotations

import asyncio

import pytest

from app.cache import Hit, SingleFlight, TTLCache
from tests.conftest import FakeClock


def make(clock: FakeClock, max_entries: int = 10) -> TTLCache[str, int]:
    return TTLCache(ttl=10, stale=100, max_entries=max_entries, clock=clock)


def test_entries_are_fresh_then_stale_then_gone() -> None:
    clock = FakeClock()
    cache = make(clock)
    assert cache.put("a", 1) == Hit(1, fresh=True, age=0, ttl=10)
    assert cache.get("a") == Hit(1, fresh=True, age=0, ttl=10)
    clock.advance(10)
    assert cache.get("a") == Hit(1, fresh=False, age=10, ttl=10)
    clock.advance(99.5)
    assert cache.get("a") == Hit(1, fresh=False, age=109.5, ttl=10)
    clock.advance(0.5)
    assert cache.get("a") is None
    assert len(cache) == 0


def test_put_refreshes_an_entry() -> None:
    clock = FakeClock()
    cache = make(clock)
    cache.put("a", 1)
    clock.advance(50)
    cache.put("a", 2)
    assert cache.get("a") == Hit(2, fresh=True, age=0, ttl=10)


def test_a_put_can_give_its_entry_its_own_ttl() -> None:
    clock = FakeClock()
    cache = make(clock)  # ttl=10, stale=100
    cache.put("short", 1, ttl=2)
    cache.put("long", 2, ttl=60)
    cache.put("default", 3)
    clock.advance(2)
    assert cache.get("short") == Hit(1, fresh=False, age=2, ttl=2)
    assert cache.get("long") == Hit(2, fresh=True, age=2, ttl=60)
    assert cache.get("default") == Hit(3, fresh=True, age=2, ttl=10)
    clock.advance(8)
    assert cache.get("default") == Hit(3, fresh=False, age=10, ttl=10)
    assert cache.get("long") == Hit(2, fresh=True, age=10, ttl=60)
    clock.advance(92)  # 102 s: past the short entry's 2 + 100, within the long one's 60 + 100
    assert cache.get("short") is None
    assert cache.get("long") == Hit(2, fresh=False, age=102, ttl=60)


def test_an_entry_from_elsewhere_keeps_its_own_ttl_less_its_age() -> None:
    clock = FakeClock()
    cache = make(clock)
    assert cache.put("a", 1, age=50, ttl=60) == Hit(1, fresh=True, age=50, ttl=60)
    assert cache.get("a") == Hit(1, fresh=True, age=50, ttl=60)
    clock.advance(10)
    assert cache.get("a") == Hit(1, fresh=False, age=60, ttl=60)


def test_least_recently_used_entry_goes_first() -> None:
    clock = FakeClock()
    cache = make(clock, max_entries=2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.get("a")  # a is now more recent than b
    cache.put("c", 3)
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None


async def test_concurrent_runs_share_one_call() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    calls = 0
    release = asyncio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    waiting = asyncio.gather(*(flights.run("k", fetch) for _ in range(50)))
    await asyncio.sleep(0)
    assert len(flights) == 1
    release.set()
    assert await waiting == [42] * 50
    assert calls == 1
    assert len(flights) == 0


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def fetch() -> int:
        await asyncio.sleep(0)
        raise ValueError("upstream")

    results = await asyncio.gather(
        *(flights.run("k", fetch) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, ValueError) for result in results)

    async def ok() -> int:
        return 1

    assert await flights.run("k", ok) == 1


async def test_a_cancelled_waiter_does_not_cancel_the_shared_call() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    release = asyncio.Event()

    async def fetch() -> int:
        await release.wait()
        return 7

    first = asyncio.create_task(flights.run("k", fetch))
    second = asyncio.create_task(flights.run("k", fetch))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    assert await second == 7


async def test_aclose_cancels_flights_in_progress() -> None:
    flights: SingleFlight[str, int] = SingleFlight()

    async def forever() -> int:
        await asyncio.Event().wait()
        return 0

    waiter = asyncio.create_task(flights.run("k", forever))
    await asyncio.sleep(0)
    await flights.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter
