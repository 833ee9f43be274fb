"""Everything the app's lifespan builds from the settings, one set per running app."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from pydantic import SecretStr

from app import alphavantage
from app.alphavantage import AlphaVantageClient
from app.breaker import Backoff, CircuitBreaker, FailureRate, Listener, Sharing
from app.cache import TTLCache
from app.consumers import ConsumerLimits, ConsumerRegistry
from app.errors import is_upstream_failure
from app.event_stream import CallCounts, EventHub
from app.exchanges import US
from app.freshness import MarketFreshness
from app.hits import HitTable
from app.limits import DAY, Bulkhead, UpstreamLimits
from app.market_hours import MarketHours
from app.metrics import Metrics
from app.passthrough import PASSTHROUGH, parse_ttls
from app.rendering import Renderer
from app.service import Key, Lane, StockService, Value
from app.settings import Settings
from app.shared_cache import SharedCache
from app.state import ObservedState
from app.transition_log import TransitionLog, TransitionRecorder
from app.watchlist import Watchlist

BREAKER_NAME = "alphavantage"  # the shared breaker; with BREAKER_SCOPE=function, a prefix
# What the service's lanes are keyed by: each built-in function, and the gateway's pass-through
# (one lane for every function passed through, whose names callers choose).
LANE_FUNCTIONS = (*alphavantage.FUNCTIONS, PASSTHROUGH)
# What upstream calls are labelled by in the metrics: the lanes' functions, and the bulk quotes,
# which go through GLOBAL_QUOTE's lane (they fetch the quotes its flights wait for).
UPSTREAM_FUNCTIONS = (*LANE_FUNCTIONS, alphavantage.BULK_QUOTES)


@dataclass(frozen=True, slots=True)
class Resources:
    """What the routes reach through `request.app.state.resources` (app/deps.py)."""

    settings: Settings
    http: httpx.AsyncClient
    state: ObservedState
    breakers: tuple[CircuitBreaker, ...]  # one, or one per upstream function (BREAKER_SCOPE)
    bulkheads: tuple[Bulkhead, ...]  # one per breaker
    limits: UpstreamLimits
    consumers: ConsumerRegistry
    consumer_limits: ConsumerLimits
    metrics: Metrics
    service: StockService
    renderer: Renderer
    transitions: TransitionLog  # GET /circuit-breaker/history
    recorder: TransitionRecorder  # writes the breakers' transitions to it
    events: EventHub  # GET /circuit-breaker/events
    hits: HitTable  # the hit fast path's answers (app/fast_path.py)
    watchlist: Watchlist | None  # None: no WATCHLIST; its rounds run in the app's lifespan


def upstream_connections(settings: Settings) -> int:
    """The httpx pool's size: every bulkhead slot of every lane can hold a connection."""
    lanes = len(LANE_FUNCTIONS) if settings.breaker_scope == "function" else 1
    return settings.upstream_max_concurrency * lanes


# Bumped when a shared document's shape changes: processes of two versions sharing a store
# (a rolling deploy) then keep apart instead of misreading each other's documents.
STATE_VERSION = 1


def key_digest(api_key: SecretStr) -> str:
    """Names the key's shared state: the same for every process using the key (and this
    version's documents), different for another key, and no use to anyone who reads the
    store."""
    digest = hashlib.sha256(api_key.get_secret_value().encode()).hexdigest()[:16]
    return f"{digest}.v{STATE_VERSION}"


