"""Stock data with caching, coalescing and graceful degradation around the upstream limits
and the breaker: a miss passes quota, bulkhead and pacing (app/limits.py), then the breaker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.alphavantage import DAILY, QUOTE, AlphaVantageClient
from app.breaker import CircuitBreaker, CircuitOpenError
from app.cache import SingleFlight, TTLCache
from app.errors import RateLimited, Throttled, UpstreamError, UpstreamFailure
from app.limits import Bulkhead, UpstreamLimits
from app.models import DailySeries, Quote, Source

logger = logging.getLogger(__name__)

T = TypeVar("T", DailySeries, Quote)
Key = tuple[str, str]  # (function, symbol)


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
        cache: TTLCache[Key, DailySeries | Quote],
        events: ServiceEvents,
    ) -> None:
        self._client = client
        self._lanes = lanes
        self._limits = limits
        self._cache = cache
        self._events = events
        self._flights: SingleFlight[Key, DailySeries | Quote] = SingleFlight()

    async def daily(self, symbol: str) -> tuple[DailySeries, Source]:
        return await self._get(DAILY, symbol, self._client.daily, DailySeries)

    async def quote(self, symbol: str) -> tuple[Quote, Source]:
        return await self._get(QUOTE, symbol, self._client.quote, Quote)

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
            value = await self._flights.run(key, lambda: self._fetch(key, lane, fetch))
        except (UpstreamFailure, RateLimited, CircuitOpenError, Throttled) as exc:
            if hit is None:
                raise
            self._events.count_cache(function, "stale")
            logger.info(
                "serving a stale copy",
                extra={"function": function, "symbol": symbol, "cause": type(exc).__name__},
            )
            return self._of_kind(kind, hit.value), "stale"
        return self._of_kind(kind, value), "upstream"

    async def _fetch(self, key: Key, lane: Lane, fetch: Callable[[str], Awaitable[T]]) -> T:
        try:
            async with self._limits.admit(lane.bulkhead):
                value = await lane.breaker.call(self._call_upstream, key, fetch)
        except Throttled as exc:
            self._events.count_throttled(exc.reason)
            detail = f"Alpha Vantage call held back: {exc.detail}"
            raise Throttled(detail, exc.reason, exc.retry_after) from None
        self._cache.put(key, value)
        return value

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
    def _of_kind(kind: type[T], value: DailySeries | Quote) -> T:
        # One cache holds both kinds; the function in the key decides which one a value is.
        if not isinstance(value, kind):
            raise TypeError(f"cached {type(value).__name__} where {kind.__name__} belongs")
        return value
