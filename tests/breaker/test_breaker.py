"""The state machine, CircuitBreaker and Guard, rule by rule (the README's Semantics 1 to 9),
on a fake clock; and the two options, off by default."""

from __future__ import annotations

import asyncio
import logging
import time

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
from tests.breaker.conftest import (
    Boom,
    Gate,
    Recorder,
    UnknownSymbol,
    fail,
    fail_times,
    make,
    moves,
    ok,
    settle_tasks,
    state_of,
    trip,
    unknown,
)
from tests.conftest import FakeClock

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


# -- failure rate and backoff: off by default, and free when off -------------------------------


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


# -- transitions with their reasons ------------------------------------------------------------


async def test_every_transition_is_heard_with_its_reason_generation_and_retry_after(
    clock: FakeClock,
) -> None:
    recorder = Recorder()
    breaker = make(clock, recorder, backoff=Backoff(2.0, 300.0, jitter=0.0))
    await trip(breaker)
    clock.advance(30)
    assert state_of(breaker) is State.HALF_OPEN  # the lazy move, heard when read
    await fail_times(breaker, 1)
    clock.advance(60)
    for _ in range(3):
        await breaker.call(ok)
    breaker.force_open()
    breaker.reset()
    assert moves(recorder) == [
        ("closed", "open", "failure_threshold", 1),
        ("open", "half_open", "timeout_elapsed", 2),
        ("half_open", "open", "probe_failed", 3),
        ("open", "half_open", "timeout_elapsed", 4),
        ("half_open", "closed", "probes_succeeded", 5),
        ("closed", "open", "forced_open", 6),
        ("open", "closed", "reset", 7),
    ]
    assert [t.retry_after for t in recorder.heard] == [30.0, 0, 60.0, 0, 0, 30.0, 0]
    assert recorder.transitions == [(t.old, t.new) for t in recorder.heard]


async def test_a_failure_rate_trip_is_heard_as_such(clock: FakeClock) -> None:
    recorder = Recorder()
    breaker = make(
        clock, recorder, failure_rate=FailureRate(threshold=0.5, minimum_calls=2, window_calls=2)
    )
    await breaker.call(ok)
    await fail_times(breaker, 1)
    assert moves(recorder) == [("closed", "open", "failure_rate", 1)]
