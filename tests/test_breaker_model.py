"""Random sequences of calls, outcomes, clock moves and manual control, checked step by step
against a small reference model of the breaker's semantics."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from app.breaker import CircuitBreaker, CircuitOpenError, State
from tests.conftest import FakeClock

TIMEOUT = 10.0


class Counted(Exception):
    pass


class Neutral(Exception):
    pass


async def wait_for_upstream(upstream: asyncio.Future[str]) -> str:
    return await upstream


@dataclass
class Model:
    failure_threshold: int
    success_threshold: int
    max_probes: int
    state: State = State.CLOSED
    generation: int = 0
    failures: int = 0
    successes: int = 0
    open_until: float = 0.0
    forced: bool = False
    tickets: dict[int, tuple[int, bool]] = field(default_factory=dict)

    def move(self, state: State, now: float) -> None:
        self.state = state
        self.generation += 1
        self.successes = 0
        if state is State.OPEN:
            self.open_until = now + TIMEOUT
        else:
            self.failures = 0
            if state is State.CLOSED:
                self.forced = False

    def observe(self, now: float) -> State:
        if self.state is State.OPEN and not self.forced and now >= self.open_until:
            self.move(State.HALF_OPEN, now)
        return self.state

    def probes(self) -> int:
        return sum(1 for gen, probe in self.tickets.values() if probe and gen == self.generation)

    def admit(self, call_id: int, now: float) -> bool:
        state = self.observe(now)
        if state is State.OPEN or (state is State.HALF_OPEN and self.probes() >= self.max_probes):
            return False
        self.tickets[call_id] = (self.generation, state is State.HALF_OPEN)
        return True

    def finish(self, call_id: int, outcome: str, now: float) -> None:
        generation, _ = self.tickets.pop(call_id)
        if generation != self.generation or outcome in ("neutral", "cancel"):
            return
        if outcome == "success":
            if self.state is State.CLOSED:
                self.failures = 0
            else:
                self.successes += 1
                if self.successes >= self.success_threshold:
                    self.move(State.CLOSED, now)
        else:
            self.failures += 1
            if self.state is State.HALF_OPEN or self.failures >= self.failure_threshold:
                self.move(State.OPEN, now)


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.next_id = 0
        self.running: dict[int, tuple[asyncio.Task[str], asyncio.Future[str]]] = {}

    @initialize(
        failure_threshold=st.integers(1, 4),
        success_threshold=st.integers(1, 3),
        max_probes=st.integers(1, 3),
    )
    def configure(self, failure_threshold: int, success_threshold: int, max_probes: int) -> None:
        self.breaker = CircuitBreaker(
            "model",
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            timeout=TIMEOUT,
            half_open_max_calls=max_probes,
            is_failure=lambda exc: isinstance(exc, Counted),
            clock=self.clock,
        )
        self.model = Model(failure_threshold, success_threshold, max_probes)

    def teardown(self) -> None:
        for task, _ in self.running.values():
            task.cancel()
        self.drain()
        self.loop.close()

    def drain(self) -> None:
        async def ticks() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        self.loop.run_until_complete(ticks())

    @rule(count=st.integers(1, 4))
    def start_calls(self, count: int) -> None:
        """`count` callers arrive in the same event-loop tick."""
        started = []
        for _ in range(count):
            call_id, self.next_id = self.next_id, self.next_id + 1
            upstream: asyncio.Future[str] = self.loop.create_future()
            task = self.loop.create_task(self.breaker.call(wait_for_upstream, upstream))
            started.append((call_id, task, upstream))
        self.drain()
        for call_id, task, upstream in started:
            admitted = self.model.admit(call_id, self.clock.now)
            if admitted:
                assert not task.done()
                self.running[call_id] = (task, upstream)
            else:
                assert task.done()
                assert isinstance(task.exception(), CircuitOpenError)

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "neutral", "cancel"]))
    def finish_call(self, data: st.DataObject, outcome: str) -> None:
        call_id = data.draw(st.sampled_from(sorted(self.running)))
        task, upstream = self.running.pop(call_id)
        if outcome == "success":
            upstream.set_result("ok")
        elif outcome == "failure":
            upstream.set_exception(Counted())
        elif outcome == "neutral":
            upstream.set_exception(Neutral())
        else:
            task.cancel()
        self.drain()
        assert task.done()
        self.model.finish(call_id, outcome, self.clock.now)

    @rule(seconds=st.sampled_from([0.5, 5.0, 9.99, 10.0, 25.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.observe(self.clock.now)
        self.model.move(State.CLOSED, self.clock.now)

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        self.model.observe(self.clock.now)
        self.model.move(State.OPEN, self.clock.now)
        self.model.forced = True

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "model"):
            return
        expected = self.model.observe(self.clock.now)
        snap = self.breaker.snapshot()
        assert snap.state is expected
        assert snap.failure_count == self.model.failures
        assert snap.success_count == self.model.successes
        assert snap.forced_open == self.model.forced
        assert self.breaker._probes == self.model.probes() <= self.model.max_probes
        assert (snap.retry_after > 0) == (expected is State.OPEN)


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
test_breaker_matches_model = BreakerMachine.TestCase
