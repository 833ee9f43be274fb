"""An asyncio circuit breaker. Standard library only: take it out and reuse it.

CLOSED counts consecutive failures and opens at `failure_threshold`. OPEN rejects at once
until `timeout` has passed; then the breaker is HALF_OPEN, which admits at most
`half_open_max_calls` probes at a time and closes after `success_threshold` consecutive
successes, or re-opens on the first failure.

Three options, all off by default:
- `failure_rate=FailureRate(...)`: CLOSED judges a window of recent calls instead, the last N
  (a ring buffer) or those of the last T seconds (a ring of buckets of at most a second, as
  resilience4j does, so memory does not grow with the call rate; a call leaves the window
  between T - bucket and T seconds after it ended). Once the window holds `minimum_calls`, it
  opens when the share of failures, or of slow calls, reaches its threshold. The window
  starts empty at every state change.
- `backoff=Backoff(...)`: each consecutive re-open from HALF_OPEN multiplies the open timeout,
  with jitter and a cap, so a dependency that stays down is probed less and less often. The
  first opening from CLOSED always waits exactly `timeout`; closing starts the count again.
- `shared=Sharing(store, key)`: one state for every breaker, in any process, naming the same
  key of the same store (a `SharedStore`: one atomic read-change-write of a JSON document, on
  the store's clock; the caller supplies it, this package knows no database). The document
  holds the state, its generation, the consecutive failure and success counts, the opening
  (when, until when, forced, re-opens for the backoff) and the probes' leases; every
  transition is decided inside the store's change, on its clock. Failures from every process
  add up to one threshold; every upstream call, admitted in CLOSED, first asks the store, so a
  trip anywhere stops the next call everywhere; HALF_OPEN admits a probe only on a lease from
  the store, which expires after `probe_lease`, so `half_open_max_calls` holds for the whole
  group and a probe whose process died frees its slot. OPEN still rejects in memory, without
  a lock, but asks the store again every `sync_interval`, so a reset elsewhere reaches it;
  force_open() and reset() act here at once and everywhere when written, by `refresh()` or
  the next admission. A result the store admitted under an older generation changes nothing.
  In failure-rate mode each process judges its own window; a trip it decides, and the
  opens, probes, force-opens and resets, are shared. When the store raises (down or slow),
  the breaker decides alone on its last copy for `sync_interval`, then asks again: an outage
  of the store never reaches the caller.

Design, after sony/gobreaker:
- Transitions are lazy and computed from timestamps: no background tasks or timers.
- Every state change starts a new generation. A call remembers the generation that admitted
  it, and a result from an older generation changes nothing, so a slow call started before a
  trip cannot close the breaker later.
- Bookkeeping never awaits. On an event loop, code without an await cannot be interleaved,
  so a check and the transition it decides are one atomic step, and a cancellation can never
  land between taking a probe slot and giving it back. (With a store, taking and returning a
  probe's lease await it: a cancellation there leaves the lease to expire.)
- The slow-path admission (OPEN past its timeout, HALF_OPEN probe slots) runs under an
  `asyncio.Lock` that is never held across the protected call. Without a store nothing under
  it awaits; with one, it keeps one caller per process asking the store at a time, and a
  caller that waited while another asked takes that answer (see CircuitBreaker.__init__).
  The hot paths (a CLOSED call without a store, an OPEN rejection) only read, and take no
  lock.
- Listeners hear of transitions (with a reason and the generation they started), call
  outcomes and rejections after the state is committed; one that raises is logged and ignored.

Modules, each private to this package, which re-exports the public names (`__all__`; import
them from `app.breaker`, never from the modules):
- `_breaker.py`: CircuitBreaker, the state machine, and Guard, its context manager.
- `_types.py`: State, Outcome, Snapshot, Transition, CircuitOpenError, the Listener protocol,
  and count_every_exception (the default `is_failure`).
- `_window.py`: FailureRate and the count and time windows it sets up.
- `_backoff.py`: Backoff.
- `_shared.py`: Sharing, the SharedStore protocol, and the shared document's rules.
"""

from app.breaker._backoff import Backoff
from app.breaker._breaker import CircuitBreaker, Guard
from app.breaker._shared import SharedStore, Sharing
from app.breaker._types import (
    CircuitOpenError,
    Listener,
    Outcome,
    Snapshot,
    State,
    Transition,
    count_every_exception,
)
from app.breaker._window import FailureRate

__all__ = [
    "Backoff",
    "CircuitBreaker",
    "CircuitOpenError",
    "FailureRate",
    "Guard",
    "Listener",
    "Outcome",
    "SharedStore",
    "Sharing",
    "Snapshot",
    "State",
    "Transition",
    "count_every_exception",
]
