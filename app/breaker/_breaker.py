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
from app.breaker._shared import Claim, Document, Link, Record, Sharing
from app.breaker._types import (
    CircuitOpenError,
    Listener,
    Outcome,
    Snapshot,
    State,
    Transition,
    count_every_exception,
)
from app.breaker._window import FailureRate, new_window

# The package's name, not this private module's: operators filter the logs on "app.breaker"
# (docs/runbook.md), as they did when the breaker was one module.
logger = logging.getLogger("app.breaker")

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")

# Module constants: reading an enum member through its class costs a lookup on every call.
_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN
_FORCE_OPEN, _RESET = "force_open", "reset"  # a manual command not yet written to the store

# What admission hands the call: the local generation, whether it is a probe, and the
# store's claim (None when the breaker decided alone: no store, or one that did not answer).
Ticket = tuple[int, bool, Claim | None]
# A change of this copy's state: from, to, and why (a Transition's reason).
Change = tuple[State, State, str]


def _classify(exc: BaseException | None, is_failure: Callable[[Exception], bool]) -> Outcome:
    if exc is None:
        return Outcome.SUCCESS
    if not isinstance(exc, Exception):
        return Outcome.CANCELLED
    if isinstance(exc, CircuitOpenError) or not is_failure(exc):
        return Outcome.IGNORED
    return Outcome.FAILURE


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
        shared: Sharing | None = None,
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
        # slots) and, with a store, every exchange with it. Without a store nothing under it
        # awaits, so on one event loop that is atomic anyway and the lock is never contended;
        # the hot paths never take it, and an uncontended `async with` on it costs about 5
        # bare awaits. With a store the admission awaits it: callers could interleave between
        # reading the state and taking a probe slot, and the lock keeps one caller at a time
        # asking, and the answers taken in the order the store gave them.
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

        self._link = None if shared is None else Link(shared)
        self._fast_state: State | None = State.CLOSED  # set by _arm_fast_paths
        self._fast_until = 0.0
        self._arm_fast_paths()

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
        state = self._fast_state
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
            if now < self._fast_until:
                raise self._rejected(now)  # without awaiting anything
        async with Guard(self):
            return await fn(*args, **kwargs)

    def check(self) -> None:
        """Raise CircuitOpenError if a call now would be rejected outright (OPEN before its
        timeout), else do nothing. Admits nothing: it lets a caller skip the work it would
        do before `call` when the answer is already known."""
        if self._fast_state is _OPEN:
            now = self._clock()
            if now < self._fast_until:
                raise self._rejected(now)

    def guard(self) -> Guard:
        """`async with breaker.guard(): ...` protects a block instead of a call."""
        return Guard(self)

    async def _admit(self) -> Ticket:
        """Admit a call or raise CircuitOpenError."""
        if self._link is not None:
            return await self._admit_shared(self._link)
        if self._state is _CLOSED:
            return self._generation, False, None
        now = self._clock()
        if self._state is _OPEN and now < self._open_until:
            raise self._rejected(now)

        async with self._lock:
            # Nothing awaits between here and the end of the block, so when many callers
            # arrive in one tick exactly one of them moves OPEN to HALF_OPEN.
            transition, admission = self._admit_alone(self._clock())
        return self._admitted(transition, admission)

    def _admit_alone(self, now: float) -> tuple[Change | None, Ticket | CircuitOpenError]:
        """Decide an admission on this copy of the state alone."""
        transition = self._expire(now)
        if self._state is _OPEN:
            return transition, CircuitOpenError(self.name, _OPEN, self._retry_after(now))
        if self._state is _HALF_OPEN:
            if self._probes >= self.half_open_max_calls:
                return transition, CircuitOpenError(self.name, _HALF_OPEN, 0.0)
            self._probes += 1
        return transition, (self._generation, self._state is _HALF_OPEN, None)

    def _admitted(self, transition: Change | None, admission: Ticket | CircuitOpenError) -> Ticket:
        """Announce an admission decided under the lock, once it is released."""
        self._emit_transition(transition)
        if isinstance(admission, CircuitOpenError):
            self._emit_rejection(admission)
            raise admission
        return admission

    async def _admit_shared(self, link: Link) -> Ticket:
        """Admit a call on the store's word: every CLOSED call asks it (so a trip anywhere
        stops it), and a probe needs one of its leases. The lock makes one caller at a time
        ask; a caller that waited for it while another asked takes that answer instead."""
        arrived = link.exchanges
        async with self._lock:
            now = self._clock()
            if now < link.retry_at:
                transition, admission = self._admit_alone(now)
            elif self._state is _CLOSED and link.exchanges != arrived:
                return self._generation, False, Claim(link.generation, None)
            elif now < link.next_sync and (
                now < self._open_until
                if self._state is _OPEN
                else self._state is _HALF_OPEN and self._probes >= self.half_open_max_calls
            ):
                # Rejected on what the store said a moment ago: asking again would not help.
                transition, admission = self._admit_alone(now)
            else:
                try:
                    claim, transition = await self._exchange(
                        link, lambda record, now: record.admit(now, self, link.sharing.probe_lease)
                    )
                except Exception as error:
                    self._store_failed(link, error)
                    transition, admission = self._admit_alone(self._clock())
                else:
                    admission = self._ticket(claim)
        return self._admitted(transition, admission)

    def _ticket(self, claim: Claim | None) -> Ticket | CircuitOpenError:
        """The store's admission, on this copy just updated from it."""
        if claim is not None:
            return self._generation, claim.lease is not None, claim
        if self._state is _HALF_OPEN:
            return CircuitOpenError(self.name, _HALF_OPEN, 0.0)
        return CircuitOpenError(self.name, _OPEN, self._retry_after(self._clock()))

    def _rejected(self, now: float) -> CircuitOpenError:
        error = CircuitOpenError(self.name, _OPEN, self._retry_after(now))
        if self._listeners:
            self._emit_rejection(error)
        return error

    def _settle(
        self, generation: int, probe: bool, exc: BaseException | None, started: float
    ) -> None:
        """Record how an admitted call ended. Synchronous, so it cannot be cancelled halfway."""
        # _classify, inlined: the call would cost the failure path a tenth of its time.
        if exc is None:
            outcome = Outcome.SUCCESS
        elif not isinstance(exc, Exception):
            outcome = Outcome.CANCELLED
        elif isinstance(exc, CircuitOpenError) or not self._is_failure(exc):
            outcome = Outcome.IGNORED
        else:
            outcome = Outcome.FAILURE

        now = self._clock()
        transition: Change | None = None
        if generation == self._generation:  # otherwise the result is stale: it changes nothing
            if probe:
                self._probes -= 1
            window = self._window
            if outcome is Outcome.SUCCESS:
                if self._state is not _CLOSED:
                    self._successes += 1
                    if self._successes >= self.success_threshold:
                        transition = self._set_state(_CLOSED, "probes_succeeded")
                elif window is None:
                    self._failures = 0
                elif window.record(now, False, now - started):
                    transition = self._open(now, self.timeout, "failure_rate")
            elif outcome is Outcome.FAILURE:
                self._last_failure_time = time.time()
                if self._state is _HALF_OPEN:
                    self._failures += 1  # shown while OPEN, as after a trip from CLOSED
                    self._reopens += 1
                    transition = self._open(now, self._reopen_timeout(), "probe_failed")
                elif window is None:
                    self._failures += 1
                    if self._failures >= self.failure_threshold:
                        transition = self._open(now, self.timeout, "failure_threshold")
                elif window.record(now, True, now - started):
                    transition = self._open(now, self.timeout, "failure_rate")

        if self._listeners:
            duration = now - started
            self._emit(lambda listener: listener.call_finished(self, outcome, duration))
        if transition is not None:
            self._emit_transition(transition)

    async def _settle_shared(
        self, generation: int, probe: bool, claim: Claim, exc: BaseException | None, started: float
    ) -> None:
        """Record how a call the store admitted ended: in the store when it changes the shared
        state (a failure, a probe's result, a success that ends a run of failures, a trip of
        this process's window), else here only. If the store fails, here only."""
        outcome = _classify(exc, self._is_failure)
        now = self._clock()
        window, trip = self._window, False
        counted = outcome is Outcome.SUCCESS or outcome is Outcome.FAILURE
        if window is not None and counted and not probe and generation == self._generation:
            trip = window.record(now, outcome is Outcome.FAILURE, now - started)
        if probe:
            shared = True
        elif window is None:
            shared = outcome is Outcome.FAILURE or (
                outcome is Outcome.SUCCESS and self._failures > 0
            )
        else:
            shared = trip
        transition, stored = None, False
        link = self._link
        if shared and link is not None:
            async with self._lock:
                if self._clock() >= link.retry_at:
                    try:
                        _, transition = await self._exchange(
                            link, lambda record, now: record.settle(now, self, claim, outcome, trip)
                        )
                        stored = True
                    except Exception as error:
                        self._store_failed(link, error)
        if not stored:
            transition = self._settle_alone(generation, probe, outcome, trip, now)
        if self._listeners:
            duration = now - started
            self._emit(lambda listener: listener.call_finished(self, outcome, duration))
        self._emit_transition(transition)

    def _settle_alone(
        self, generation: int, probe: bool, outcome: Outcome, trip: bool, now: float
    ) -> Change | None:
        """A shared call's result on this copy only, as _settle would record it (the window
        has had it already)."""
        if generation != self._generation:
            return None
        if probe:
            self._probes -= 1
        if trip:
            return self._open(now, self.timeout, "failure_rate")
        if outcome is Outcome.SUCCESS:
            if self._state is not _CLOSED:
                self._successes += 1
                if self._successes >= self.success_threshold:
                    return self._set_state(_CLOSED, "probes_succeeded")
            elif self._window is None:
                self._failures = 0
        elif outcome is Outcome.FAILURE:
            self._last_failure_time = time.time()
            if self._state is _HALF_OPEN:
                self._failures += 1
                self._reopens += 1
                return self._open(now, self._reopen_timeout(), "probe_failed")
            if self._window is None:
                self._failures += 1
                if self._failures >= self.failure_threshold:
                    return self._open(now, self.timeout, "failure_threshold")
        return None

    # -- the shared state ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Bring this copy up to date with the shared state, writing a force_open() or
        reset() given here first. Without a store, or when it does not answer, this copy
        stands as it is."""
        link = self._link
        if link is None:
            return
        async with self._lock:
            try:
                _, transition = await self._exchange(link, lambda record, now: None)
            except Exception as error:
                self._store_failed(link, error)
                return
        self._emit_transition(transition)

    async def _exchange(
        self, link: Link, operation: Callable[[Record, float], R]
    ) -> tuple[R, Change | None]:
        """One atomic change of the shared document: a manual command given here first, the
        lazy transitions, then `operation`; then this copy takes the result. Returns the
        operation's result and this copy's transition. Raises what the store raises."""
        command, timeout = link.command, self.timeout

        def change(document: Document, now: float) -> tuple[Document, tuple[Record, float, R]]:
            record = Record.load(document, timeout)
            if command == _FORCE_OPEN:
                record.force_open(now, timeout)
            elif command == _RESET:
                record.reset(now)
            record.expire(now)
            result = operation(record, now)
            return record.dump(), (record, now, result)

        link.exchanges += 1
        record, store_now, result = await link.sharing.store.update(link.sharing.key, change)
        if link.command is command:  # not replaced by a newer one while the store worked
            link.command = None
        return result, self._adopt(link, record, store_now)

    def _adopt(self, link: Link, record: Record, store_now: float) -> Change | None:
        """Make this copy the shared state the store just returned, and keep the shared
        change it shows, if this copy has not taken it up before, for the listeners."""
        now = self._clock()
        old = self._state
        if record.generation != link.generation and record.changed_at is not None:
            link.heard = Transition(
                record.previous,
                record.state,
                record.reason,
                record.generation,
                record.open_timeout if record.state is _OPEN else 0.0,
                record.changed_at,
            )
        if record.generation != link.generation or record.state is not old:
            # A new shared generation: calls admitted before it, here, are stale.
            self._generation += 1
            if self._window is not None:
                self._window.clear()
        link.generation = record.generation
        self._state = record.state
        self._failures = record.failures
        self._successes = record.successes
        self._probes = len(record.leases)
        self._reopens = record.reopens
        self._open_timeout = record.open_timeout
        self._opened_at = record.opened_at
        self._last_failure_time = record.last_failure_time
        self._forced = record.forced
        # The store's clock and this one both count seconds: carry the time left across.
        self._open_until = math.inf if record.forced else now + record.open_until - store_now
        link.next_sync = now + link.sharing.sync_interval
        link.retry_at = -math.inf
        self._arm_fast_paths()
        return None if record.state is old else (old, record.state, record.reason)

    def _store_failed(self, link: Link, error: Exception) -> None:
        """Decide alone, on this copy, until the sync interval has passed."""
        logger.warning(
            "circuit breaker %r: the shared state store failed (%s: %s); deciding alone",
            self.name,
            type(error).__name__,
            error,
        )
        link.retry_at = link.next_sync = self._clock() + link.sharing.sync_interval
        self._arm_fast_paths()

    # -- manual control ------------------------------------------------------------------

    def force_open(self) -> None:
        """Open the breaker and keep it open until reset(). With a store, here at once and
        everywhere once written: by refresh() or this breaker's next admission."""
        now = self._refresh()
        old = self._state
        # The timeout it reports; it lasts until reset().
        self._open(now, self.timeout, "forced_open")
        self._forced = True
        self._open_until = math.inf
        if self._link is not None:
            self._link.command = _FORCE_OPEN
        self._arm_fast_paths()
        if old is not State.OPEN:
            self._emit_transition((old, State.OPEN, "forced_open"))

    def reset(self) -> None:
        """Back to CLOSED with every counter cleared. With a store, as for force_open()."""
        self._refresh()
        old = self._state
        self._set_state(State.CLOSED, "reset")
        self._last_failure_time = None
        if self._link is not None:
            self._link.command = _RESET
        if old is not State.CLOSED:
            self._emit_transition((old, State.CLOSED, "reset"))

    # -- bookkeeping ---------------------------------------------------------------------

    def _refresh(self) -> float:
        """Commit a due OPEN -> HALF_OPEN transition and announce it. Returns the time now."""
        now = self._clock()
        transition = self._expire(now)
        if transition is not None:
            self._emit_transition(transition)
        return now

    def _expire(self, now: float) -> Change | None:
        if self._state is State.OPEN and now >= self._open_until:
            return self._set_state(State.HALF_OPEN, "timeout_elapsed")
        return None

    def _open(self, now: float, timeout: float, reason: str) -> Change:
        transition = self._set_state(State.OPEN, reason)
        self._open_timeout = timeout
        self._open_until = now + timeout
        self._arm_fast_paths()
        return transition

    def _arm_fast_paths(self) -> None:
        """Set what the lock-free paths of call() and check() act on. Without a store, the
        state itself. With one, never CLOSED (each call asks the store first), and OPEN
        rejects alone only until the next sync is due, so a reset elsewhere is seen here."""
        link = self._link
        if link is None:
            self._fast_state, self._fast_until = self._state, self._open_until
        elif self._state is _OPEN:
            self._fast_state = _OPEN
            self._fast_until = min(self._open_until, link.next_sync)
        else:
            self._fast_state = None

    def _reopen_timeout(self) -> float:
        """The open timeout of the k-th consecutive re-open, k = self._reopens >= 1."""
        if self._backoff is None:
            return self.timeout
        return reopen_timeout(self._backoff, self.timeout, self._reopens, self._random)

    def _set_state(self, new: State, reason: str) -> Change:
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
        self._arm_fast_paths()
        return old, new, reason

    def _emit_transition(self, change: Change | None) -> None:
        """Announce a change of this copy (state_changed) and the Transition behind it: without
        a store, this change; with one, the shared change this copy last took up, if any."""
        if change is not None:
            old, new, reason = change
            if new is State.OPEN:
                logger.warning("circuit breaker %r opened (was %s)", self.name, old.value)
            else:
                logger.info(
                    "circuit breaker %r is now %s (was %s)", self.name, new.value, old.value
                )
            self._emit(lambda listener: listener.state_changed(self, old, new))
        link = self._link
        if link is None:
            if change is not None:
                retry_after = self._open_timeout if new is State.OPEN else 0.0
                heard = Transition(old, new, reason, self._generation, retry_after, time.time())
                self._emit(lambda listener: listener.transitioned(self, heard))
        elif link.heard is not None:
            shared, link.heard = link.heard, None
            self._emit(lambda listener: listener.transitioned(self, shared))

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

    __slots__ = ("_breaker", "_claim", "_generation", "_probe", "_started")

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    async def __aenter__(self) -> None:
        breaker = self._breaker
        self._generation, self._probe, self._claim = await breaker._admit()
        self._started = breaker._clock() if breaker._settles_every_call else 0.0

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._claim is None:
            self._breaker._settle(self._generation, self._probe, exc, self._started)
        else:
            # Awaits the store. A cancellation during that await leaves a probe's lease to
            # run out (Sharing.probe_lease) instead of freeing it.
            await self._breaker._settle_shared(
                self._generation, self._probe, self._claim, exc, self._started
            )
