"""Breakers sharing one state through a store (Sharing): two CircuitBreaker instances over
one in-memory store, as two processes would be, behave as one breaker. Fake clock throughout;
the store reads the same clock, as processes on one host read one wall clock."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TypeVar

import pytest

from app.breaker import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    FailureRate,
    SharedStore,
    Sharing,
    State,
)
from tests.breaker.conftest import Boom, Gate, Recorder, fail_times, make, moves, ok, state_of
from tests.conftest import FakeClock

R = TypeVar("R")
Document = dict[str, object] | None
KEY = "breaker:test"
SYNC = 1.0
LEASE = 20.0


class FakeStore:
    """A SharedStore in memory: documents kept as JSON text (so only JSON survives), the
    updates counted, and a switch that makes it fail as a store that does not answer."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.documents: dict[str, str] = {}
        self.updates = 0
        self.down = False

    async def update(self, key: str, change: Callable[[Document, float], tuple[Document, R]]) -> R:
        await asyncio.sleep(0)  # a real store's round trip lets other tasks run
        if self.down:
            raise ConnectionError("the store does not answer")
        self.updates += 1
        stored = self.documents.get(key)
        value, result = change(None if stored is None else json.loads(stored), self.clock())
        self.documents[key] = json.dumps(value)
        return result


@pytest.fixture
def store(clock: FakeClock) -> FakeStore:
    return FakeStore(clock)


def replica(
    clock: FakeClock, store: SharedStore, recorder: Recorder | None = None, **settings: object
) -> CircuitBreaker:
    """One process's breaker over the shared store."""
    sharing = Sharing(store, KEY, sync_interval=SYNC, probe_lease=LEASE)
    return make(clock, recorder, timeout=30.0, shared=sharing, **settings)


async def rejected(breaker: CircuitBreaker) -> CircuitOpenError:
    """The error of a call the breaker rejects; fails the test if the call went upstream."""
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    return info.value


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"key": ""}, "key"),
        ({"sync_interval": -1.0}, "sync_interval"),
        ({"sync_interval": float("inf")}, "sync_interval"),
        ({"probe_lease": 0.0}, "probe_lease"),
        ({"probe_lease": float("nan")}, "probe_lease"),
    ],
)
def test_invalid_sharing_raises_value_error(
    store: FakeStore, settings: dict[str, object], message: str
) -> None:
    values: dict[str, object] = {"store": store, "key": KEY} | settings
    with pytest.raises(ValueError, match=message):
        Sharing(**values)  # type: ignore[arg-type]


# -- one threshold, one trip ---------------------------------------------------------------


async def test_failures_in_two_processes_add_up_to_one_threshold(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)
    await fail_times(first, 3)
    await fail_times(second, 1)
    assert state_of(first) is State.CLOSED
    await fail_times(first, 1)  # the fifth in all
    assert state_of(first) is State.OPEN
    assert (await rejected(second)).state is State.OPEN  # before its next upstream call


async def test_a_success_anywhere_ends_the_run_of_failures(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)
    await fail_times(first, 4)
    assert await second.call(ok) == "ok"
    await fail_times(first, 4)
    assert state_of(first) is State.CLOSED
    assert first.snapshot().failure_count == 4


async def test_the_other_process_reports_the_trip_with_its_retry_after(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)
    await fail_times(first, 5)
    clock.advance(10)
    error = await rejected(second)
    assert error.retry_after == pytest.approx(20)
    snap = second.snapshot()
    assert (snap.state, snap.failure_count, snap.opened_at) == (State.OPEN, 5, clock.now - 10)


async def test_a_result_from_an_older_generation_changes_nothing(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)

    def boom() -> str:
        raise Boom

    gate = Gate()
    slow = asyncio.create_task(first.call(gate, boom))  # admitted before the trip
    await asyncio.sleep(0.01)
    assert gate.calls == 1
    await fail_times(second, 5)
    second.reset()
    await second.refresh()
    gate.release.set()
    with pytest.raises(Boom):
        await slow
    await second.refresh()
    assert second.snapshot().failure_count == 0  # the late failure counted for nothing


# -- probes ----------------------------------------------------------------------------------


