"""The consumer registry, budgets and rates (app/consumers.py) on MemoryState and a fake clock:
tokens kept only as hashes, a revocation seen within a second, the last document standing in
for a store that is down, and the ledger and bucket behaving as the key's own do."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TypeVar

import pytest

from app.consumers import (
    REGISTRY_KEY,
    ConsumerLimits,
    ConsumerRegistry,
    token_hash,
)
from app.errors import ConsumerThrottled, StoreUnavailable, Throttled, Unauthorized
from app.limits import DAY, State
from app.state import MemoryState
from tests.conftest import FakeClock

R = TypeVar("R")


class SwitchableState(MemoryState):
    """MemoryState that can be made not to answer, as a store in an outage."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.down = False

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R:
        if self.down:
            raise StoreUnavailable("down on purpose")
        return await super().update(key, change, keep_for)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> SwitchableState:
    return SwitchableState(clock)


@pytest.fixture
def registry(store: SwitchableState, clock: FakeClock) -> ConsumerRegistry:
    return ConsumerRegistry(store, clock)


@pytest.fixture
def limits(store: SwitchableState) -> ConsumerLimits:
    return ConsumerLimits(store)


async def stored_document(store: MemoryState) -> State:
    return await store.update(REGISTRY_KEY, lambda document, now: (document, document))


# -- the registry ------------------------------------------------------------------------------


async def test_a_token_is_long_random_and_kept_only_as_its_hash(
    registry: ConsumerRegistry, store: SwitchableState
) -> None:
    token = await registry.add("alice", 10, None)
    other = await registry.add("bob", None, None)
    assert len(token) >= 43
    assert token != other
    document = await stored_document(store)
    assert token not in repr(document)
    assert document is not None
    stored = document["consumers"]["alice"]["token_sha256"]
    assert stored == hashlib.sha256(token.encode()).hexdigest() == token_hash(token)


async def test_with_no_consumer_the_service_is_open(registry: ConsumerRegistry) -> None:
    assert await registry.authenticate(None) is None
    assert await registry.authenticate("anything") is None


async def test_once_a_consumer_exists_a_token_is_needed(
    registry: ConsumerRegistry, clock: FakeClock
) -> None:
    token = await registry.add("alice", None, None)
    consumer = await registry.authenticate(token)
    assert consumer is not None
    assert consumer.name == "alice"
    for wrong in (None, "", token[:-1], token + "x", "Bearer " + token):
        with pytest.raises(Unauthorized):
            await registry.authenticate(wrong)


async def test_names_limits_and_duplicates_are_checked(registry: ConsumerRegistry) -> None:
    await registry.add("alice", None, None)
    for name, calls, rate in [
        ("alice", None, None),  # in use
        ("Alice!", None, None),
        ("", None, None),
        ("a" * 33, None, None),
        ("bob", 0, None),
        ("bob", None, 0.0),
        ("bob", None, float("inf")),
    ]:
        with pytest.raises(ValueError, match=r"consumer|calls per day|requests per second"):
            await registry.add(name, calls, rate)
    assert set(await registry.all()) == {"alice"}


async def test_a_revocation_reaches_another_process_within_a_second(
    store: SwitchableState, clock: FakeClock
) -> None:
    cli, process = ConsumerRegistry(store, clock), ConsumerRegistry(store, clock)
    token = await cli.add("alice", None, None)
    await cli.add("bob", None, None)
    assert await process.authenticate(token) is not None
    assert await cli.revoke("alice") is True
    assert await cli.revoke("alice") is False
    clock.advance(0.5)
    assert await process.authenticate(token) is not None  # its cached document, still
    clock.advance(0.5)
    with pytest.raises(Unauthorized):
        await process.authenticate(token)


async def test_a_store_outage_keeps_the_last_document_seen(
    store: SwitchableState, clock: FakeClock
) -> None:
    cli, process = ConsumerRegistry(store, clock), ConsumerRegistry(store, clock)
    token = await cli.add("alice", None, None)
    assert await process.authenticate(token) is not None
    store.down = True
    clock.advance(60)
    consumer = await process.authenticate(token)
    assert consumer is not None
    assert consumer.name == "alice"
    with pytest.raises(Unauthorized):
        await process.authenticate("wrong")


