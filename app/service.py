"""Stock data with caching, coalescing and graceful degradation around the upstream limits
and the breaker. A miss in this process's cache looks in the tier every process shares
(app/shared_cache.py), joins a flight under way in any process, or passes quota, bulkhead
and pacing (app/limits/), then the breaker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.alphavantage import DAILY, QUOTE, SEARCH, AlphaVantageClient
from app.breaker import CircuitBreaker, CircuitOpenError
from app.cache import SingleFlight, TTLCache
from app.errors import RateLimited, Throttled, UpstreamError, UpstreamFailure
from app.limits import Bulkhead, UpstreamLimits
from app.models import DailySeries, Quote, Source, SymbolMatches
from app.shared_cache import SharedCache, SharedHit

logger = logging.getLogger(__name__)

T = TypeVar("T", DailySeries, Quote, SymbolMatches)
Value = DailySeries | Quote | SymbolMatches
Key = tuple[str, str]  # (function, symbol), or (SYMBOL_SEARCH, normalised keywords)
# What a stale copy may stand in for: failures, throttles and rejections, not bad questions.
FAILURES = (UpstreamFailure, RateLimited, CircuitOpenError, Throttled)


class ServiceEvents(Protocol):
    """What the service reports as it answers; app.metrics.Metrics is the Prometheus one."""

    def count_cache(self, function: str, result: str) -> None:
        """A lookup's result: "hit" (fresh), "miss" (goes upstream) or "stale" (served)."""

    def count_throttled(self, reason: str) -> None:
        """A call held back, never sent: "pacing", "quota" or "bulkhead"."""

    def observe_upstream(self, function: str, outcome: str, seconds: float) -> None:
        """A call made upstream, its outcome (errors.OUTCOMES) and how long it took."""


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
    ) -> None:
        self._client = client
        self._lanes = lanes
        self._limits = limits
        self._cache = cache
        self._shared = shared
        self._events = events
        self._flights: SingleFlight[Key, tuple[Value, Source]] = SingleFlight()

    async def daily(self, symbol: str) -> tuple[DailySeries, Source]:
        return await self._get(DAILY, symbol, self._client.daily, DailySeries)

    async def quote(self, symbol: str) -> tuple[Quote, Source]:
        return await self._get(QUOTE, symbol, self._client.quote, Quote)

    async def search(self, keywords: str) -> tuple[SymbolMatches, Source]:
        """Listings matching `keywords`, which the caller normalises (normalise_keywords): one
        cache entry and one flight for every way of writing them."""
        return await self._get(SEARCH, keywords, self._client.search, SymbolMatches)

    async def aclose(self) -> None:
        await self._flights.aclose()

    async def _get(
        self,
        function: str,
        symbol: str,
        fetch: Callable[[str], Awaitable[T]],
        kind: type[T],
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
            value, source = await self._flights.run(
                key, lambda: self._fetch(key, lane, fetch, kind)
            )
        except FAILURES as exc:
            if hit is None:
                raise
            value, source = self._stale(key, hit.value, exc)
        return self._of_kind(kind, value), source

    async def _fetch(
        self, key: Key, lane: Lane, fetch: Callable[[str], Awaitable[T]], kind: type[T]
    ) -> tuple[Value, Source]:
        """One process's flight for `key`: the shared tier's fresh copy if there is one, the
        result of another process's flight if one is under way, else a call of its own."""
        name = ":".join(key)
        deadline = time.monotonic() + self._limits.max_wait
        shared = await self._shared.get(name)
        while shared is None or not shared.fresh:
            if await self._shared.lease(name):
                return await self._fetch_holding_the_lease(key, name, lane, fetch, kind, shared)
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
        self._cache.put(key, value, age=shared.age)
        return value, "cache"

    async def _fetch_holding_the_lease(
        self,
        key: Key,
        name: str,
        lane: Lane,
        fetch: Callable[[str], Awaitable[T]],
        kind: type[T],
        shared: SharedHit | None,
    ) -> tuple[Value, Source]:
        try:
            value = await self._call(key, lane, fetch)
        except FAILURES as exc:
            await self._shared.release(name)
            return self._stale_or_raise(key, kind, shared, exc)
        except BaseException:
            await self._shared.release(name)
            raise
        self._cache.put(key, value)
        # Put before the lease goes: a waiter that sees no lease and no value fetches again.
        await self._shared.put(name, value.model_dump(mode="json"))
        await self._shared.release(name)
        return value, "upstream"

    async def _call(self, key: Key, lane: Lane, fetch: Callable[[str], Awaitable[T]]) -> T:
        try:
            async with self._limits.admit(lane.bulkhead):
                return await lane.breaker.call(self._call_upstream, key, fetch)
        except Throttled as exc:
            self._events.count_throttled(exc.reason)
            detail = f"Alpha Vantage call held back: {exc.detail}"
            raise Throttled(detail, exc.reason, exc.retry_after) from None

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

    async def _call_upstream(self, key: Key, fetch: Callable[[str], Awaitable[T]]) -> T:
        function, symbol = key
        # Counted here, inside the breaker, so that a call the breaker refuses costs nothing.
        await self._limits.count_call()
        outcome = "error"
        started = time.perf_counter()
        try:
            value = await fetch(symbol)
        except UpstreamError as exc:
            outcome = exc.outcome
            if isinstance(exc, RateLimited):
                # Retry-After says when this service will call again, which may be later
                # than the period named (a per-day answer blocks until the window frees up).
                exc.retry_after = await self._limits.limit_reached(exc.period, exc.retry_after)
            if isinstance(exc, UpstreamFailure | RateLimited):
                logger.warning(
                    "upstream call failed: %s",
                    exc.detail,
                    extra={"function": function, "symbol": symbol, "outcome": outcome},
                )
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
