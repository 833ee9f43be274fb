"""Random sequences of calls, outcomes, clock moves and manual control, checked step by step
against a small reference model of the breaker's semantics: consecutive counting or a
failure-rate window (last N calls, or last T seconds in buckets), with or without backoff."""

from __future__ import annotations

import asyncio
import math
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

from app.breaker import Backoff, CircuitBreaker, CircuitOpenError, FailureRate, State
from tests.conftest import FakeClock

TIMEOUT = 10.0
# The breaker's random() in turn; the jittered timeouts they give stay exact in binary.
RANDOMS = (0.0, 1.0, 0.5, 0.25)
OUTCOMES = ["success", "failure", "neutral", "cancel"]


class Counted(Exception):
    pass


class Neutral(Exception):
    pass


async def wait_for_upstream(upstream: asyncio.Future[str]) -> str:
    return await upstream


class Draws:
    """A deterministic random(): RANDOMS over and over, counting the draws."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> float:
        value = RANDOMS[self.count % len(RANDOMS)]
        self.count += 1
        return value


@st.composite
def failure_rates(draw: st.DrawFn) -> FailureRate:
    minimum = draw(st.integers(1, 4))
    count_window = draw(st.booleans())
    return FailureRate(
        threshold=draw(st.sampled_from([0.25, 0.5, 0.6, 1.0])),
        minimum_calls=minimum,
        window_calls=draw(st.integers(minimum, 5)) if count_window else None,
        window_seconds=None if count_window else draw(st.sampled_from([7.5, 20.0])),
        slow_call_seconds=draw(st.sampled_from([None, 5.0])),
        slow_call_threshold=draw(st.sampled_from([0.5, 1.0])),
    )


backoffs = st.builds(
    Backoff,
    multiplier=st.sampled_from([1.0, 1.5, 2.0]),
    max_timeout=st.sampled_from([15.0, 40.0]),
    jitter=st.sampled_from([0.0, 0.5]),
)


@dataclass
class Model:
    failure_threshold: int
    success_threshold: int
    max_probes: int
    rate: FailureRate | None = None
    backoff: Backoff | None = None
    state: State = State.CLOSED
    generation: int = 0
    failures: int = 0  # consecutive mode only
    successes: int = 0
    open_until: float = 0.0
    open_timeout: float = TIMEOUT
    reopens: int = 0
    draws: int = 0
    forced: bool = False
    tickets: dict[int, tuple[int, bool, float]] = field(default_factory=dict)
    calls: list[tuple[float, bool, bool]] = field(default_factory=list)  # (ended, failed, slow)

    def move(self, state: State, now: float, timeout: float = TIMEOUT) -> None:
        self.state = state
        self.generation += 1
        self.successes = 0
        self.calls.clear()
        if state is State.OPEN:
            self.open_timeout = timeout
            self.open_until = now + timeout
        else:
            self.failures = 0
            if state is State.CLOSED:
                self.forced = False
                self.reopens = 0

    def observe(self, now: float) -> State:
        if self.state is State.OPEN and not self.forced and now >= self.open_until:
            self.move(State.HALF_OPEN, now)
        return self.state

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        """The calls the window holds at `now`: the last N, or those in the newest n buckets."""
        assert self.rate is not None
        if self.rate.window_calls is not None:
            return self.calls[-self.rate.window_calls :]
        assert self.rate.window_seconds is not None
        buckets = math.ceil(self.rate.window_seconds)
        width = self.rate.window_seconds / buckets
        newest = math.floor(now / width)
        return [c for c in self.calls if math.floor(c[0] / width) > newest - buckets]

    def counts(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the window at `now`."""
        calls = self.window(now)
        return len(calls), sum(c[1] for c in calls), sum(c[2] for c in calls)

    def probes(self) -> int:
        return sum(1 for gen, probe, _ in self.tickets.values() if probe and gen == self.generation)

    def admit(self, call_id: int, now: float) -> bool:
        state = self.observe(now)
        if state is State.OPEN or (state is State.HALF_OPEN and self.probes() >= self.max_probes):
            return False
        self.tickets[call_id] = (self.generation, state is State.HALF_OPEN, now)
        return True

    def reopen_timeout(self) -> float:
        if self.backoff is None:
            return TIMEOUT
        random = RANDOMS[self.draws % len(RANDOMS)]
        self.draws += 1
        jitter = 1 + self.backoff.jitter * (2 * random - 1)
        return min(
            self.backoff.max_timeout, TIMEOUT * self.backoff.multiplier**self.reopens * jitter
        )

    def finish(self, call_id: int, outcome: str, now: float) -> None:
        generation, _, started = self.tickets.pop(call_id)
        if generation != self.generation or outcome in ("neutral", "cancel"):
            return
        failed = outcome == "failure"
        if self.state is State.HALF_OPEN:
            if failed:
                self.failures += 1
                self.reopens += 1
                self.move(State.OPEN, now, self.reopen_timeout())
            else:
                self.successes += 1
                if self.successes >= self.success_threshold:
                    self.move(State.CLOSED, now)
        elif self.rate is None:
            self.failures = self.failures + 1 if failed else 0
            if self.failures >= self.failure_threshold:
                self.move(State.OPEN, now)
        else:
            slow = (
                self.rate.slow_call_seconds is not None
                and now - started >= self.rate.slow_call_seconds
            )
            self.calls.append((now, failed, slow))
            calls, failures, slows = self.counts(now)
            if calls >= self.rate.minimum_calls and (
                failures / calls >= self.rate.threshold
                or slows / calls >= self.rate.slow_call_threshold
            ):
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
        rate=st.none() | failure_rates(),
        backoff=st.none() | backoffs,
    )
    def configure(
        self,
        failure_threshold: int,
        success_threshold: int,
        max_probes: int,
        rate: FailureRate | None,
        backoff: Backoff | None,
    ) -> None:
        self.draws = Draws()
        self.breaker = CircuitBreaker(
            "model",
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            timeout=TIMEOUT,
            half_open_max_calls=max_probes,
            is_failure=lambda exc: isinstance(exc, Counted),
            clock=self.clock,
            failure_rate=rate,
            backoff=backoff,
            random=self.draws,
        )
        self.model = Model(failure_threshold, success_threshold, max_probes, rate, backoff)

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

    @rule(count=st.integers(1, 4), after=st.sampled_from([0.0, 0.0, 10.0]))
    def start_calls(self, count: int, after: float) -> None:
        """`count` callers arrive in the same event-loop tick, `after` seconds from now (a
        way past an open timeout even in examples where swarm testing disables
        advance_clock)."""
        self.clock.advance(after)
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

    def finish(self, call_id: int, outcome: str) -> None:
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

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def finish_call(self, data: st.DataObject, outcome: str) -> None:
        self.finish(data.draw(st.sampled_from(sorted(self.running))), outcome)

    @precondition(lambda self: bool(self.running))
    @rule(outcome=st.sampled_from(OUTCOMES))
    def finish_all(self, outcome: str) -> None:
        """Every call in flight ends the same way, one after another: reaches a trip, a close
        or a re-open (what backoff is about) in a few steps."""
        for call_id in sorted(self.running):
            self.finish(call_id, outcome)

    @rule(seconds=st.sampled_from([0.5, 5.0, 9.99, 10.0, 25.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    # One rule for both, so that they take fewer of the steps and leave the breaker time to
    # reach HALF_OPEN and re-open on its own.
    @rule(reset=st.booleans())
    def manual_control(self, reset: bool) -> None:
        self.model.observe(self.clock.now)
        if reset:
            self.breaker.reset()
            self.model.move(State.CLOSED, self.clock.now)
        else:
            self.breaker.force_open()
            self.model.move(State.OPEN, self.clock.now)
            self.model.forced = True

    @invariant()
    def agrees_with_model(self) -> None:
        if not hasattr(self, "model"):
            return
        model, now = self.model, self.clock.now
        expected = model.observe(now)
        snap = self.breaker.snapshot()
        assert snap.state is expected
        assert snap.success_count == model.successes
        assert snap.forced_open == model.forced
        assert self.breaker._probes == model.probes() <= model.max_probes
        assert (snap.retry_after > 0) == (expected is State.OPEN)
        if expected is State.OPEN:
            left = TIMEOUT if model.forced else model.open_until - now
            assert math.isclose(snap.retry_after, left, abs_tol=1e-9)
        assert (snap.open_timeout, snap.reopens) == (model.open_timeout, model.reopens)
        assert self.draws.count == model.draws  # one draw per backed-off re-open, no more
        if model.rate is None:
            assert (snap.mode, snap.failure_count, snap.window_calls) == (
                "consecutive",
                model.failures,
                0,
            )
            assert (snap.failure_rate, snap.slow_call_rate) == (None, None)
        else:
            calls, failures, slows = model.counts(now)
            assert (snap.mode, snap.failure_count, snap.window_calls) == (
                "failure_rate",
                failures,
                calls,
            )
            assert snap.failure_rate == (failures / calls if calls else None)
            assert snap.slow_call_rate == (slows / calls if calls else None)


BreakerMachine.TestCase.settings = settings(max_examples=500, stateful_step_count=40, deadline=None)
test_breaker_matches_model = BreakerMachine.TestCase
