"""An asyncio circuit breaker. Standard library only: take it out and reuse it.

CLOSED counts consecutive failures and opens at `failure_threshold`. OPEN rejects at once
until `timeout` has passed; then the breaker is HALF_OPEN, which admits at most
`half_open_max_calls` probes at a time and closes after `success_threshold` consecutive
successes, or re-opens on the first failure.

Two options, both off by default:
- `failure_rate=FailureRate(...)`: CLOSED judges a window of recent calls instead, the last N
  (a ring buffer) or those of the last T seconds (a ring of buckets of at most a second, as
  resilience4j does, so memory does not grow with the call rate; a call leaves the window
  between T - bucket and T seconds after it ended). Once the window holds `minimum_calls`, it
  opens when the share of failures, or of slow calls, reaches its threshold. The window
  starts empty at every state change.
- `backoff=Backoff(...)`: each consecutive re-open from HALF_OPEN multiplies the open timeout,
  with jitter and a cap, so a dependency that stays down is probed less and less often. The
  first opening from CLOSED always waits exactly `timeout`; closing starts the count again.

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

import abc
import asyncio
import enum
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal, ParamSpec, Protocol, TypeVar

__all__ = [
    "Backoff",
    "CircuitBreaker",
    "CircuitOpenError",
    "FailureRate",
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

# A time window of T seconds has ceil(T) buckets (each at most a second wide) up to this many;
# a longer window gets wider buckets, so even an absurd window_seconds has bounded memory.
_MAX_BUCKETS = 600


class Outcome(enum.Enum):
    """How an admitted call ended, as far as the breaker is concerned."""

    SUCCESS = "success"
    FAILURE = "failure"  # an exception that is_failure counts
    IGNORED = "ignored"  # an exception that is_failure does not count
    CANCELLED = "cancelled"  # CancelledError (or another BaseException): no verdict


@dataclass(frozen=True, slots=True)
class FailureRate:
    """Open CLOSED on the share of failed (or slow) calls in a window, not on a run of them.

    Set exactly one of `window_calls` (the last N calls) and `window_seconds` (the calls that
    ended in the last T seconds, to within a bucket: a second, or T / 600 past 600 seconds);
    the default is a count window, so a time window needs `window_calls=None`.
    """

    threshold: float  # open when failures / calls in the window >= this (0 < threshold <= 1)
    minimum_calls: int = 10  # no verdict until the window holds this many calls
    window_calls: int | None = 20
    window_seconds: float | None = None
    slow_call_seconds: float | None = None  # a call this long or longer is slow, whatever it did
    slow_call_threshold: float = 1.0  # open when slow calls / calls >= this (0 < x <= 1)

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0 < self.slow_call_threshold <= 1:
            raise ValueError(
                f"slow_call_threshold must be in (0, 1], got {self.slow_call_threshold}"
            )
        if self.minimum_calls < 1:
            raise ValueError(f"minimum_calls must be at least 1, got {self.minimum_calls}")
        if (self.window_calls is None) == (self.window_seconds is None):
            raise ValueError(
                "set exactly one of window_calls and window_seconds "
                "(window_calls=None for a time window)"
            )
        if self.window_calls is not None:
            if self.window_calls < 1:
                raise ValueError(f"window_calls must be at least 1, got {self.window_calls}")
            # A count window never holds more than window_calls: it could never give a verdict.
            if self.minimum_calls > self.window_calls:
                raise ValueError(
                    f"minimum_calls ({self.minimum_calls}) must not exceed "
                    f"window_calls ({self.window_calls})"
                )
        if self.window_seconds is not None and not (
            math.isfinite(self.window_seconds) and self.window_seconds > 0
        ):
            raise ValueError(
                f"window_seconds must be a finite number of seconds > 0, got {self.window_seconds}"
            )
        if self.slow_call_seconds is not None and not (
            math.isfinite(self.slow_call_seconds) and self.slow_call_seconds > 0
        ):
            raise ValueError(
                "slow_call_seconds must be a finite number of seconds > 0, "
                f"got {self.slow_call_seconds}"
            )


@dataclass(frozen=True, slots=True)
class Backoff:
    """The k-th consecutive re-open from HALF_OPEN stays open for
    min(max_timeout, timeout * multiplier**k * uniform(1 - jitter, 1 + jitter))."""

    multiplier: float = 2.0  # >= 1
    max_timeout: float = 300.0  # seconds, >= 0
    jitter: float = 0.1  # 0 <= jitter < 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.multiplier) and self.multiplier >= 1):
            raise ValueError(f"multiplier must be a finite number >= 1, got {self.multiplier}")
        if not (math.isfinite(self.max_timeout) and self.max_timeout >= 0):
            raise ValueError(
                f"max_timeout must be a finite number of seconds >= 0, got {self.max_timeout}"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")


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
    failure_count: int  # consecutive failures, or in failure-rate mode failures in the window
    success_count: int
    failure_threshold: int
    success_threshold: int
    timeout: float
    half_open_max_calls: int
    last_failure_time: float | None
    opened_at: float | None
    retry_after: float
    forced_open: bool
    open_timeout: float  # of the current or latest opening, backoff included
    reopens: int  # consecutive re-opens from HALF_OPEN since the breaker last closed
    mode: Literal["consecutive", "failure_rate"]
    window_calls: int  # calls in the window (0 in consecutive mode)
    failure_rate: float | None  # over the window; None in consecutive mode or when it is empty
    slow_call_rate: float | None  # likewise


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


class _Window(abc.ABC):
    """The calls CLOSED settled lately, as running totals, and the verdict on them."""

    __slots__ = ("_slow_after", "calls", "failures", "rate", "slow")

    def __init__(self, rate: FailureRate) -> None:
        self.rate = rate
        # Without a slow-call limit no duration is slow, and 0 slow calls never reach a
        # slow_call_threshold above 0: the verdict needs no branch for it.
        self._slow_after = math.inf if rate.slow_call_seconds is None else rate.slow_call_seconds
        self.calls = self.failures = self.slow = 0

    def record(self, now: float, failed: bool, duration: float) -> bool:
        """Add a settled call; True when the window now says to open."""
        self._add(now, failed, duration >= self._slow_after)
        calls, rate = self.calls, self.rate
        return calls >= rate.minimum_calls and (
            self.failures / calls >= rate.threshold or self.slow / calls >= rate.slow_call_threshold
        )

    @abc.abstractmethod
    def _add(self, now: float, failed: bool, slow: bool) -> None: ...

    @abc.abstractmethod
    def expire(self, now: float) -> None:
        """Forget the calls that have aged out by `now`."""

    @abc.abstractmethod
    def clear(self) -> None: ...


class _CountWindow(_Window):
    """The last N calls: a ring of flags (1 failed, 2 slow), O(1) per call."""

    __slots__ = ("_next", "_ring")

    def __init__(self, rate: FailureRate, size: int) -> None:
        super().__init__(rate)
        self._ring = bytearray(size)
        self._next = 0

    def _add(self, now: float, failed: bool, slow: bool) -> None:
        ring, i = self._ring, self._next
        if self.calls == len(ring):  # full: the oldest call, in this slot, drops out
            old = ring[i]
            self.failures -= old & 1
            self.slow -= old >> 1
        else:
            self.calls += 1
        ring[i] = failed | slow << 1
        self.failures += failed
        self.slow += slow
        self._next = i + 1 if i + 1 < len(ring) else 0

    def expire(self, now: float) -> None:
        return None  # calls leave a count window only when newer ones push them out

    def clear(self) -> None:
        # Slots are read only once the ring is full, and by then all have been rewritten.
        self.calls = self.failures = self.slow = self._next = 0


class _TimeWindow(_Window):
    """The calls of the last T seconds, in a ring of n buckets of T / n seconds each. Bucket
    number floor(now / width) lives in slot number % n; the window is the newest n buckets,
    so a call counts for between T - width and T seconds."""

    __slots__ = ("_bucket_calls", "_bucket_failures", "_bucket_slow", "_head", "_width")

    def __init__(self, rate: FailureRate, seconds: float, now: float) -> None:
        super().__init__(rate)
        n = min(math.ceil(seconds), _MAX_BUCKETS)
        self._width = seconds / n
        self._bucket_calls = [0] * n
        self._bucket_failures = [0] * n
        self._bucket_slow = [0] * n
        self._head = math.floor(now / self._width)  # the newest bucket's number

    def _add(self, now: float, failed: bool, slow: bool) -> None:
        self.expire(now)
        i = self._head % len(self._bucket_calls)
        self._bucket_calls[i] += 1
        self._bucket_failures[i] += failed
        self._bucket_slow[i] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def expire(self, now: float) -> None:
        head = math.floor(now / self._width)
        if head <= self._head:  # still the newest bucket (or a clock that stepped back)
            return
        n = len(self._bucket_calls)
        if head - self._head >= n:
            self.clear()
        else:
            # Empty the buckets between the old head and the new one, now the oldest.
            for number in range(self._head + 1, head + 1):
                i = number % n
                self.calls -= self._bucket_calls[i]
                self.failures -= self._bucket_failures[i]
                self.slow -= self._bucket_slow[i]
                self._bucket_calls[i] = self._bucket_failures[i] = self._bucket_slow[i] = 0
        self._head = head

    def clear(self) -> None:
        n = len(self._bucket_calls)
        self._bucket_calls, self._bucket_failures, self._bucket_slow = [0] * n, [0] * n, [0] * n
        self.calls = self.failures = self.slow = 0


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
        self._lock = asyncio.Lock()
        self._backoff = backoff
        self._random = random

        self._window: _Window | None
        if failure_rate is None:
            self._window = None
        elif failure_rate.window_calls is not None:
            self._window = _CountWindow(failure_rate, failure_rate.window_calls)
        else:
            assert failure_rate.window_seconds is not None  # FailureRate checked it
            self._window = _TimeWindow(failure_rate, failure_rate.window_seconds, clock())
        # Whether every CLOSED call must be timed and settled, success or not. One flag, so
        # the consecutive-mode fast path pays nothing for the failure-rate mode.
        self._watched = bool(self._listeners) or self._window is not None

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
            watched = self._watched
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
        backoff = self._backoff
        if backoff is None:
            return self.timeout
        try:
            grown = self.timeout * backoff.multiplier**self._reopens
        except OverflowError:  # multiplier**k past 1e308: long past any cap (unless timeout is 0)
            grown = math.inf if self.timeout else 0.0
        jittered = grown * (1 + backoff.jitter * (2 * self._random() - 1))
        return float(min(backoff.max_timeout, jittered))

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
        self._started = breaker._clock() if breaker._watched else 0.0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._breaker._settle(self._generation, self._probe, exc, self._started)
