from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from app.breaker import (
    Backoff,
    CircuitBreaker,
    CircuitOpenError,
    FailureRate,
    Listener,
    Outcome,
    State,
)
from app.breaker._window import TimeWindow
from tests.conftest import FakeClock


class Boom(Exception):
    pass


class UnknownSymbol(Exception):
    pass


class Recorder(Listener):
    def __init__(self) -> None:
        self.transitions: list[tuple[State, State]] = []
        self.outcomes: list[Outcome] = []
        self.rejections: list[CircuitOpenError] = []
        self.lock_held_during_events = False

    def state_changed(self, breaker: CircuitBreaker, old: State, new: State) -> None:
        self.lock_held_during_events |= breaker._lock.locked()
        self.transitions.append((old, new))

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


# -- construction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": 0},
        {"success_threshold": 0},
        {"half_open_max_calls": 0},
        {"timeout": -1.0},
        {"timeout": float("nan")},
        {"timeout": float("inf")},
    ],
)
def test_invalid_settings_raise_value_error(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        CircuitBreaker("x", **settings)  # type: ignore[arg-type]


def test_empty_name_raises_value_error() -> None:
    with pytest.raises(ValueError, match="name"):
        CircuitBreaker("")


def test_defaults_match_the_design() -> None:
    breaker = CircuitBreaker("x")
    snap = breaker.snapshot()
    assert (snap.failure_threshold, snap.success_threshold, snap.timeout) == (5, 3, 30.0)
    assert snap.half_open_max_calls == 1
    assert snap.state is State.CLOSED
    assert snap.retry_after == 0.0


# -- 1. consecutive failures in CLOSED ---------------------------------------------------------


async def test_fifth_consecutive_failure_returns_original_error_and_opens(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    for expected_count in range(1, 5):
        with pytest.raises(Boom):
            await breaker.call(fail)
        assert breaker.state is State.CLOSED
        assert breaker.snapshot().failure_count == expected_count
    with pytest.raises(Boom):
        await breaker.call(fail)
    assert breaker.state is State.OPEN

    called = False

    async def spy() -> str:
        nonlocal called
        called = True
        return "ok"

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(spy)
    assert not called
    assert info.value.name == "test"
    assert info.value.state is State.OPEN


async def test_success_resets_the_failure_count(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(4):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert await breaker.call(ok) == "ok"
    assert breaker.snapshot().failure_count == 0
    for _ in range(4):
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert breaker.state is State.CLOSED


# -- 2. what counts ------------------------------------------------------------------------------


async def test_ignored_error_neither_counts_nor_resets(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(4):
        with pytest.raises(Boom):
            await breaker.call(fail)
    with pytest.raises(UnknownSymbol):
        await breaker.call(unknown)
    assert breaker.snapshot().failure_count == 4
    with pytest.raises(Boom):
        await breaker.call(fail)
    assert breaker.state is State.OPEN


async def test_ignored_error_in_half_open_neither_closes_nor_opens(clock: FakeClock) -> None:
    breaker = make(clock, success_threshold=2)
    await trip(breaker)
    clock.advance(30)
    await breaker.call(ok)
    with pytest.raises(UnknownSymbol):
        await breaker.call(unknown)
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count) == (State.HALF_OPEN, 1)
    await breaker.call(ok)
    assert breaker.state is State.CLOSED


async def test_circuit_open_error_from_a_nested_breaker_never_counts(clock: FakeClock) -> None:
    inner = make(clock)
    outer = make(clock, failure_threshold=1)
    inner.force_open()
    for _ in range(3):
        with pytest.raises(CircuitOpenError):
            await outer.call(inner.call, ok)
    assert outer.state is State.CLOSED


async def test_is_failure_is_asked_about_the_exception(clock: FakeClock) -> None:
    seen: list[Exception] = []

    def is_failure(exc: Exception) -> bool:
        seen.append(exc)
        return False

    breaker = CircuitBreaker("x", failure_threshold=1, is_failure=is_failure, clock=clock)
    with pytest.raises(Boom):
        await breaker.call(fail)
    assert [type(exc) for exc in seen] == [Boom]
    assert breaker.state is State.CLOSED


# -- 3. OPEN rejects at once ----------------------------------------------------------------------


async def test_open_rejects_without_awaiting_and_reports_time_left(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await trip(breaker)
    clock.advance(12.5)
    coroutine = breaker.call(ok)
    # The first step of the coroutine raises: the rejection never suspended.
    with pytest.raises(CircuitOpenError) as info:
        coroutine.send(None)
    assert info.value.retry_after == pytest.approx(17.5)
    assert breaker.snapshot().retry_after == pytest.approx(17.5)
    assert len(recorder.rejections) == 1


async def test_check_raises_only_when_a_call_would_be_rejected_outright(
    clock: FakeClock,
) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    breaker.check()
    await trip(breaker)
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        breaker.check()
    assert info.value.retry_after == pytest.approx(20)
    assert len(recorder.rejections) == 1
    clock.advance(20)
    breaker.check()  # a probe would be admitted now: check admits nothing itself
    assert breaker.snapshot().state is State.HALF_OPEN
    assert breaker._probes == 0


async def test_every_rejection_is_a_fresh_exception(clock: FakeClock) -> None:
    breaker = make(clock)
    await trip(breaker)
    errors = []
    for _ in range(2):
        try:
            await breaker.call(ok)
        except CircuitOpenError as exc:
            errors.append(exc)
    assert errors[0] is not errors[1]
    assert "test" in str(errors[0])
    assert "open" in str(errors[0])


# -- 4. OPEN -> HALF_OPEN, lazily and exactly once ---------------------------------------------


async def test_reading_state_after_timeout_reports_half_open(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await trip(breaker)
    clock.advance(29.999)
    assert state_of(breaker) is State.OPEN
    clock.advance(0.001)
    assert state_of(breaker) is State.HALF_OPEN
    assert state_of(breaker) is State.HALF_OPEN
    assert recorder.transitions == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
    ]


async def test_many_callers_in_one_tick_move_to_half_open_once(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await trip(breaker)
    clock.advance(30)
    gate = Gate()
    tasks = [asyncio.create_task(breaker.call(gate)) for _ in range(50)]
    await settle_tasks()
    assert gate.calls == 1
    assert recorder.transitions.count((State.OPEN, State.HALF_OPEN)) == 1
    rejected = [t for t in tasks if t.done()]
    assert len(rejected) == 49
    assert all(isinstance(t.exception(), CircuitOpenError) for t in rejected)
    gate.release.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert not recorder.lock_held_during_events


# -- 5. HALF_OPEN ------------------------------------------------------------------------------


async def test_half_open_admits_at_most_max_calls_in_flight(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=2)
    await trip(breaker)
    clock.advance(30)
    gate = Gate()
    results = asyncio.gather(*(breaker.call(gate) for _ in range(6)), return_exceptions=True)
    await settle_tasks()
    assert gate.in_flight == 2
    gate.release.set()
    outcomes = await results
    assert outcomes.count("ok") == 2
    rejections = [r for r in outcomes if isinstance(r, CircuitOpenError)]
    assert len(rejections) == 4
    assert all(r.state is State.HALF_OPEN for r in rejections)
    assert gate.peak == 2


async def test_success_threshold_consecutive_successes_close(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await trip(breaker)
    clock.advance(30)
    for expected in (1, 2):
        await breaker.call(ok)
        snap = breaker.snapshot()
        assert (snap.state, snap.success_count) == (State.HALF_OPEN, expected)
    await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_count, snap.success_count) == (State.CLOSED, 0, 0)
    assert snap.opened_at is None
    assert recorder.transitions[-1] == (State.HALF_OPEN, State.CLOSED)


async def test_failure_in_half_open_reopens_and_restarts_the_timer(clock: FakeClock) -> None:
    breaker = make(clock)
    await trip(breaker)
    clock.advance(30)
    await breaker.call(ok)
    clock.advance(7)
    with pytest.raises(Boom):
        await breaker.call(fail)
    assert breaker.state is State.OPEN
    assert breaker.snapshot().retry_after == pytest.approx(30)
    clock.advance(29.9)
    assert state_of(breaker) is State.OPEN
    clock.advance(0.1)
    assert state_of(breaker) is State.HALF_OPEN


# -- 6. cancellation -----------------------------------------------------------------------------


async def test_cancelled_probe_frees_its_slot_and_changes_nothing(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await trip(breaker)
    clock.advance(30)
    await breaker.call(ok)  # one success toward closing
    gate = Gate()
    probe = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)  # the only slot is taken
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count, snap.failure_count) == (State.HALF_OPEN, 1, 0)
    assert recorder.outcomes[-1] is Outcome.CANCELLED
    await breaker.call(ok)  # the slot is free again
    assert breaker.snapshot().success_count == 2


async def test_cancellation_in_closed_is_no_verdict(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(4):
        with pytest.raises(Boom):
            await breaker.call(fail)
    gate = Gate()
    task = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.snapshot().failure_count == 4


async def test_timeout_around_a_probe_frees_its_slot(clock: FakeClock) -> None:
    breaker = make(clock)
    await trip(breaker)
    clock.advance(30)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await breaker.call(Gate())
    assert await breaker.call(ok) == "ok"


# -- 7. stale results ------------------------------------------------------------------------------


async def test_late_success_from_before_a_trip_does_not_count(clock: FakeClock) -> None:
    breaker = make(clock)
    gate = Gate()
    slow = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    await trip(breaker)
    clock.advance(30)
    assert breaker.state is State.HALF_OPEN
    gate.release.set()
    assert await slow == "ok"
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count) == (State.HALF_OPEN, 0)


async def test_late_failure_from_before_a_trip_does_not_reopen(clock: FakeClock) -> None:
    breaker = make(clock)
    gate = Gate()

    def boom() -> str:
        raise Boom

    slow = asyncio.create_task(breaker.call(gate, boom))
    await settle_tasks()
    await trip(breaker)
    clock.advance(30)
    await breaker.call(ok)
    gate.release.set()
    with pytest.raises(Boom):
        await slow
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count) == (State.HALF_OPEN, 1)


async def test_late_probe_from_an_earlier_half_open_leaks_no_slot(clock: FakeClock) -> None:
    breaker = make(clock)
    await trip(breaker)
    clock.advance(30)
    gate = Gate()
    old_probe = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    breaker.force_open()
    breaker.reset()
    await trip(breaker)
    clock.advance(30)
    gate.release.set()
    await old_probe
    assert await breaker.call(ok) == "ok"
    assert breaker.snapshot().success_count == 1


# -- 8. the lock is never held across the call ---------------------------------------------------


async def test_closed_breaker_runs_calls_concurrently(clock: FakeClock) -> None:
    breaker = make(clock)
    gate = Gate()
    results = asyncio.gather(*(breaker.call(gate) for _ in range(20)))
    await settle_tasks()
    assert gate.in_flight == 20
    gate.release.set()
    assert await results == ["ok"] * 20


async def test_twenty_50ms_calls_take_about_50ms() -> None:
    breaker = CircuitBreaker("x")
    started = time.perf_counter()
    await asyncio.gather(*(breaker.call(asyncio.sleep, 0.05) for _ in range(20)))
    # Serialised calls would take 1 s; a generous bound keeps a busy machine from flaking.
    assert time.perf_counter() - started < 0.5


async def test_half_open_probes_run_concurrently(clock: FakeClock) -> None:
    breaker = make(clock, half_open_max_calls=5)
    await trip(breaker)
    clock.advance(30)
    gate = Gate()
    results = asyncio.gather(*(breaker.call(gate) for _ in range(5)))
    await settle_tasks()
    assert gate.in_flight == 5
    gate.release.set()
    await results
    assert breaker.state is State.CLOSED


# -- 9. manual control -----------------------------------------------------------------------------


async def test_force_open_stays_open_until_reset(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    breaker.force_open()
    clock.advance(3600)
    assert breaker.state is State.OPEN
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.retry_after == 30.0
    snap = breaker.snapshot()
    assert snap.forced_open
    breaker.reset()
    assert state_of(breaker) is State.CLOSED
    assert not breaker.snapshot().forced_open
    assert await breaker.call(ok) == "ok"
    assert recorder.transitions == [(State.CLOSED, State.OPEN), (State.OPEN, State.CLOSED)]


async def test_reset_clears_counters(clock: FakeClock) -> None:
    breaker = make(clock)
    for _ in range(3):
        with pytest.raises(Boom):
            await breaker.call(fail)
    breaker.reset()
    snap = breaker.snapshot()
    assert (snap.failure_count, snap.last_failure_time) == (0, None)


async def test_reset_of_a_lapsed_open_breaker_reports_each_transition_once(
    clock: FakeClock,
) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await trip(breaker)
    clock.advance(31)
    breaker.reset()
    assert recorder.transitions == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.CLOSED),
    ]


async def test_force_open_while_half_open_rejects_probes(clock: FakeClock) -> None:
    breaker = make(clock)
    await trip(breaker)
    clock.advance(30)
    breaker.force_open()
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)


# -- snapshot, guard, listeners ----------------------------------------------------------------


async def test_snapshot_reports_wall_clock_times(clock: FakeClock) -> None:
    breaker = make(clock)
    before = time.time()
    await trip(breaker)
    clock.advance(10)
    snap = breaker.snapshot()
    assert snap.opened_at is not None
    assert snap.last_failure_time is not None
    assert before <= snap.last_failure_time <= snap.opened_at <= time.time()
    assert breaker.snapshot().opened_at == snap.opened_at  # stable from read to read
    assert snap.failure_count == 5
    assert snap.retry_after == pytest.approx(20)
    with pytest.raises(AttributeError):
        snap.state = State.CLOSED  # type: ignore[misc]


async def test_guard_protects_a_block(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    async with breaker.guard():
        pass
    for _ in range(2):
        with pytest.raises(Boom):
            async with breaker.guard():
                raise Boom
    with pytest.raises(CircuitOpenError):
        async with breaker.guard():
            pytest.fail("an open breaker must not run the block")


async def test_listener_hears_outcomes(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder)
    await breaker.call(ok)
    with pytest.raises(Boom):
        await breaker.call(fail)
    with pytest.raises(UnknownSymbol):
        await breaker.call(unknown)
    assert recorder.outcomes == [Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED]


async def test_a_failing_listener_is_logged_and_harmless(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Listener):
        def state_changed(self, breaker: CircuitBreaker, old: State, new: State) -> None:
            raise RuntimeError("listener bug")

        def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
            raise RuntimeError("listener bug")

    recorder = Recorder()
    breaker = CircuitBreaker("x", failure_threshold=1, clock=clock, listeners=[Broken(), recorder])
    with caplog.at_level(logging.ERROR, logger="app.breaker"):
        assert await breaker.call(ok) == "ok"
        with pytest.raises(Boom):
            await breaker.call(fail)
    assert breaker.state is State.OPEN
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]
    assert "listener bug" in caplog.text


# -- 10. failure-rate mode ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.01}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"slow_call_threshold": 0.0}, "slow_call_threshold"),
        ({"slow_call_threshold": 1.5}, "slow_call_threshold"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"window_calls": None}, "exactly one"),
        ({"window_seconds": 60.0}, "exactly one"),
        ({"window_calls": 0, "minimum_calls": 0}, "minimum_calls"),
        ({"window_calls": 0}, "window_calls"),
        ({"window_calls": 5}, "must not exceed"),
        ({"window_calls": None, "window_seconds": 0.0}, "window_seconds"),
        ({"window_calls": None, "window_seconds": float("inf")}, "window_seconds"),
        ({"window_calls": None, "window_seconds": float("nan")}, "window_seconds"),
        ({"slow_call_seconds": 0.0}, "slow_call_seconds"),
        ({"slow_call_seconds": float("inf")}, "slow_call_seconds"),
    ],
)
def test_invalid_failure_rate_raises_value_error(settings: dict[str, object], message: str) -> None:
    values: dict[str, object] = {"threshold": 0.5, **settings}
    with pytest.raises(ValueError, match=message):
        FailureRate(**values)  # type: ignore[arg-type]


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


