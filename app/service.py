"""Stock data with caching, coalescing and graceful degradation around the upstream limits
and the breaker. A miss in this process's cache looks in the tier every process shares
(app/shared_cache.py), joins a flight under way in any process, or passes quota, bulkhead
and pacing (app/limits/), then the breaker.

A consumer (app/consumers.py) is charged for the upstream calls its misses cause, and only
those: hits, stale copies and joining a flight already under way cost it nothing. Its budget
is checked before the key's quota is, and a call is counted when it is made, as the key's is.

Over 300 lines on purpose: a miss is one flow (this process's cache, the shared tier, a
flight here or in another process, the consumer's charge, the stale fallbacks) whose steps
share the service's collaborators; split across modules, each would take them all again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.alphavantage import DAILY, QUOTE, SEARCH, AlphaVantageClient
from app.breaker import CircuitBreaker, CircuitOpenError
from app.cache import SingleFlight, TTLCache
from app.consumers import ANONYMOUS, Consumer, ConsumerLimits
from app.errors import ConsumerThrottled, RateLimited, Throttled, UpstreamError, UpstreamFailure
from app.freshness import Freshness
from app.limits import Bulkhead, UpstreamLimits
from app.models import DailySeries, Quote, RawAnswer, Source, SymbolMatches
from app.passthrough import PASSTHROUGH, canonical_query, function_of, upstream_params
from app.shared_cache import SharedCache, SharedHit

logger = logging.getLogger(__name__)

T = TypeVar("T", DailySeries, Quote, SymbolMatches, RawAnswer)
Value = DailySeries | Quote | SymbolMatches | RawAnswer
# (function, symbol), (SYMBOL_SEARCH, normalised keywords), or (PASSTHROUGH, canonical query)
Key = tuple[str, str]
# What a stale copy may stand in for: failures, throttles and rejections, not bad questions.
FAILURES = (UpstreamFailure, RateLimited, CircuitOpenError, Throttled)


class ServiceEvents(Protocol):
    """What the service reports as it answers; app.metrics.Metrics is the Prometheus one."""

    def count_cache(self, function: str, result: str) -> None:
        """A lookup's result: "hit" (fresh), "miss" (goes upstream) or "stale" (served)."""

    def count_throttled(self, reason: str) -> None:
        """A call held back, never sent: one of errors.THROTTLE_REASONS."""

    def observe_upstream(self, function: str, outcome: str, seconds: float) -> None:
        """A call made upstream, its outcome (errors.OUTCOMES) and how long it took."""

    def count_consumer_call(self, consumer: str) -> None:
        """An upstream call charged to `consumer` (a configured name, or "anonymous")."""

    def count_consumer_throttled(self, consumer: str, reason: str) -> None:
        """A consumer held to its limits: "consumer_budget" or "consumer_rate"."""


@dataclass(frozen=True, slots=True)
class Lane:
    """The breaker and bulkhead that an upstream function's calls go through. Functions share
    one lane unless BREAKER_SCOPE=function gives each its own, so that one failing or slow
    endpoint cannot block the other."""

    breaker: CircuitBreaker
    bulkhead: Bulkhead