def build_resources(
    settings: Settings,
    http: httpx.AsyncClient,
    metrics: Metrics,
    state: ObservedState,
    cache_clock: Callable[[], float] = time.monotonic,
) -> Resources:
    if settings.breaker_scope == "function":
        names = {f: f"{BREAKER_NAME}_{f.lower()}" for f in LANE_FUNCTIONS}
    else:
        names = dict.fromkeys(LANE_FUNCTIONS, BREAKER_NAME)
    key = key_digest(settings.alphavantage_api_key)
    transitions = TransitionLog(state, f"transitions:{key}")
    written = asyncio.Event()  # the recorder wrote to the log: the stream reads it at once
    recorder = TransitionRecorder(transitions, on_written=written.set)
    counts = CallCounts()
    listeners = (metrics, recorder, counts)
    lanes_by_name = {
        name: build_lane(
            name, settings, metrics, listeners, breaker_sharing(settings, state, key, name)
        )
        for name in names.values()
    }
    lanes = {function: lanes_by_name[name] for function, name in names.items()}
    limits = UpstreamLimits(
        state,
        key=key,
        pacing=(
            (settings.upstream_rate_per_second, settings.upstream_burst)
            if settings.upstream_rate_per_second > 0
            else None
        ),
        quota=(settings.upstream_daily_quota, DAY) if settings.upstream_daily_quota else None,
        max_wait=settings.upstream_max_wait_seconds,
    )
    bulkheads = tuple(lane.bulkhead for lane in lanes_by_name.values())
    metrics.watch_limits(limits, bulkheads)
    client = AlphaVantageClient(
        http,
        api_key=settings.alphavantage_api_key,
        base_url=settings.alphavantage_base_url,
        timeout=settings.upstream_timeout_seconds,
        max_body_bytes=settings.upstream_max_body_bytes,
        max_concurrency=upstream_connections(settings),
    )
    cache: TTLCache[Key, Value] = TTLCache(
        ttl=settings.cache_ttl_seconds,
        stale=settings.cache_stale_seconds,
        max_entries=settings.cache_max_entries,
        clock=cache_clock,
    )
    # A holder that dies blocks the key no longer than its call could take: the waits for a
    # slot and a turn, the call, and the dozen store operations around it.
    call_lease = (
        settings.upstream_timeout_seconds
        + settings.upstream_max_wait_seconds
        + 12 * settings.state_timeout_seconds
    )
    shared = SharedCache(
        state,
        namespace=key,
        ttl=settings.cache_ttl_seconds,
        stale=settings.cache_stale_seconds,
        lease_seconds=call_lease,
    )
    consumer_limits = ConsumerLimits(state)
    hours = MarketHours()
    if settings.cache_freshness == "market":
        # Most symbols are American: their calendar is built in the background from now on.
        hours.prepare(US, time.time())
    service = StockService(
        client,
        lanes,
        limits,
        cache,
        shared,
        metrics,
        consumer_limits,
        passthrough_ttls=parse_ttls(settings.gateway_passthrough_ttls),
        bulk_quotes=settings.alphavantage_plan == "premium",
        freshness=freshness_policy(settings, hours),
    )
    breakers = tuple(lane.breaker for lane in lanes_by_name.values())
    watchlist = None
    if settings.watchlist:
        watchlist = Watchlist(
            settings.watchlist.split(","),
            service,
            limits,
            state,
            key=key,
            next_bar=MarketFreshness(
                hours, settle=settings.freshness_settle_seconds, plan=settings.alphavantage_plan
            ).next_bar,
            reserve=settings.watchlist_reserve,
            plan=settings.alphavantage_plan,
            lease_seconds=2 * call_lease,  # a symbol's refresh: its series and its quote
        )
    return Resources(
        settings=settings,
        http=http,
        state=state,
        breakers=breakers,
        bulkheads=bulkheads,
        limits=limits,
        consumers=ConsumerRegistry(state),
        consumer_limits=consumer_limits,
        metrics=metrics,
        service=service,
        renderer=Renderer(),
        transitions=transitions,
        recorder=recorder,
        events=EventHub(
            breakers,
            transitions,
            limits,
            counts,
            metrics,
            written,
            summary_seconds=settings.events_summary_seconds,
            heartbeat_seconds=settings.events_heartbeat_seconds,
        ),
        hits=HitTable(),
        watchlist=watchlist,
    )


def freshness_policy(settings: Settings, hours: MarketHours) -> MarketFreshness | None:
    """CACHE_FRESHNESS's policy; None for `fixed`, which leaves every TTL to the caches."""
    if settings.cache_freshness == "fixed":
        return None
    return MarketFreshness(
        hours, settle=settings.freshness_settle_seconds, plan=settings.alphavantage_plan
    )


def breaker_sharing(settings: Settings, state: ObservedState, key: str, name: str) -> Sharing:
    """One breaker state per breaker name and API key (its digest) for every process using
    them; two deployments with different keys sharing a store never mix."""
    return Sharing(
        state,
        f"breaker:{key}:{name}",
        # A probe's call: the upstream timeout, and the quota's and a rate-limit answer's
        # store operations, with a second's slack before its slot goes to another process.
        probe_lease=settings.upstream_timeout_seconds + 2 * settings.state_timeout_seconds + 1,
    )


def build_lane(
    name: str,
    settings: Settings,
    metrics: Metrics,
    listeners: Sequence[Listener],
    sharing: Sharing,
) -> Lane:
    breaker = CircuitBreaker(
        name,
        failure_threshold=settings.breaker_failure_threshold,
        success_threshold=settings.breaker_success_threshold,
        timeout=settings.breaker_timeout_seconds,
        half_open_max_calls=settings.breaker_half_open_max_calls,
        failure_rate=failure_rate_policy(settings),
        backoff=Backoff(
            multiplier=settings.breaker_backoff_multiplier,
            # Never shorter than the first opening: a backoff must not shorten anything.
            max_timeout=max(settings.breaker_backoff_max_seconds, settings.breaker_timeout_seconds),
            jitter=settings.breaker_backoff_jitter,
        ),
        is_failure=is_upstream_failure,
        listeners=listeners,
        shared=sharing,
    )
    metrics.watch(breaker)
    return Lane(breaker, Bulkhead(name, settings.upstream_max_concurrency))


def failure_rate_policy(settings: Settings) -> FailureRate | None:
    """The failure-rate mode's policy, or None in the consecutive-failures mode."""
    if settings.breaker_mode == "consecutive":
        return None
    count = settings.breaker_window == "count"
    return FailureRate(
        threshold=settings.breaker_failure_rate_threshold,
        minimum_calls=settings.breaker_minimum_calls,
        window_calls=settings.breaker_window_size if count else None,
        window_seconds=None if count else settings.breaker_window_size,
        slow_call_seconds=settings.breaker_slow_call_seconds or None,
        slow_call_threshold=settings.breaker_slow_call_rate_threshold,
    )