def test_both_options_are_off_by_default() -> None:
    breaker = CircuitBreaker("x")
    assert (breaker.failure_rate, breaker.backoff) == (None, None)
    snap = breaker.snapshot()
    assert (snap.mode, snap.window_calls, snap.failure_rate, snap.slow_call_rate) == (
        "consecutive",
        0,
        None,
        None,
    )
    assert (snap.open_timeout, snap.reopens) == (30.0, 0)


def test_settings_are_exposed_read_only() -> None:
    rate, backoff = FailureRate(0.5), Backoff()
    breaker = CircuitBreaker("x", failure_rate=rate, backoff=backoff)
    assert (breaker.failure_rate, breaker.backoff) == (rate, backoff)
    assert breaker.snapshot().mode == "failure_rate"
    with pytest.raises(AttributeError):
        breaker.backoff = None  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rate.threshold = 1.0  # type: ignore[misc]


async def test_closed_success_in_consecutive_mode_never_reads_the_clock() -> None:
    """The fast path's cost: failure-rate mode must not add work to consecutive mode."""
    reads = 0

    def clock() -> float:
        nonlocal reads
        reads += 1
        return 0.0

    breaker = CircuitBreaker("x", clock=clock, backoff=Backoff())
    for _ in range(3):
        await breaker.call(ok)
    assert reads == 0


