"""What a caller sees of a breaker besides CircuitBreaker itself: its states, how a call
ended, the snapshot, a transition, the rejection, the listener protocol, and the default
`is_failure`."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from app.breaker._breaker import CircuitBreaker


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


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


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as the breaker decided it (with a store: as the store did, heard by
    every process that takes it up, so `generation` tells one change from another)."""

    old: State
    new: State
    # failure_threshold, failure_rate, probe_failed, timeout_elapsed, probes_succeeded,
    # forced_open, reset
    reason: str
    generation: int  # the generation the change started: the store's, when shared
    retry_after: float  # an opening's timeout, backoff included (forced: `timeout`); else 0
    at: float  # when, wall-clock seconds since the epoch (the store's clock, when shared)


class Listener(Protocol):
    """Receives the breaker's events. Subclass it and override what you need."""

    def state_changed(self, breaker: CircuitBreaker, old: State, new: State) -> None:
        return None

    def transitioned(self, breaker: CircuitBreaker, transition: Transition) -> None:
        """The change with its reason and generation. A shared breaker reports each change of
        the shared state here in every process that takes it up (once each), and no change
        this copy made alone while the store did not answer; `state_changed` hears those."""
        return None

    def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
        return None

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        return None


def count_every_exception(exc: Exception) -> bool:
    return True