class StockService:
    def __init__(
        self,
        client: AlphaVantageClient,
        lanes: Mapping[str, Lane],
        limits: UpstreamLimits,
        cache: TTLCache[Key, Value],
        shared: SharedCache,
        events: ServiceEvents,
        consumer_limits: ConsumerLimits,
        passthrough_ttls: Mapping[str, float] | None = None,
        freshness: Freshness | None = None,
    ) -> None:
        """`passthrough_ttls`: seconds a pass-through function's answers stay fresh, by
        function; `freshness` decides it for the others (app/freshness.py); None, or its
        None: the caches' own TTL."""
        self._client = client
        self._lanes = lanes
        self._limits = limits
        self._cache = cache
        self._shared = shared
        self._events = events
        self._consumer_limits = consumer_limits
        self._passthrough_ttls = dict(passthrough_ttls or {})
        self._freshness = freshness
        self._flights: SingleFlight[Key, tuple[Value, Source]] = SingleFlight()

    async def daily(
        self, symbol: str, consumer: Consumer | None = None
    ) -> tuple[DailySeries, Source]:
        """The daily series; a miss's upstream call is charged to `consumer` (None: nobody,
        while no consumer is configured)."""
        return await self._get(DAILY, symbol, self._client.daily, DailySeries, consumer)

    async def quote(self, symbol: str, consumer: Consumer | None = None) -> tuple[Quote, Source]:
        """The quote; charged as daily() is."""
        return await self._get(QUOTE, symbol, self._client.quote, Quote, consumer)

    async def search(
        self, keywords: str, consumer: Consumer | None = None
    ) -> tuple[SymbolMatches, Source]:
        """Listings matching `keywords`, which the caller normalises (normalise_keywords): one
        cache entry and one flight for every way of writing them. Charged as daily() is."""
        return await self._get(SEARCH, keywords, self._client.search, SymbolMatches, consumer)

    async def passthrough(
        self, params: Mapping[str, str], consumer: Consumer | None = None
    ) -> tuple[RawAnswer, Source]:
        """Alpha Vantage's answer to `params` (its `function` one the service has no model of),
        apikey aside: one cache entry and one flight for every order of the same parameters,
        fresh for the function's own TTL. Charged as daily() is."""
        query = upstream_params(params)
        canonical = canonical_query(query)
        return await self._get(
            PASSTHROUGH, canonical, lambda _: self._client.raw(query), RawAnswer, consumer
        )

    async def aclose(self) -> None:
        await self._flights.aclose()

    async def _get(
        self,
        function: str,
        symbol: str,
        fetch: Callable[[str], Awaitable[T]],
        kind: type[T],
        consumer: Consumer | None,
    ) -> tuple[T, Source]:
        key = (function, symbol)
        hit = self._cache.get(key)
        if hit is not None and hit.fresh:
            self._events.count_cache(function, "hit")
            return self._of_kind(kind, hit.value), "cache"
        self._events.count_cache(function, "miss")
        lane = self._lanes[function]
        try:
            lane.breaker.check()  # an open breaker answers before a flight is set up
            # Joining a flight is free; a consumer past its budget starts none (the check
            # comes before the key's quota is looked at, and before any other caller joins).
            if consumer is not None and key not in self._flights:
                try:
                    await self._consumer_limits.check(consumer)
                except ConsumerThrottled as exc:
                    self._count_held_back(exc, consumer)
                    value, source = await self._shared_copy_or_raise(key, kind, exc)
                    return self._of_kind(kind, value), source
            value, source = await self._flights.run(
                key, lambda: self._fetch(key, lane, fetch, kind, consumer)
            )
        except FAILURES as exc:
            if hit is not None:
                value, source = self._stale(key, hit.value, exc)
            elif isinstance(exc, ConsumerThrottled):
                raise  # wherever it came from, the shared tier was looked in on the way
            else:
                # No copy here, but another process may have one: an open breaker is
                # checked before the flight, which is where the shared tier is read.
                value, source = await self._shared_copy_or_raise(key, kind, exc)
        return self._of_kind(kind, value), source

    async def _shared_copy_or_raise(
        self, key: Key, kind: type[T], error: Exception
    ) -> tuple[Value, Source]:
        """What may still be had without a call: the shared tier's copy, fresh or stale;
        else `error`."""
        shared = await self._shared.get(":".join(key))
        if shared is not None and shared.fresh:
            value = kind.model_validate(shared.value)
            self._cache.put(key, value, age=shared.age, ttl=self._ttl(key, shared.age))
            return value, "cache"
        return self._stale_or_raise(key, kind, shared, error)

    async def _fetch(
        self,
        key: Key,
        lane: Lane,
        fetch: Callable[[str], Awaitable[T]],
        kind: type[T],
        consumer: Consumer | None,
    ) -> tuple[Value, Source]:
        """One process's flight for `key`: the shared tier's fresh copy if there is one, the
        result of another process's flight if one is under way, else a call of its own."""
        name = ":".join(key)
        deadline = time.monotonic() + self._limits.max_wait
        shared = await self._shared.get(name)
        while shared is None or not shared.fresh:
            if await self._shared.lease(name):
                return await self._fetch_holding_the_lease(
                    key, name, lane, fetch, kind, shared, consumer
                )
            landed = await self._shared.wait(name, deadline - time.monotonic())
            if landed is not None:
                shared = landed
            elif time.monotonic() >= deadline:
                self._events.count_throttled("flight")
                error = Throttled(
                    "Alpha Vantage call held back: another process's call for it has not "
                    "landed in time",
                    "flight",
                    1,
                )
                return self._stale_or_raise(key, kind, shared, error)
        value = kind.model_validate(shared.value)
        self._cache.put(key, value, age=shared.age, ttl=self._ttl(key, shared.age))
        return value, "cache"

    async def _fetch_holding_the_lease(
        self,
        key: Key,
        name: str,
        lane: Lane,
        fetch: Callable[[str], Awaitable[T]],
        kind: type[T],
        shared: SharedHit | None,
        consumer: Consumer | None,
    ) -> tuple[Value, Source]:
        landed = await self._shared.get(name)
        if landed is not None and landed.fresh:
            # Another process's flight landed between our look and our lease: use it.
            await self._shared.release(name)
            value = kind.model_validate(landed.value)
            self._cache.put(key, value, age=landed.age, ttl=self._ttl(key, landed.age))
            return value, "cache"
        try:
            value = await self._call(key, lane, fetch, consumer)
        except FAILURES as exc:
            await self._shared.release(name)
            return self._stale_or_raise(key, kind, shared, exc)
        except BaseException:
            await self._shared.release(name)
            raise
        ttl = self._ttl(key)
        self._cache.put(key, value, ttl=ttl)
        # Put before the lease goes: a waiter that sees no lease and no value fetches again.
        await self._shared.put(name, value.model_dump(mode="json"), ttl=ttl)
        await self._shared.release(name)
        return value, "upstream"

    async def _call(
        self,
        key: Key,
        lane: Lane,
        fetch: Callable[[str], Awaitable[T]],
        consumer: Consumer | None,
    ) -> T:
        try:
            async with self._limits.admit(lane.bulkhead):
                return await lane.breaker.call(self._call_upstream, key, fetch, consumer)
        except Throttled as exc:
            self._count_held_back(exc, consumer)
            detail = f"Alpha Vantage call held back: {exc.detail}"
            raise type(exc)(detail, exc.reason, exc.retry_after) from None

    def _ttl(self, key: Key, age: float = 0.0) -> float | None:
        """Seconds an entry for `key`, fetched `age` seconds ago, is fresh from its fetch: a
        pass-through function's own TTL, or the freshness policy's; None: the caches' own."""
        function, query = key
        if function == PASSTHROUGH:
            return self._passthrough_ttls.get(function_of(query))
        return None if self._freshness is None else self._freshness.fresh_for(function, query, age)

    def _count_held_back(self, exc: Throttled, consumer: Consumer | None) -> None:
        self._events.count_throttled(exc.reason)
        if isinstance(exc, ConsumerThrottled) and consumer is not None:
            self._events.count_consumer_throttled(consumer.name, exc.reason)

    def _stale_or_raise(
        self, key: Key, kind: type[T], shared: SharedHit | None, error: Exception
    ) -> tuple[Value, Source]:
        """The shared tier's expired copy instead of `error`, if it has one."""
        if shared is None:
            raise error
        return self._stale(key, kind.model_validate(shared.value), error)

    def _stale(self, key: Key, value: Value, cause: Exception) -> tuple[Value, Source]:
        function, symbol = key
        self._events.count_cache(function, "stale")
        logger.info(
            "serving a stale copy",
            extra={"function": function, "symbol": symbol, "cause": type(cause).__name__},
        )
        return value, "stale"

    async def _call_upstream(
        self, key: Key, fetch: Callable[[str], Awaitable[T]], consumer: Consumer | None
    ) -> T:
        function, symbol = key
        # Counted here, inside the breaker, so that a call the breaker refuses costs nothing;
        # the consumer first, and given back if the key's quota then refuses the call.
        if consumer is not None:
            await self._consumer_limits.charge(consumer)
        try:
            await self._limits.count_call()
        except Throttled:
            if consumer is not None:
                # A store that fails now costs the consumer one call, not the answer's cause.
                with contextlib.suppress(Throttled):
                    await self._consumer_limits.refund(consumer)
            raise
        self._events.count_consumer_call(ANONYMOUS if consumer is None else consumer.name)
        outcome = "error"
        started = time.perf_counter()
        try:
            value = await fetch(symbol)
        except UpstreamError as exc:
            outcome = exc.outcome
            if isinstance(exc, UpstreamFailure | RateLimited):
                logger.warning(
                    "upstream call failed: %s",
                    exc.detail,
                    extra={"function": function, "symbol": symbol, "outcome": outcome},
                )
            if isinstance(exc, RateLimited):
                # Retry-After says when this service will call again, which may be later
                # than the period named (a per-day answer blocks until the window frees up).
                # With the store down the pause cannot be kept: the answer's own period
                # stands, and no call is made meanwhile anyway (the ledger is unreachable).
                with contextlib.suppress(Throttled):
                    exc.retry_after = await self._limits.limit_reached(exc.period, exc.retry_after)
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        else:
            outcome = "success"
            return value
        finally:
            self._events.observe_upstream(function, outcome, time.perf_counter() - started)

    @staticmethod
    def _of_kind(kind: type[T], value: Value) -> T:
        # One cache holds both kinds; the function in the key decides which one a value is.
        if not isinstance(value, kind):
            raise TypeError(f"cached {type(value).__name__} where {kind.__name__} belongs")
        return value
