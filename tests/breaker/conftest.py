"""What the breaker tests share: the exceptions and upstream stand-ins they call through a
breaker, a recording listener, a few steps (trip it, fail it n times), and the `clock` fixture."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.breaker import CircuitBreaker, CircuitOpenError, Listener, Outcome, State, Transition
from tests.conftest import FakeClock


class Boom(Exception):
    pass


class UnknownSymbol(Exception):
    pass


class Recorder(Listener):
    def __init__(self) -> None:
        self.transitions: list[tuple[State, State]] = []
        self.heard: list[Transition] = []  # transitioned(): with reason and generation
        self.outcomes: list[Outcome] = []
        self.rejections: list[CircuitOpenError] = []
        self.lock_held_during_events = False

    def state_changed(self, breaker: CircuitBreaker, old: State, new: State) -> None:
        self.lock_held_during_events |= breaker._lock.locked()
        self.transitions.append((old, new))

    def transitioned(self, breaker: CircuitBreaker, transition: Transition) -> None:
        self.lock_held_during_events |= breaker._lock.locked()
        self.heard.append(transition)

    def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
        self.lock_held_during_events |= breaker._lock.locked()
        self.outcomes.append(outcome)

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        self.lock_held_during_events |= breaker._lock.locked()
        self.rejections.append(error)


def make(clock: FakeClock, recorder: Recorder | None = None, **settings: object) -> CircuitBreaker:
    return CircuitBreaker(
        "test",
        clock=clock,
        is_failure=lambda exc: not isinstance(exc, UnknownSymbol),
        listeners=[recorder] if recorder else [],
        **settings,  # type: ignore[arg-type]
    )


async def ok() -> str:
    return "ok"


async def fail() -> str:
    raise Boom


async def unknown() -> str:
    raise UnknownSymbol


def moves(recorder: Recorder) -> list[tuple[str, str, str, int]]:
    """What the recorder heard through transitioned(): from, to, reason, generation."""
    return [(t.old.value, t.new.value, t.reason, t.generation) for t in recorder.heard]


def state_of(breaker: CircuitBreaker) -> State:
    """Read the state afresh (keeps mypy from narrowing a property across clock moves)."""
    return breaker.state


async def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert breaker.state is State.OPEN


class Gate:
    """An upstream that blocks until released, counting the calls in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight = 0
        self.peak = 0
        self.calls = 0

    async def __call__(self, result: Callable[[], str] = lambda: "ok") -> str:
        self.calls += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await self.release.wait()
            return result()
        finally:
            self.in_flight -= 1


async def settle_tasks() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def fail_times(breaker: CircuitBreaker, count: int) -> None:
    for _ in range(count):
        with pytest.raises(Boom):
            await breaker.call(fail)