async def fail_times(breaker: CircuitBreaker, count: int) -> None:
    for _ in range(count):
        with pytest.raises(Boom):
            await breaker.call(fail)


async def test_rate_trips_exactly_at_the_threshold(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=4, window_calls=10))
    for _ in range(3):
        await breaker.call(ok)
    await fail_times(breaker, 2)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.failure_count) == (State.CLOSED, 5, 2)
    assert snap.failure_rate == pytest.approx(0.4)
    await fail_times(breaker, 1)  # 3 of 6
    assert breaker.state is State.OPEN
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count, snap.failure_rate) == (0, 0, None)
    assert snap.retry_after == 30.0


async def test_rate_gives_no_verdict_before_minimum_calls(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=4, window_calls=10))
    await fail_times(breaker, 3)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_count, snap.failure_rate) == (State.CLOSED, 3, 1.0)
    await fail_times(breaker, 1)
    assert breaker.state is State.OPEN


async def test_rate_verdict_can_fall_on_a_success(clock: FakeClock) -> None:
    """The verdict is taken whenever the window changes: the call that reaches minimum_calls
    trips the breaker even when it succeeds."""
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=3, window_calls=10))
    await fail_times(breaker, 2)
    assert await breaker.call(ok) == "ok"
    assert breaker.state is State.OPEN