async def test_half_open_lets_exactly_one_probe_through_in_the_group(
    clock: FakeClock, store: FakeStore
) -> None:
    first = replica(clock, store, success_threshold=1)
    second = replica(clock, store, success_threshold=1)
    await fail_times(first, 5)
    clock.advance(30)
    gate = Gate()
    tasks = [asyncio.create_task(b.call(gate)) for b in (first, second) * 5]
    await asyncio.sleep(0.01)
    admitted = gate.calls
    gate.release.set()
    assert admitted == 1
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert outcomes.count("ok") == 1
    assert all(isinstance(o, CircuitOpenError) for o in outcomes if o != "ok")
    for breaker in (first, second):
        await breaker.refresh()
        assert state_of(breaker) is State.CLOSED


async def test_a_probe_that_never_comes_back_frees_its_slot_after_the_lease(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)
    await fail_times(first, 5)
    clock.advance(30)
    await first.guard().__aenter__()  # its process dies holding the probe: no __aexit__
    assert (await rejected(second)).state is State.HALF_OPEN
    clock.advance(LEASE)
    assert await second.call(ok) == "ok"  # the lease ran out: a new probe may go


async def test_a_failed_probe_reopens_everywhere_with_the_backoff(
    clock: FakeClock, store: FakeStore
) -> None:
    backoff = Backoff(multiplier=2.0, max_timeout=300.0, jitter=0.0)
    first = replica(clock, store, backoff=backoff)
    second = replica(clock, store, backoff=backoff)
    await fail_times(first, 5)
    clock.advance(30)
    await fail_times(second, 1)  # its probe fails: re-open number 1, for 60 s
    error = await rejected(first)
    assert error.retry_after == pytest.approx(60)
    snap = first.snapshot()
    assert (snap.reopens, snap.open_timeout) == (1, 60)


# -- manual control --------------------------------------------------------------------------


async def test_force_open_and_reset_act_on_every_process(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)
    assert await second.call(ok) == "ok"
    first.force_open()
    await first.refresh()
    assert (await rejected(second)).state is State.OPEN
    assert second.snapshot().forced_open

    second.reset()
    await second.refresh()
    assert await second.call(ok) == "ok"
    await rejected(first)  # OPEN trusts its copy for up to the sync interval ...
    clock.advance(SYNC)
    assert await first.call(ok) == "ok"  # ... then asks, and hears of the reset


async def test_refresh_shows_the_shared_state_at_once(clock: FakeClock, store: FakeStore) -> None:
    first, second = replica(clock, store), replica(clock, store)
    first.force_open()
    await first.refresh()
    second.reset()
    await second.refresh()
    await first.refresh()
    assert state_of(first) is State.CLOSED


async def test_state_changes_seen_from_the_store_reach_the_listeners(
    clock: FakeClock, store: FakeStore
) -> None:
    recorder = Recorder()
    first, second = replica(clock, store), replica(clock, store, recorder)
    await fail_times(first, 5)
    await rejected(second)
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]
    assert not recorder.lock_held_during_events


# -- cost -------------------------------------------------------------------------------------


async def test_open_rejects_without_the_store_until_the_sync_interval(
    clock: FakeClock, store: FakeStore
) -> None:
    breaker = replica(clock, store)
    await fail_times(breaker, 5)
    before = store.updates
    for _ in range(10):
        await rejected(breaker)
    assert store.updates == before


async def test_concurrent_closed_calls_share_one_question_to_the_store(
    clock: FakeClock, store: FakeStore
) -> None:
    breaker = replica(clock, store)
    gate = Gate()
    tasks = [asyncio.create_task(breaker.call(gate)) for _ in range(10)]
    await asyncio.sleep(0.01)
    admitted, questions = gate.calls, store.updates
    gate.release.set()
    assert admitted == 10
    assert questions <= 2  # the first asks; those that waited for it take its answer
    assert await asyncio.gather(*tasks) == ["ok"] * 10
    assert store.updates <= 2  # successes after no failure write nothing


# -- failure-rate mode -------------------------------------------------------------------------


async def test_in_failure_rate_mode_a_window_trip_opens_every_process(
    clock: FakeClock, store: FakeStore
) -> None:
    rate = FailureRate(threshold=0.5, minimum_calls=4, window_calls=4)
    first = replica(clock, store, failure_rate=rate)
    second = replica(clock, store, failure_rate=rate)
    await fail_times(second, 3)  # second's own window: 3 calls, no verdict yet
    assert await first.call(ok) == "ok"
    assert state_of(first) is State.CLOSED
    await fail_times(second, 1)  # its window: 4 failures of 4
    assert (await rejected(first)).state is State.OPEN


