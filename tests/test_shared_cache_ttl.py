"""SharedCache's per-value TTL (pass-through functions each have one), on a fake clock."""

from __future__ import annotations

from app.shared_cache import SharedCache
from app.state import MemoryState
from tests.conftest import FakeClock


def make(clock: FakeClock) -> SharedCache:
    return SharedCache(
        MemoryState(clock), namespace="k", ttl=10, stale=100, lease_seconds=5, clock=clock
    )


async def test_a_put_can_give_its_value_its_own_ttl() -> None:
    clock = FakeClock()
    shared = make(clock)
    await shared.put("short", {"v": 1}, ttl=2)
    await shared.put("default", {"v": 2})
    clock.advance(2)
    short, default = await shared.get("short"), await shared.get("default")
    assert short is not None
    assert (short.fresh, short.age, short.ttl) == (False, 2, 2)
    assert default is not None
    assert (default.fresh, default.age, default.ttl) == (True, 2, 10)
    clock.advance(100)  # 102 s: past the short value's 2 + 100 kept, within the default's 110
    assert await shared.get("short") is None
    assert await shared.get("default") is not None


async def test_a_document_without_a_ttl_gets_the_tiers_own() -> None:
    # As written before TTLs were per value (a rolling deploy shares the store).
    clock = FakeClock()
    state = MemoryState(clock)
    shared = SharedCache(state, namespace="k", ttl=10, stale=100, lease_seconds=5, clock=clock)
    await state.update(
        "cache:k:value:old", lambda _doc, now: ({"value": {"v": 1}, "fetched_at": now}, None)
    )
    clock.advance(9)
    hit = await shared.get("old")
    assert hit is not None
    assert (hit.fresh, hit.ttl) == (True, 10)
    clock.advance(1)
    hit = await shared.get("old")
    assert hit is not None
    assert not hit.fresh