async def test_rate_mode_ignores_failure_threshold(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, failure_rate=FailureRate(1.0, minimum_calls=5))
    await fail_times(breaker, 4)
    assert breaker.state is State.CLOSED
    await fail_times(breaker, 1)
    assert state_of(breaker) is State.OPEN


async def test_count_window_slides(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.75, minimum_calls=4, window_calls=4))
    await fail_times(breaker, 2)
    for _ in range(3):
        await breaker.call(ok)  # the window: fail ok ok ok
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count) == (4, 1)
    await fail_times(breaker, 1)  # ok ok ok fail: the first failures have fallen out
    assert breaker.snapshot().failure_count == 1
    await fail_times(breaker, 2)  # ok fail fail fail
    assert breaker.state is State.OPEN


async def test_count_window_wraps_many_times(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=3, window_calls=3))
    for _ in range(10):
        await breaker.call(ok)
        await fail_times(breaker, 1)
        await breaker.call(ok)
        snap = breaker.snapshot()
        assert (snap.state, snap.window_calls) == (State.CLOSED, 3)
        assert snap.failure_count == 1


async def test_time_window_forgets_calls_older_than_its_length(clock: FakeClock) -> None:
    rate = FailureRate(0.5, minimum_calls=2, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    await fail_times(breaker, 1)  # at 1000
    clock.advance(5)
    await breaker.call(ok)  # at 1005: 1 of 2 would trip, were the failure still there...
    assert breaker.state is State.OPEN  # ...and it is

    breaker = make(clock, failure_rate=rate)
    await fail_times(breaker, 1)  # at 1005
    clock.advance(9.99)
    assert breaker.snapshot().window_calls == 1
    clock.advance(0.01)  # 10 s later: gone, and the read alone evicted it
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.failure_count, snap.failure_rate) == (0, 0, None)
    await fail_times(breaker, 1)
    assert breaker.state is State.CLOSED  # one call, below minimum_calls


