"""State shared by every process that names one breaker: the store it lives in (a protocol the
caller implements), the Sharing option that plugs it in, and the shared document's rules.

The document is JSON, changed only inside the store's atomic `update`, on the store's clock:
`Record` reads it, applies one operation (admit, settle, force open, reset) and writes it
back. It runs wherever the store calls `change` (another thread, for some stores), so it
touches nothing but the document and the breaker's immutable settings.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from app.breaker._backoff import reopen_timeout
from app.breaker._types import Outcome, State, Transition

if TYPE_CHECKING:
    from app.breaker._breaker import CircuitBreaker

# What a store keeps under a key: a JSON document, or None for nothing yet.
Document = dict[str, Any] | None
R = TypeVar("R")


class SharedStore(Protocol):
    """Where breakers in many processes keep one state (after sony/gobreaker v2's
    SharedDataStore, reduced to one atomic operation)."""

    async def update(self, key: str, change: Callable[[Document, float], tuple[Document, R]]) -> R:
        """Atomically across processes: call `change(value, now)` with the document at `key`
        (None if there is none) and the store's clock in seconds, store the document it
        returns, and return its result. If `change` raises, nothing is stored.

        Any Exception it raises (a timeout, a lost connection) means the store is unavailable:
        the breaker then decides on its own, and asks the store again `sync_interval` later.
        It must return, or raise, within a bounded time."""
        ...


@dataclass(frozen=True, slots=True)
class Sharing:
    """Keep the breaker's state in `store` under `key`, shared with every breaker, in any
    process, that names the same store and key."""

    store: SharedStore
    key: str
    # The longest an OPEN (or a full HALF_OPEN) rejects on what it last heard from the store,
    # and how long it decides alone after the store failed to answer.
    sync_interval: float = 1.0
    # How long a probe holds its HALF_OPEN slot: a holder that dies frees it this late. Make
    # it longer than the protected call can take.
    probe_lease: float = 30.0

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("key must not be empty")
        if not (math.isfinite(self.sync_interval) and self.sync_interval >= 0):
            raise ValueError(
                f"sync_interval must be a finite number of seconds >= 0, got {self.sync_interval}"
            )
        if not (math.isfinite(self.probe_lease) and self.probe_lease > 0):
            raise ValueError(
                f"probe_lease must be a finite number of seconds > 0, got {self.probe_lease}"
            )


@dataclass(slots=True)
class Link:
    """What a breaker keeps of its exchanges with the store. One attribute of the breaker's,
    not six: past 30 attributes CPython 3.11 stops sharing an instance dict's keys, and every
    attribute read on the fast paths gets slower."""

    sharing: Sharing
    generation: int = -1  # the store's generation the breaker's copy last took
    next_sync: float = -math.inf  # an OPEN copy rejects on its own until then, at the latest
    retry_at: float = -math.inf  # the store failed: the breaker decides alone until then
    exchanges: int = 0  # begun so far
    command: str | None = None  # a force_open() or reset() still to be written
    heard: Transition | None = None  # a shared change taken up, not yet announced


class Claim(NamedTuple):
    """What the store admitted a call under: the document's generation, and the probe's
    lease (None for a CLOSED call)."""

    generation: int
    lease: str | None


@dataclass(slots=True)
class Record:
    """One breaker's shared document as an object. Times are on the store's clock."""

    state: State
    generation: int
    failures: int  # consecutive counted failures (kept while OPEN, for display)
    successes: int  # consecutive successes in HALF_OPEN
    reopens: int  # consecutive re-opens from HALF_OPEN since the last close
    open_timeout: float  # of the current or latest opening
    opened_at: float | None
    open_until: float  # meaningless while forced: only reset() ends a forced opening
    forced: bool
    last_failure_time: float | None
    leases: dict[str, float] = field(default_factory=dict)  # probe lease -> its expiry
    # The latest change of state: from what, why and when (for the listeners' Transition).
    previous: State = State.CLOSED
    reason: str = ""
    changed_at: float | None = None

    @classmethod
    def load(cls, document: Document, timeout: float) -> Record:
        if document is None:
            return cls(State.CLOSED, 0, 0, 0, 0, timeout, None, 0.0, False, None)
        return cls(
            State(document["state"]),
            document["generation"],
            document["failures"],
            document["successes"],
            document["reopens"],
            document["open_timeout"],
            document["opened_at"],
            document["open_until"],
            document["forced"],
            document["last_failure_time"],
            dict(document["leases"]),
            # Absent from documents written before transitions carried a reason.
            State(document.get("previous", document["state"])),
            document.get("reason", ""),
            document.get("changed_at"),
        )

    def dump(self) -> Document:
        return {
            "state": self.state.value,
            "generation": self.generation,
            "failures": self.failures,
            "successes": self.successes,
            "reopens": self.reopens,
            "open_timeout": self.open_timeout,
            "opened_at": self.opened_at,
            "open_until": self.open_until,
            "forced": self.forced,
            "last_failure_time": self.last_failure_time,
            "leases": self.leases,
            "previous": self.previous.value,
            "reason": self.reason,
            "changed_at": self.changed_at,
        }

    # -- the operations, each one whole change -------------------------------------------

    def expire(self, now: float) -> None:
        """The lazy transitions: OPEN past its timeout is HALF_OPEN; a probe lease past its
        expiry is free again."""
        if self.state is State.OPEN and not self.forced and now >= self.open_until:
            self._move(State.HALF_OPEN, now, "timeout_elapsed")
        elif self.state is State.HALF_OPEN:
            self.leases = {lease: end for lease, end in self.leases.items() if end > now}

    def admit(self, now: float, breaker: CircuitBreaker, probe_lease: float) -> Claim | None:
        """Admit a call (CLOSED), or a probe on a lease (HALF_OPEN with room), or None."""
        if self.state is State.CLOSED:
            return Claim(self.generation, None)
        if self.state is State.HALF_OPEN and len(self.leases) < breaker.half_open_max_calls:
            lease = uuid.uuid4().hex
            self.leases[lease] = now + probe_lease
            return Claim(self.generation, lease)
        return None

    def settle(
        self, now: float, breaker: CircuitBreaker, claim: Claim, outcome: Outcome, trip: bool
    ) -> None:
        """Record how a call admitted under `claim` ended. `trip`: in failure-rate mode, the
        settling process's window says to open. A result from an older generation, or from a
        probe whose lease has run out, is stale and changes nothing."""
        if claim.generation != self.generation:
            return
        if claim.lease is not None and self.leases.pop(claim.lease, None) is None:
            return
        if outcome is Outcome.SUCCESS:
            if self.state is State.HALF_OPEN:
                self.successes += 1
                if self.successes >= breaker.success_threshold:
                    self._move(State.CLOSED, now, "probes_succeeded")
            else:
                self.failures = 0
        elif outcome is Outcome.FAILURE:
            self.last_failure_time = now
            if self.state is State.HALF_OPEN:
                self.failures += 1
                self.reopens += 1
                timeout = breaker.timeout
                if breaker.backoff is not None:
                    timeout = reopen_timeout(
                        breaker.backoff, timeout, self.reopens, breaker._random
                    )
                self.open(now, timeout, "probe_failed")
            elif breaker.failure_rate is None:
                self.failures += 1
                if self.failures >= breaker.failure_threshold:
                    self.open(now, breaker.timeout, "failure_threshold")
        if trip and self.state is State.CLOSED:
            self.open(now, breaker.timeout, "failure_rate")

    def open(self, now: float, timeout: float, reason: str) -> None:
        self._move(State.OPEN, now, reason)
        self.open_timeout = timeout
        self.open_until = now + timeout

    def force_open(self, now: float, timeout: float) -> None:
        self.open(now, timeout, "forced_open")
        self.forced = True

    def reset(self, now: float) -> None:
        self._move(State.CLOSED, now, "reset")
        self.last_failure_time = None

    def _move(self, state: State, now: float, reason: str) -> None:
        self.previous, self.reason, self.changed_at = self.state, reason, now
        self.state = state
        self.generation += 1
        self.successes = 0
        self.leases = {}
        if state is State.OPEN:
            self.opened_at = now
        elif state is State.CLOSED:
            self.failures = 0
            self.reopens = 0
            self.opened_at = None
            self.forced = False
        else:
            self.failures = 0