# -- the store down ------------------------------------------------------------------------------


async def test_with_the_store_down_the_breaker_decides_alone(
    clock: FakeClock, store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = replica(clock, store)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="app.breaker"):
        assert await breaker.call(ok) == "ok"
        await fail_times(breaker, 5)
    assert state_of(breaker) is State.OPEN
    await rejected(breaker)
    assert "the shared state store failed" in caplog.text
    clock.advance(30)
    assert await breaker.call(ok) == "ok"  # a probe, decided alone
    assert state_of(breaker) is State.HALF_OPEN


async def test_when_the_store_answers_again_its_state_wins(
    clock: FakeClock, store: FakeStore
) -> None:
    first, second = replica(clock, store), replica(clock, store)
    await fail_times(first, 5)  # open in the store
    store.down = True
    second.reset()  # written nowhere yet: the store is down
    assert await second.call(ok) == "ok"  # decided alone on its own copy
    store.down = False
    clock.advance(SYNC)
    assert await second.call(ok) == "ok"  # the pending reset is written first
    await first.refresh()
    assert state_of(first) is State.CLOSED


async def test_a_store_failing_while_a_probe_settles_frees_the_slot_here(
    clock: FakeClock, store: FakeStore
) -> None:
    breaker = replica(clock, store, success_threshold=2)
    await fail_times(breaker, 5)
    clock.advance(30)
    guard = breaker.guard()
    await guard.__aenter__()
    store.down = True
    await guard.__aexit__(None, None, None)  # no exception escapes
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count) == (State.HALF_OPEN, 1)
    assert breaker._probes == 0


# -- transitions, as the event stream records them ------------------------------------------


async def test_each_shared_change_is_heard_with_its_reason_and_the_stores_generation(
    clock: FakeClock, store: FakeStore
) -> None:
    """The process that makes a change and the one that takes it up later report the same
    transition (from, to, reason, generation, when), which is how the history keeps it once."""
    here, there = Recorder(), Recorder()
    first, second = replica(clock, store, here), replica(clock, store, there)
    await fail_times(first, 5)
    assert moves(here) == [("closed", "open", "failure_threshold", 1)]
    opening = here.heard[0]
    assert opening.retry_after == 30.0
    assert opening.at == clock.now  # on the store's clock
    clock.advance(1)
    await second.refresh()
    assert there.heard == [opening]

    clock.advance(30)
    await second.refresh()  # no call needed: a refresh takes the lazy move up
    assert moves(there)[1:] == [("open", "half_open", "timeout_elapsed", 2)]
    for _ in range(3):
        await second.call(ok)
    assert moves(there)[2:] == [("half_open", "closed", "probes_succeeded", 3)]
    await first.refresh()  # three generations on: only the latest change is heard here
    assert moves(here) == [
        ("closed", "open", "failure_threshold", 1),
        ("half_open", "closed", "probes_succeeded", 3),
    ]
    assert not here.lock_held_during_events


async def test_a_failed_probe_and_the_admin_actions_are_heard_with_their_reasons(
    clock: FakeClock, store: FakeStore
) -> None:
    recorder = Recorder()
    breaker = replica(clock, store, recorder, backoff=Backoff(2.0, 300.0, jitter=0.0))
    await fail_times(breaker, 5)
    clock.advance(30)
    await fail_times(breaker, 1)  # the probe
    breaker.force_open()
    await breaker.refresh()
    breaker.reset()
    await breaker.refresh()
    assert [(m[0], m[1], m[2]) for m in moves(recorder)] == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "timeout_elapsed"),
        ("half_open", "open", "probe_failed"),
        ("open", "open", "forced_open"),
        ("open", "closed", "reset"),
    ]
    assert [t.retry_after for t in recorder.heard] == [30.0, 0.0, 60.0, 30.0, 0.0]
    assert [t.generation for t in recorder.heard] == [1, 2, 3, 4, 5]


async def test_a_change_decided_alone_while_the_store_is_down_is_not_heard_as_shared(
    clock: FakeClock, store: FakeStore
) -> None:
    recorder = Recorder()
    breaker = replica(clock, store, recorder)
    await breaker.refresh()
    store.down = True
    await fail_times(breaker, 5)
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]
    assert recorder.heard == []