async def test_time_window_evicts_bucket_by_bucket(clock: FakeClock) -> None:
    rate = FailureRate(1.0, minimum_calls=3, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    await fail_times(breaker, 1)  # at 1000
    clock.advance(5)
    await fail_times(breaker, 1)  # at 1005
    clock.advance(5)  # 1010: the first is 10 s old, the second 5 s
    assert breaker.snapshot().window_calls == 1
    await fail_times(breaker, 1)
    assert breaker.state is State.CLOSED
    clock.advance(4.5)  # 1014.5: the one from 1005 is still there
    await fail_times(breaker, 1)
    assert state_of(breaker) is State.OPEN


async def test_time_window_below_minimum_never_trips(clock: FakeClock) -> None:
    rate = FailureRate(0.1, minimum_calls=3, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    for _ in range(20):
        await fail_times(breaker, 1)
        clock.advance(5)  # never more than 2 calls within 10 s
    assert breaker.state is State.CLOSED


async def test_time_window_precision_is_one_bucket(clock: FakeClock) -> None:
    """Calls fall into one-second buckets, and a bucket leaves the window whole: a call made
    late in a second counts for a little less than the window's length."""
    rate = FailureRate(1.0, minimum_calls=1, window_calls=None, window_seconds=10)
    breaker = make(clock, failure_rate=rate)
    clock.advance(0.75)
    await breaker.call(ok)  # at 1000.75, in the bucket [1000, 1001)
    clock.advance(9.25 - 0.01)
    assert breaker.snapshot().window_calls == 1
    clock.advance(0.01)  # 1010: 9.25 s after the call
    assert breaker.snapshot().window_calls == 0


def test_time_window_memory_is_bounded() -> None:
    for seconds, buckets in ((0.5, 1), (2.5, 3), (60, 60), (10**9, 600)):
        rate = FailureRate(0.5, window_calls=None, window_seconds=seconds)
        window = CircuitBreaker("x", failure_rate=rate)._window
        assert isinstance(window, TimeWindow)
        assert len(window._bucket_calls) == buckets


async def test_slow_calls_trip_even_when_all_succeed(clock: FakeClock) -> None:
    rate = FailureRate(
        1.0, minimum_calls=4, window_calls=10, slow_call_seconds=2.0, slow_call_threshold=0.5
    )
    breaker = make(clock, failure_rate=rate)

    async def taking(seconds: float) -> str:
        clock.advance(seconds)
        return "ok"

    await breaker.call(taking, 2.0)  # slow: the limit is inclusive
    await breaker.call(taking, 1.99)
    await breaker.call(taking, 0.0)
    snap = breaker.snapshot()
    assert (snap.state, snap.failure_rate) == (State.CLOSED, 0.0)
    assert snap.slow_call_rate == pytest.approx(1 / 3)
    async with breaker.guard():  # a block is timed the same way
        clock.advance(5.0)
    assert breaker.state is State.OPEN


async def test_slow_calls_slide_out_of_a_count_window(clock: FakeClock) -> None:
    rate = FailureRate(
        1.0, minimum_calls=3, window_calls=3, slow_call_seconds=1.0, slow_call_threshold=0.6
    )
    breaker = make(clock, failure_rate=rate)

    async def slow() -> str:
        clock.advance(1.0)
        return "ok"

    await breaker.call(slow)
    for _ in range(4):
        await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.slow_call_rate) == (3, 0.0)
    await breaker.call(slow)
    assert state_of(breaker) is State.CLOSED  # 1 of 3: the first slow call is long gone
    await breaker.call(slow)
    assert state_of(breaker) is State.OPEN  # 2 of 3


async def test_a_guarded_block_is_timed_from_its_start(clock: FakeClock) -> None:
    rate = FailureRate(1.0, minimum_calls=2, window_calls=10, slow_call_seconds=1.0)
    breaker = make(clock, failure_rate=rate)
    async with breaker.guard():
        clock.advance(0.5)
    assert breaker.snapshot().slow_call_rate == 0.0
    async with breaker.guard():
        clock.advance(1.0)
    assert breaker.snapshot().slow_call_rate == 0.5


async def test_a_slow_failure_counts_as_both(clock: FakeClock) -> None:
    rate = FailureRate(0.5, minimum_calls=2, window_calls=10, slow_call_seconds=1.0)
    breaker = make(clock, failure_rate=rate)

    async def slow_failure() -> str:
        clock.advance(1.0)
        raise Boom

    with pytest.raises(Boom):
        await breaker.call(slow_failure)
    snap = breaker.snapshot()
    assert (snap.failure_rate, snap.slow_call_rate) == (1.0, 1.0)


async def test_slow_rate_is_zero_without_a_slow_limit(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5))

    async def slow() -> str:
        clock.advance(3600)
        return "ok"

    await breaker.call(slow)
    assert breaker.snapshot().slow_call_rate == 0.0


