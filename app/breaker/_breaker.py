"""CircuitBreaker, the state machine the package is about, and Guard, its context manager.
The package docstring (app/breaker/__init__.py) gives the rules and the design.

Over 300 lines on purpose: CircuitBreaker is one class, and splitting it across modules
(a base class or a delegate) would add a lookup to the lock-free CLOSED path that
`make bench-breaker` measures at a quarter of a microsecond."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import ParamSpec, TypeVar

from app.breaker._backoff import Backoff, reopen_timeout
from app.breaker._types import (
    CircuitOpenError,
    Listener,
    Outcome,
    Snapshot,
    State,
    count_every_exception,
)
from app.breaker._window import FailureRate, new_window

# The package's name, not this private module's: operators filter the logs on "app.breaker"
# (docs/runbook.md), as they did when the breaker was one module.
logger = logging.getLogger("app.breaker")

P = ParamSpec("P")
T = TypeVar("T")

# Module constants: reading an enum member through its class costs a lookup on every call.
_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        success_threshold: int = 3,
        timeout: float = 30.0,
        half_open_max_calls: int = 1,
        is_failure: Callable[[Exception], bool] = count_every_exception,
        clock: Callable[[], float] = time.monotonic,
        listeners: Sequence[Listener] = (),
        failure_rate: FailureRate | None = None,
        backoff: Backoff | None = None,
        random: Callable[[], float] = random.random,
    ) -> None:
        if not name:
            raise ValueError("name must not be empty")
        for setting, value in (
            ("failure_threshold", failure_threshold),
            ("success_threshold", success_threshold),
            ("half_open_max_calls", half_open_max_calls),
        ):
            if value < 1:
                raise ValueError(f"{setting} must be at least 1, got {value}")
        if not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout}")

        self.name = name
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.timeout = float(timeout)
        self.half_open_max_calls = half_open_max_calls
        self._is_failure = is_failure
        self._clock = clock
        self._listeners = tuple(listeners)
        # Serializes the slow-path admission (_admit: OPEN past its timeout, HALF_OPEN probe
        # slots). Nothing under it awaits yet, so on one event loop that is atomic anyway and
        # the lock is never contended; the hot paths never take it, and an uncontended
        # `async with` on it costs about 5 bare awaits. It is there for the next step, which
        # gives that admission an await (a state store shared between replicas): from then on
        # callers could interleave between reading the state and taking a probe slot, and the
        # lock is what keeps a check and the transition it decides one step.
        self._lock = asyncio.Lock()
        self._backoff = backoff
        self._random = random

        self._window = None if failure_rate is None else new_window(failure_rate, clock)
        # Whether every CLOSED call must be timed and settled, success or not. One flag, so
        # the consecutive-mode fast path pays nothing for the failure-rate mode.
        self._settles_every_call = bool(self._listeners) or self._window is not None

        self._state = State.CLOSED
        self._generation = 0
        self._failures = 0  # consecutive counted failures; kept while OPEN for display
        self._successes = 0  # consecutive successes in HALF_OPEN
        self._probes = 0  # calls in flight admitted by HALF_OPEN
        self._reopens = 0  # consecutive re-opens from HALF_OPEN since the last close
        self._open_timeout = self.timeout  # how long the current or latest opening lasts
        # Wall-clock times, for display only: every decision uses `clock`.
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._last_failure_time: float | None = None
        self._forced = False

    # -- reading -------------------------------------------------------------------------

    @property
    def failure_rate(self) -> FailureRate | None:
        """The failure-rate settings, or None in consecutive mode."""
        return None if self._window is None else self._window.rate

    @property
    def backoff(self) -> Backoff | None:
        return self._backoff

    @property
    def state(self) -> State:
        """The state now. Reading it after the open timeout moves OPEN to HALF_OPEN."""
        self._refresh()
        return self._state

    def snapshot(self) -> Snapshot:
        now = self._refresh()
        window = self._window
        if window is None:
            failures, calls, failure_rate, slow_call_rate = self._failures, 0, None, None
        else:
            window.expire(now)
            failures, calls = window.failures, window.calls
            failure_rate = failures / calls if calls else None
            slow_call_rate = window.slow / calls if calls else None
        return Snapshot(
            name=self.name,
            state=self._state,
            failure_count=failures,
            success_count=self._successes,
            failure_threshold=self.failure_threshold,
            success_threshold=self.success_threshold,
            timeout=self.timeout,
            half_open_max_calls=self.half_open_max_calls,
            last_failure_time=self._last_failure_time,
            opened_at=self._opened_at,
            retry_after=self._retry_after(now) if self._state is State.OPEN else 0.0,
            forced_open=self._forced,
            open_timeout=self._open_timeout,
            reopens=self._reopens,
            mode="consecutive" if window is None else "failure_rate",
            window_calls=calls,
            failure_rate=failure_rate,
            slow_call_rate=slow_call_rate,
        )

    def _retry_after(self, now: float) -> float:
        """Seconds until OPEN admits a probe; a forced breaker suggests its timeout."""
        return self.timeout if self._forced else max(0.0, self._open_until - now)

    # -- calling -------------------------------------------------------------------------

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `await fn(*args, **kwargs)` through the breaker."""
        state = self._state
        if state is _CLOSED:
            # The path nearly every call takes, stripped to what it needs: a CLOSED admission
            # writes nothing, and a success only writes when there are failures to forget or
            # someone watches every call (listeners, a failure-rate window).
            generation = self._generation
            watched = self._settles_every_call
            started = self._clock() if watched else 0.0
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle(generation, False, exc, started)
                raise
            if self._failures or watched:
                self._settle(generation, False, None, started)
            return result
        if state is _OPEN:
            now = self._clock()
            if now < self._open_until:
                raise self._rejected(now)  # without awaiting anything
        async with Guard(self):
            return await fn(*args, **kwargs)

    def check(self) -> None:
        """Raise CircuitOpenError if a call now would be rejected outright (OPEN before its
        timeout), else do nothing. Admits nothing: it lets a caller skip the work it would
        do before `call` when the answer is already known."""
        if self._state is _OPEN:
            now = self._clock()
            if now < self._open_until:
                raise self._rejected(now)

    def guard(self) -> Guard:
        """`async with breaker.guard(): ...` protects a block instead of a call."""
        return Guard(self)

    async def _admit(self) -> tuple[int, bool]:
        """Admit a call or raise CircuitOpenError. Returns (generation, is_probe)."""
        if self._state is _CLOSED:
            return self._generation, False
        now = self._clock()
        if self._state is _OPEN and now < self._open_until:
            raise self._rejected(now)

        rejection: CircuitOpenError | None = None
        async with self._lock:
            # Nothing awaits between here and the end of the block, so when many callers
            # arrive in one tick exactly one of them moves OPEN to HALF_OPEN.
            now = self._clock()
            transition = self._expire(now)
            if self._state is _OPEN:
                rejection = CircuitOpenError(self.name, _OPEN, self._retry_after(now))
            elif self._state is _HALF_OPEN:
                if self._probes < self.half_open_max_calls:
                    self._probes += 1
                else:
                    rejection = CircuitOpenError(self.name, _HALF_OPEN, 0.0)
            ticket = (self._generation, self._state is _HALF_OPEN)

        if transition is not None:
            self._emit_transition(transition)
        if rejection is not None:
            self._emit_rejection(rejection)
            raise rejection
        return ticket

    def _rejected(self, now: float) -> CircuitOpenError:
        error = CircuitOpenError(self.name, _OPEN, self._retry_after(now))
        if self._listeners:
            self._emit_rejection(error)
        return error

    def _settle(
        self, generation: int, probe: bool, exc: BaseException | None, started: float
    ) -> None:
        """Record how an admitted call ended. Synchronous, so it cannot be cancelled halfway."""
        if exc is None:
            outcome = Outcome.SUCCESS
        elif not isinstance(exc, Exception):
            outcome = Outcome.CANCELLED
        elif isinstance(exc, CircuitOpenError) or not self._is_failure(exc):
            outcome = Outcome.IGNORED
        else:
            outcome = Outcome.FAILURE

        now = self._clock()
        transition: tuple[State, State] | None = None
        if generation == self._generation:  # otherwise the result is stale: it changes nothing
            if probe:
                self._probes -= 1
            window = self._window
            if outcome is Outcome.SUCCESS:
                if self._state is not _CLOSED:
                    self._successes += 1
                    if self._successes >= self.success_threshold:
                        transition = self._set_state(_CLOSED)
                elif window is None:
                    self._failures = 0
                elif window.record(now, False, now - started):
                    transition = self._open(now, self.timeout)
            elif outcome is Outcome.FAILURE:
                self._last_failure_time = time.time()
                if self._state is _HALF_OPEN:
                    self._failures += 1  # shown while OPEN, as after a trip from CLOSED
                    self._reopens += 1
                    transition = self._open(now, self._reopen_timeout())
                elif window is None:
                    self._failures += 1
                    if self._failures >= self.failure_threshold:
                        transition = self._open(now, self.timeout)
                elif window.record(now, True, now - started):
                    transition = self._open(now, self.timeout)

        if self._listeners:
            duration = now - started
            self._emit(lambda listener: listener.call_finished(self, outcome, duration))
        if transition is not None:
            self._emit_transition(transition)

    # -- manual control ------------------------------------------------------------------

    def force_open(self) -> None:
        """Open the breaker and keep it open until reset()."""
        now = self._refresh()
        old = self._state
        self._open(now, self.timeout)  # the timeout it reports; it lasts until reset()
        self._forced = True
        self._open_until = math.inf
        if old is not State.OPEN:
            self._emit_transition((old, State.OPEN))

    def reset(self) -> None:
        """Back to CLOSED with every counter cleared."""
        self._refresh()
        old = self._state
        self._set_state(State.CLOSED)
        self._last_failure_time = None
        if old is not State.CLOSED:
            self._emit_transition((old, State.CLOSED))

    # -- bookkeeping ---------------------------------------------------------------------

    def _refresh(self) -> float:
        """Commit a due OPEN -> HALF_OPEN transition and announce it. Returns the time now."""
        now = self._clock()
        transition = self._expire(now)
        if transition is not None:
            self._emit_transition(transition)
        return now

    def _expire(self, now: float) -> tuple[State, State] | None:
        if self._state is State.OPEN and now >= self._open_until:
            return self._set_state(State.HALF_OPEN)
        return None

    def _open(self, now: float, timeout: float) -> tuple[State, State]:
        transition = self._set_state(State.OPEN)
        self._open_timeout = timeout
        self._open_until = now + timeout
        return transition

    def _reopen_timeout(self) -> float:
        """The open timeout of the k-th consecutive re-open, k = self._reopens >= 1."""
        if self._backoff is None:
            return self.timeout
        return reopen_timeout(self._backoff, self.timeout, self._reopens, self._random)

    def _set_state(self, new: State) -> tuple[State, State]:
        """Change state (callers opening use _open, which also sets the timeout)."""
        old = self._state
        self._state = new
        self._generation += 1
        self._successes = 0
        self._probes = 0
        if self._window is not None:
            self._window.clear()
        if new is State.OPEN:
            self._opened_at = time.time()
        elif new is State.CLOSED:
            self._failures = 0
            self._reopens = 0
            self._opened_at = None
            self._forced = False
        else:
            self._failures = 0
        return old, new

    def _emit_transition(self, transition: tuple[State, State]) -> None:
        old, new = transition
        if new is State.OPEN:
            logger.warning("circuit breaker %r opened (was %s)", self.name, old.value)
        else:
            logger.info("circuit breaker %r is now %s (was %s)", self.name, new.value, old.value)
        self._emit(lambda listener: listener.state_changed(self, old, new))

    def _emit_rejection(self, error: CircuitOpenError) -> None:
        self._emit(lambda listener: listener.call_rejected(self, error))

    def _emit(self, event: Callable[[Listener], None]) -> None:
        for listener in self._listeners:
            try:
                event(listener)
            except Exception:
                logger.exception("circuit breaker %r: listener %r failed", self.name, listener)


class Guard:
    """The async context manager behind CircuitBreaker.guard()."""

    __slots__ = ("_breaker", "_generation", "_probe", "_started")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    async def __aenter__(self) -> None:
        breaker = self._breaker
        self._generation, self._probe = await breaker._admit()
        self._started = breaker._clock() if breaker._settles_every_call else 0.0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._breaker._settle(self._generation, self._probe, exc, self._started)
