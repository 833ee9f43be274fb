"""An asyncio circuit breaker. Standard library only: take it out and reuse it.

CLOSED counts consecutive failures and opens at `failure_threshold`. OPEN rejects at once
until `timeout` has passed; then the breaker is HALF_OPEN, which admits at most
`half_open_max_calls` probes at a time and closes after `success_threshold` consecutive
successes, or re-opens on the first failure.

Design, after sony/gobreaker:
- Transitions are lazy and computed from timestamps: no background tasks or timers.
- Every state change starts a new generation. A call remembers the generation that admitted
  it, and a result from an older generation changes nothing, so a slow call started before a
  trip cannot close the breaker later.
- Bookkeeping never awaits. On an event loop, code without an await cannot be interleaved,
  so a check and the transition it decides are one atomic step, and a cancellation can never
  land between taking a probe slot and giving it back.
- The slow-path admission (OPEN past its timeout, HALF_OPEN probe slots) runs under an
  `asyncio.Lock` that is never held across the protected call. The hot paths (a CLOSED call,
  an OPEN rejection) only read, and take no lock.
- Listeners hear of transitions, call outcomes and rejections after the state is committed;
  one that raises is logged and ignored.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "Listener",
    "Outcome",
    "Snapshot",
    "State",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Module constants: reading an enum member through its class costs a lookup on every call.
_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


class Outcome(enum.Enum):
    """How an admitted call ended, as far as the breaker is concerned."""

    SUCCESS = "success"
    FAILURE = "failure"  # an exception that is_failure counts
    IGNORED = "ignored"  # an exception that is_failure does not count
    CANCELLED = "cancelled"  # CancelledError (or another BaseException): no verdict


class CircuitOpenError(Exception):
    """Raised instead of calling the protected function. A fresh instance every time."""

    # The fields live in `args` and are read back through properties: a rejection is the hot
    # path of an open breaker, and a Python-level __init__ would double its cost.
    if TYPE_CHECKING:

        def __init__(self, name: str, state: State, retry_after: float) -> None: ...

    @property
    def name(self) -> str:
        name: str = self.args[0]
        return name

    @property
    def state(self) -> State:
        state: State = self.args[1]
        return state

    @property
    def retry_after(self) -> float:
        """Seconds until the breaker admits a probe (0 when HALF_OPEN is merely full)."""
        retry_after: float = self.args[2]
        return retry_after

    def __str__(self) -> str:
        return (
            f"circuit breaker {self.name!r} is {self.state.value}; "
            f"retry after {self.retry_after:.1f}s"
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The breaker as it is at one instant. Times are wall-clock seconds since the epoch."""

    name: str
    state: State
    failure_count: int
    success_count: int
    failure_threshold: int
    success_threshold: int
    timeout: float
    half_open_max_calls: int
    last_failure_time: float | None
    opened_at: float | None
    retry_after: float
    forced_open: bool


class Listener(Protocol):
    """Receives the breaker's events. Subclass it and override what you need."""

    def state_changed(self, breaker: CircuitBreaker, old: State, new: State) -> None:
        return None

    def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
        return None

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        return None


def count_every_exception(exc: Exception) -> bool:
    return True


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
        self._lock = asyncio.Lock()

        self._state = State.CLOSED
        self._generation = 0
        self._failures = 0  # consecutive counted failures; kept while OPEN for display
        self._successes = 0  # consecutive successes in HALF_OPEN
        self._probes = 0  # calls in flight admitted by HALF_OPEN
        # Wall-clock times, for display only: every decision uses `clock`.
        self._opened_at: float | None = None
        self._open_until = 0.0
        self._last_failure_time: float | None = None
        self._forced = False

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The state now. Reading it after the open timeout moves OPEN to HALF_OPEN."""
        self._refresh()
        return self._state

    def snapshot(self) -> Snapshot:
        now = self._refresh()
        return Snapshot(
            name=self.name,
            state=self._state,
            failure_count=self._failures,
            success_count=self._successes,
            failure_threshold=self.failure_threshold,
            success_threshold=self.success_threshold,
            timeout=self.timeout,
            half_open_max_calls=self.half_open_max_calls,
            last_failure_time=self._last_failure_time,
            opened_at=self._opened_at,
            retry_after=self._retry_after(now) if self._state is State.OPEN else 0.0,
            forced_open=self._forced,
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
            # writes nothing, and a success only writes when there are failures to forget.
            generation = self._generation
            listeners = self._listeners
            started = self._clock() if listeners else 0.0
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle(generation, False, exc, started)
                raise
            if self._failures or listeners:
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

        transition: tuple[State, State] | None = None
        if generation == self._generation:  # otherwise the result is stale: it changes nothing
            now = self._clock()
            if probe:
                self._probes -= 1
            if outcome is Outcome.SUCCESS:
                if self._state is _CLOSED:
                    self._failures = 0
                else:
                    self._successes += 1
                    if self._successes >= self.success_threshold:
                        transition = self._set_state(_CLOSED, now)
            elif outcome is Outcome.FAILURE:
                self._last_failure_time = time.time()
                self._failures += 1
                if self._state is _HALF_OPEN or self._failures >= self.failure_threshold:
                    transition = self._set_state(_OPEN, now)

        if self._listeners:
            duration = self._clock() - started
            self._emit(lambda listener: listener.call_finished(self, outcome, duration))
        if transition is not None:
            self._emit_transition(transition)

    # -- manual control ------------------------------------------------------------------

    def force_open(self) -> None:
        """Open the breaker and keep it open until reset()."""
        now = self._refresh()
        old = self._state
        self._set_state(State.OPEN, now)
        self._forced = True
        self._open_until = math.inf
        if old is not State.OPEN:
            self._emit_transition((old, State.OPEN))

    def reset(self) -> None:
        """Back to CLOSED with every counter cleared."""
        now = self._refresh()
        old = self._state
        self._set_state(State.CLOSED, now)
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
            return self._set_state(State.HALF_OPEN, now)
        return None

    def _set_state(self, new: State, now: float) -> tuple[State, State]:
        old = self._state
        self._state = new
        self._generation += 1
        self._successes = 0
        self._probes = 0
        if new is State.OPEN:
            self._opened_at = time.time()
            self._open_until = now + self.timeout
        elif new is State.CLOSED:
            self._failures = 0
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
        self._started = breaker._clock() if breaker._listeners else 0.0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._breaker._settle(self._generation, self._probe, exc, self._started)