async def test_rate_ignores_ignored_and_cancelled_calls(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=1, window_calls=5))
    with pytest.raises(UnknownSymbol):
        await breaker.call(unknown)
    gate = Gate()
    task = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    inner = make(clock)
    inner.force_open()
    with pytest.raises(CircuitOpenError):
        await breaker.call(inner.call, ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls) == (State.CLOSED, 0)


async def test_window_is_cleared_on_every_state_change(clock: FakeClock) -> None:
    breaker = make(
        clock,
        success_threshold=1,
        failure_rate=FailureRate(0.5, minimum_calls=2, window_calls=10),
    )
    await breaker.call(ok)
    await fail_times(breaker, 1)
    assert breaker.state is State.OPEN
    assert breaker.snapshot().window_calls == 0
    clock.advance(30)
    await breaker.call(ok)  # the probe closes it
    assert breaker.snapshot().window_calls == 0
    await fail_times(breaker, 1)  # the failures before the trip are forgotten
    assert (breaker.state, breaker.snapshot().window_calls) == (State.CLOSED, 1)
    breaker.reset()
    assert breaker.snapshot().window_calls == 0
    await breaker.call(ok)
    breaker.force_open()
    breaker.reset()
    assert breaker.snapshot().window_calls == 0


async def test_rate_mode_half_open_is_unchanged(clock: FakeClock) -> None:
    breaker = make(
        clock, success_threshold=2, failure_rate=FailureRate(0.5, minimum_calls=1, window_calls=5)
    )
    await fail_times(breaker, 1)
    clock.advance(30)
    await breaker.call(ok)
    snap = breaker.snapshot()
    assert (snap.state, snap.success_count, snap.window_calls) == (State.HALF_OPEN, 1, 0)
    await fail_times(breaker, 1)  # the first failure re-opens
    assert breaker.state is State.OPEN
    clock.advance(30)
    await breaker.call(ok)
    await breaker.call(ok)
    assert state_of(breaker) is State.CLOSED


async def test_rate_mode_does_not_record_stale_results(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=FailureRate(0.5, minimum_calls=1, window_calls=5))
    gate = Gate()

    def boom() -> str:
        raise Boom

    late_failure = asyncio.create_task(breaker.call(gate, boom))
    late_success = asyncio.create_task(breaker.call(gate))
    await settle_tasks()
    breaker.reset()  # a new generation, still CLOSED
    gate.release.set()
    with pytest.raises(Boom):
        await late_failure
    await late_success
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls) == (State.CLOSED, 0)


async def test_rate_mode_reports_durations_to_listeners(clock: FakeClock) -> None:
    durations: list[float] = []

    class Timer(Listener):
        def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
            durations.append(duration)

    breaker = CircuitBreaker("x", clock=clock, listeners=[Timer()], failure_rate=FailureRate(1.0))

    async def slow() -> str:
        clock.advance(1.5)
        return "ok"

    await breaker.call(slow)
    assert durations == [1.5]


# -- 11. backoff of the open timeout -------------------------------------------------------------


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