async def test_a_process_that_never_read_the_consumers_answers_503(
    store: SwitchableState, clock: FakeClock
) -> None:
    store.down = True
    with pytest.raises(Throttled) as caught:
        await ConsumerRegistry(store, clock).authenticate("any")
    assert caught.value.reason == "store"
    assert not isinstance(caught.value, ConsumerThrottled)  # a 503, not the caller's fault


# -- the budget --------------------------------------------------------------------------------


async def test_the_budget_counts_charges_in_a_rolling_day(
    registry: ConsumerRegistry, limits: ConsumerLimits, clock: FakeClock
) -> None:
    await registry.add("alice", 2, None)
    alice = (await registry.all())["alice"]
    await limits.check(alice)
    await limits.charge(alice)
    clock.advance(100)
    await limits.charge(alice)
    with pytest.raises(ConsumerThrottled) as caught:
        await limits.check(alice)
    assert caught.value.reason == "consumer_budget"
    assert caught.value.retry_after == DAY - 100  # when the first charge leaves the day
    with pytest.raises(ConsumerThrottled):
        await limits.charge(alice)
    usage = await limits.usage(alice)
    assert usage.quota is not None
    assert (usage.quota.used, usage.quota.remaining) == (2, 0)
    assert usage.quota.next_refill_in == DAY - 100
    clock.advance(DAY - 100)
    await limits.charge(alice)


async def test_a_refund_gives_back_a_charge_for_a_call_not_made(
    registry: ConsumerRegistry, limits: ConsumerLimits
) -> None:
    await registry.add("alice", 1, None)
    alice = (await registry.all())["alice"]
    await limits.charge(alice)
    await limits.refund(alice)
    await limits.charge(alice)


async def test_budgets_are_per_consumer(registry: ConsumerRegistry, limits: ConsumerLimits) -> None:
    await registry.add("alice", 1, None)
    await registry.add("bob", 1, None)
    consumers = await registry.all()
    await limits.charge(consumers["alice"])
    with pytest.raises(ConsumerThrottled):
        await limits.check(consumers["alice"])
    await limits.check(consumers["bob"])


async def test_without_a_budget_nothing_is_counted(
    registry: ConsumerRegistry, limits: ConsumerLimits
) -> None:
    await registry.add("alice", None, None)
    alice = (await registry.all())["alice"]
    for _ in range(100):
        await limits.charge(alice)
    assert (await limits.usage(alice)).quota is None


async def test_no_budget_is_proven_while_the_store_is_down(
    registry: ConsumerRegistry, limits: ConsumerLimits, store: SwitchableState
) -> None:
    await registry.add("alice", 5, None)
    alice = (await registry.all())["alice"]
    store.down = True
    for spend in (limits.check, limits.charge):
        with pytest.raises(Throttled) as caught:
            await spend(alice)
        assert caught.value.reason == "store"


# -- the rate ----------------------------------------------------------------------------------


async def test_the_rate_is_a_token_bucket_with_a_seconds_burst(
    registry: ConsumerRegistry, limits: ConsumerLimits, clock: FakeClock
) -> None:
    await registry.add("alice", None, 2)
    alice = (await registry.all())["alice"]
    await limits.admit_request(alice)
    await limits.admit_request(alice)
    with pytest.raises(ConsumerThrottled) as caught:
        await limits.admit_request(alice)
    assert (caught.value.reason, caught.value.retry_after) == ("consumer_rate", 1)
    clock.advance(0.5)  # one token back at 2 a second
    await limits.admit_request(alice)
    with pytest.raises(ConsumerThrottled):
        await limits.admit_request(alice)


async def test_the_rate_is_not_enforced_while_the_store_is_down(
    registry: ConsumerRegistry, limits: ConsumerLimits, store: SwitchableState
) -> None:
    await registry.add("alice", None, 1)
    alice = (await registry.all())["alice"]
    await limits.admit_request(alice)
    store.down = True
    for _ in range(5):
        await limits.admit_request(alice)
