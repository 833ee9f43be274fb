"""Prometheus metrics, one registry per app so that tests and apps never share series.

Over 300 lines: it is the one adapter of every events protocol the core reports through
(service, breakers, limits, store, event stream), and each would need the registry and the
multiprocess handling again if split out.

Under `python -m app --workers N` (PROMETHEUS_MULTIPROC_DIR set before prometheus_client is
imported) every worker writes its counters, histograms and the in-flight gauge to files in
that directory, and a scrape answered by any worker sums the group's files; the gauges
computed at scrape time come from the answering worker (see Metrics.exposition).

No label ever carries a symbol or a raw path: routes are templates, upstream calls are named by
function, and every known label value exists from startup. The `consumer` label takes only
configured consumer names (app/consumers.py), plus "anonymous", so its values stay bounded;
a consumer's series appear with its first call or throttle.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.breaker import CircuitBreaker, CircuitOpenError, Listener, State
from app.consumers import ANONYMOUS
from app.errors import OUTCOMES, THROTTLE_REASONS
from app.limits import Bulkhead, UpstreamLimits
from app.state import ObservedState

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_DIR", "Metrics"]

# prometheus_client's switch to multiprocess mode, read when it is first imported.
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

STATE_VALUES = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}
CACHE_RESULTS = ("hit", "miss", "stale")
UNMATCHED_ROUTE = "unmatched"

UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A SQLite transaction takes about a millisecond, a Redis round trip less on a LAN;
# STATE_TIMEOUT_SECONDS (0.5) bounds the top.
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _BreakerStates:
    """Computes the state gauge at scrape time, so it reads HALF_OPEN after the open timeout
    even when no call has come since."""

    def __init__(self) -> None:
        self.breakers: list[CircuitBreaker] = []

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(
            "stock_api_circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
            labels=["breaker"],
        )
        for breaker in self.breakers:
            gauge.add_metric([breaker.name], STATE_VALUES[breaker.state])
        yield gauge


class _StoreUp:
    """Whether the shared state store answered its last operation, at scrape time."""

    def __init__(self) -> None:
        self.store: ObservedState | None = None

    def collect(self) -> Iterable[Metric]:
        if self.store is not None:
            yield GaugeMetricFamily(
                "stock_api_state_store_up",
                "1 if the shared state store (STATE_URL) answered its last operation, else 0.",
                value=1 if self.store.up else 0,
            )


class _UpstreamLimits:
    """Computes the quota and bulkhead-size gauges at scrape time, so the quota reads right as
    calls leave its window even when nothing else happens."""

    def __init__(self) -> None:
        self.limits: UpstreamLimits | None = None
        self.bulkheads: list[Bulkhead] = []

    def collect(self) -> Iterable[Metric]:
        # As the last quota operation or /metrics' own refresh left it (the store is async).
        status = self.limits.last_quota if self.limits is not None else None
        if status is not None:  # no series at all when the quota is off
            yield GaugeMetricFamily(
                "stock_api_upstream_quota_limit",
                "Upstream calls allowed in a rolling day (UPSTREAM_DAILY_QUOTA).",
                value=status.limit,
            )
            yield GaugeMetricFamily(
                "stock_api_upstream_quota_remaining",
                "Upstream calls left in the rolling day; 0 while Alpha Vantage says it is spent.",
                value=status.remaining,
            )
        # The size of each worker's bulkhead: a setting, the same in every worker.
        capacity = GaugeMetricFamily(
            "stock_api_upstream_max_concurrency",
            "Bulkhead size: upstream calls allowed in flight (UPSTREAM_MAX_CONCURRENCY).",
            labels=["bulkhead"],
        )
        for bulkhead in self.bulkheads:
            capacity.add_metric([bulkhead.name], bulkhead.max_concurrency)
        yield capacity


class Metrics(Listener):
    """The service's metrics; also the breakers' listener (call outcomes are counted by
    function in observe_upstream, which sees what the breaker does not)."""

    def __init__(self, functions: Sequence[str], routes: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._states = _BreakerStates()
        self.registry.register(self._states)
        self._limits = _UpstreamLimits()
        self.registry.register(self._limits)
        self.state_changes = Counter(
            "stock_api_circuit_breaker_state_changes_total",
            "Circuit breaker state transitions.",
            ["breaker", "from_state", "to_state"],
            registry=self.registry,
        )
        self.rejected_calls = Counter(
            "stock_api_circuit_breaker_rejected_calls_total",
            "Calls the circuit breaker rejected without calling upstream.",
            ["breaker"],
            registry=self.registry,
        )
        self.upstream_calls = Counter(
            "stock_api_upstream_calls_total",
            "Calls to Alpha Vantage by function and outcome.",
            ["function", "outcome"],
            registry=self.registry,
        )
        self.upstream_duration = Histogram(
            "stock_api_upstream_request_duration_seconds",
            "Time taken by calls to Alpha Vantage.",
            ["function"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self.throttled_calls = Counter(
            "stock_api_upstream_throttled_calls_total",
            "Upstream calls the service held back itself, by reason (errors.THROTTLE_REASONS).",
            ["reason"],
            registry=self.registry,
        )
        self.consumer_calls = Counter(
            "stock_api_consumer_upstream_calls_total",
            "Upstream calls charged to each consumer (anonymous: while none is configured).",
            ["consumer"],
            registry=self.registry,
        )
        self.consumer_throttled = Counter(
            "stock_api_consumer_throttled_requests_total",
            "Requests held to a consumer's own limits: consumer_budget (a miss past its calls "
            "a day), consumer_rate (over its requests a second).",
            ["consumer", "reason"],
            registry=self.registry,
        )
        # Set as slots are taken and given back; in a group of workers, the live workers' sum
        # (a worker that exits takes its share with it: see app.workers).
        self.calls_in_flight = Gauge(
            "stock_api_upstream_calls_in_flight",
            "Upstream calls holding a bulkhead slot (waiting for a paced turn or running).",
            ["bulkhead"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.cache_requests = Counter(
            "stock_api_cache_requests_total",
            "Cache lookups: hit (fresh), miss (went upstream), stale (served expired).",
            ["function", "result"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "stock_api_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "stock_api_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self._store = _StoreUp()
        self.registry.register(self._store)
        self.store_duration = Histogram(
            "stock_api_state_store_operation_duration_seconds",
            "Time taken by operations of the shared state store (STATE_URL).",
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "stock_api_state_store_errors_total",
            "Operations of the shared state store that failed or timed out.",
            registry=self.registry,
        )
        self.stream_subscribers = Gauge(
            "stock_api_event_stream_subscribers",
            "Clients subscribed to GET /circuit-breaker/events.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_dropped = Counter(
            "stock_api_event_stream_dropped_subscribers_total",
            "Event stream subscribers dropped for falling too far behind.",
            registry=self.registry,
        )
        # Pre-bound children: .labels() costs a lock and a dict lookup on every request.
        self._http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._rejected_children: dict[str, Counter] = {}

        self._upstream_calls = {
            (function, outcome): self.upstream_calls.labels(function, outcome)
            for function in functions
            for outcome in OUTCOMES
        }
        self._upstream_duration = {f: self.upstream_duration.labels(f) for f in functions}
        self._throttled = {
            reason: self.throttled_calls.labels(reason) for reason in THROTTLE_REASONS
        }
        self.consumer_calls.labels(ANONYMOUS)
        self._cache_requests = {
            (function, result): self.cache_requests.labels(function, result)
            for function in functions
            for result in CACHE_RESULTS
        }
        for route in routes:
            self.http_duration.labels(route, "GET")
        self._scrape_registry = self._group_registry() or self.registry

    def _group_registry(self) -> CollectorRegistry | None:
        """In multiprocess mode, what a scrape reads: every worker's files, summed, and this
        worker's scrape-time gauges (the breaker states and the quota come from the shared
        store, so one worker's view is the group's; so does the store's own state, mostly).
        None in a single process."""
        directory = os.environ.get(MULTIPROC_DIR)
        if directory is None:
            return None
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        registry.register(self._states)
        registry.register(self._limits)
        registry.register(self._store)  # whether this worker reaches the store
        return registry

    def watch(self, breaker: CircuitBreaker) -> None:
        """Export `breaker`'s state and initialise its series. A breaker of the same name
        (from an earlier run of the same app's lifespan) is replaced, not duplicated."""
        others = [b for b in self._states.breakers if b.name != breaker.name]
        self._states.breakers = [*others, breaker]
        self._rejected_children[breaker.name] = self.rejected_calls.labels(breaker.name)
        for old in State:
            for new in State:
                if old is not new:
                    self.state_changes.labels(breaker.name, old.value, new.value)

    def watch_limits(self, limits: UpstreamLimits, bulkheads: Sequence[Bulkhead]) -> None:
        """Export the quota and bulkhead gauges (replacing those of an earlier lifespan)."""
        self._limits.limits = limits
        self._limits.bulkheads = list(bulkheads)
        for bulkhead in bulkheads:
            in_flight = self.calls_in_flight.labels(bulkhead.name)
            in_flight.set(bulkhead.in_flight)
            bulkhead.on_in_flight = in_flight.set

    def exposition(self) -> bytes:
        return generate_latest(self._scrape_registry)

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._http_children.get((route, method, status))
        if children is None:
            children = (
                self.http_requests.labels(route, method, str(status)),
                self.http_duration.labels(route, method),
            )
            self._http_children[(route, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_upstream(self, function: str, outcome: str, seconds: float) -> None:
        self._upstream_calls[function, outcome].inc()
        self._upstream_duration[function].observe(seconds)

    def count_throttled(self, reason: str) -> None:
        self._throttled[reason].inc()

    def count_cache(self, function: str, result: str) -> None:
        self._cache_requests[function, result].inc()

    def count_consumer_call(self, consumer: str) -> None:
        self.consumer_calls.labels(consumer).inc()

    def count_consumer_throttled(self, consumer: str, reason: str) -> None:
        self.consumer_throttled.labels(consumer, reason).inc()

    def cache_lookups(self) -> tuple[float, float]:
        """Fresh hits and all lookups of the cache in this process, since it started."""
        hits = lookups = 0.0
        for family in self.cache_requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    lookups += sample.value
                    hits += sample.value if sample.labels["result"] == "hit" else 0.0
        return hits, lookups

    # -- StreamMetrics -------------------------------------------------------------------

    def subscribers_changed(self, count: int) -> None:
        self.stream_subscribers.set(count)

    def subscriber_dropped(self) -> None:
        self.stream_dropped.inc()

    # -- StoreEvents ---------------------------------------------------------------------

    def store_operation(self, seconds: float, ok: bool) -> None:
        self.store_duration.observe(seconds)
        if not ok:
            self.store_errors.inc()

    def watch_store(self, store: ObservedState) -> None:
        """Export whether `store` answered its last operation (replacing an earlier one)."""
        self._store.store = store

    # -- Listener ------------------------------------------------------------------------

    def state_changed(self, breaker: CircuitBreaker, old: State, new: State) -> None:
        self.state_changes.labels(breaker.name, old.value, new.value).inc()

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        self._rejected_children[breaker.name].inc()
