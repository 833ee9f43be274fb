"""Stock data with caching, coalescing and graceful degradation around the upstream limits
and the breaker. A miss in this process's cache looks in the tier every process shares
(app/shared_cache.py), joins a flight under way in any process, or passes quota, bulkhead
and pacing (app/limits/), then the breaker.

A consumer (app/consumers.py) is charged for the upstream calls its misses cause, and only
those: hits, stale copies and joining a flight already under way cost it nothing. Its budget
is checked before the key's quota is, and a call is counted when it is made, as the key's is.

quotes() answers many symbols at once; with a premium key the misses among them share one
REALTIME_BULK_QUOTES call, each symbol's flight otherwise the one a single quote's would be.

Over 300 lines on purpose: a miss is one flow (this process's cache, the shared tier, a
flight here or in another process, the consumer's charge, the stale fallbacks) whose steps
share the service's collaborators, bulk quotes' flights included; split across modules, each
would take them all again."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar, cast

from app.alphavantage import (
    BULK_MAX_SYMBOLS,
    BULK_QUOTES,
    DAILY,
    QUOTE,
    SEARCH,
    AlphaVantageClient,
)
from app.batch import Batch
from app.breaker import CircuitBreaker, CircuitOpenError
from app.cache import SingleFlight, TTLCache
from app.consumers import ANONYMOUS, Consumer, ConsumerLimits
from app.errors import (
    ConsumerThrottled,
    RateLimited,
    Throttled,
    UnknownSymbol,
    UpstreamError,
    UpstreamFailure,
)
from app.exchanges import US, exchange_of
from app.freshness import Freshness
from app.limits import Bulkhead, UpstreamLimits
from app.models import DailySeries, Quote, RawAnswer, Source, SymbolMatches
from app.passthrough import PASSTHROUGH, canonical_query, function_of, upstream_params
from app.shared_cache import SharedCache, SharedHit

logger = logging.getLogger(__name__)

T = TypeVar("T", DailySeries, Quote, SymbolMatches, RawAnswer)
R = TypeVar("R")  # what an upstream call returns
Value = DailySeries | Quote | SymbolMatches | RawAnswer
V_co = TypeVar("V_co", covariant=True)
# (function, symbol), (SYMBOL_SEARCH, normalised keywords), or (PASSTHROUGH, canonical query)
Key = tuple[str, str]
# What a stale copy may stand in for: failures, throttles and rejections, not bad questions.
FAILURES = (UpstreamFailure, RateLimited, CircuitOpenError, Throttled)
# Listings change seldom: a search stays fresh a day, whatever CACHE_TTL_SECONDS says.
SEARCH_TTL = 86400.0


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
class Served(Generic[V_co]):
    """An answer and what HTTP caching needs to know of it (app/http_caching.py)."""

    value: V_co
    source: Source
    age: float  # seconds since it was fetched upstream, by this process's or the store's clock
    ttl: float  # seconds it is fresh for from that fetch: fresh for ttl - age more (< 0: stale)
    # Why a stale copy stands in for an upstream answer: the breaker ("breaker_open"), the
    # reason the call was held back (errors.THROTTLE_REASONS), or the failure's outcome.
    stale_because: str | None = None


# A symbol's part of quotes(): its quote as served, or why there is none.
QuoteOutcome = Served[Quote] | UpstreamError | CircuitOpenError


def stale_reason(cause: Exception) -> str:
    """Served.stale_because for a stale copy served instead of `cause`."""
    if isinstance(cause, CircuitOpenError):
        return "breaker_open"
    if isinstance(cause, Throttled):
        return cause.reason
    return cause.outcome if isinstance(cause, UpstreamError) else "error"


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
        bulk_quotes: bool = False,
        freshness: Freshness | None = None,
    ) -> None:
        """`passthrough_ttls`: seconds a pass-through function's answers stay fresh, by
        function; `freshness` decides it for the others (app/freshness.py); None, or its
        None: the caches' own TTL. `bulk_quotes`: quotes() fetches its misses in one
        REALTIME_BULK_QUOTES call (a premium key) instead of one call each."""
        self._client = client
        self._lanes = lanes
        self._limits = limits
        self._cache = cache
        self._shared = shared
        self._events = events
        self._consumer_limits = consumer_limits
        self._passthrough_ttls = dict(passthrough_ttls or {})
        self._bulk_quotes = bulk_quotes
        self._freshness = freshness
        self._flights: SingleFlight[Key, Served[Value]] = SingleFlight()

    async def daily(self, symbol: str, consumer: Consumer | None = None) -> Served[DailySeries]:
        """The daily series; a miss's upstream call is charged to `consumer` (None: nobody,
        while no consumer is configured)."""
        return await self._get(DAILY, symbol, self._client.daily, DailySeries, consumer)

    async def quote(self, symbol: str, consumer: Consumer | None = None) -> Served[Quote]:
        """The quote; charged as daily() is."""
        return await self._get(QUOTE, symbol, self._client.quote, Quote, consumer)

    async def quotes(
        self, symbols: Sequence[str], consumer: Consumer | None = None
    ) -> dict[str, QuoteOutcome]:
        """Each symbol's quote() (distinct, upper-case symbols), or the error it would raise.
        Concurrent, at most a bulkhead's worth at a time (more would only queue there). With
        bulk quotes, the misses that would each start a call share one REALTIME_BULK_QUOTES
        call instead, charged and counted as one call through GLOBAL_QUOTE's lane. At most
        BULK_MAX_SYMBOLS symbols (ValueError)."""
        if len(symbols) > BULK_MAX_SYMBOLS:
            raise ValueError(f"at most {BULK_MAX_SYMBOLS} symbols, not {len(symbols)}")
        in_bulk = await self._start_bulk_flights(symbols, consumer) if self._bulk_quotes else set()
        slots = asyncio.Semaphore(self._lanes[QUOTE].bulkhead.max_concurrency)

        async def outcome(symbol: str) -> QuoteOutcome:
            # A bulk flight's symbol joins it at once: queued here, it could find the flight
            # landed, and a failed one would start a call of its own.
            async with contextlib.nullcontext() if symbol in in_bulk else slots:
                try:
                    return await self.quote(symbol, consumer)
                except (UpstreamError, CircuitOpenError) as exc:
                    return exc

        found = await asyncio.gather(*(outcome(symbol) for symbol in symbols))
        return dict(zip(symbols, found, strict=True))

    async def search(
        self, keywords: str, consumer: Consumer | None = None
    ) -> Served[SymbolMatches]:
        """Listings matching `keywords`, which the caller normalises (normalise_keywords): one
        cache entry and one flight for every way of writing them, fresh for SEARCH_TTL.
        Charged as daily() is."""
        return await self._get(SEARCH, keywords, self._client.search, SymbolMatches, consumer)

    async def passthrough(
        self, params: Mapping[str, str], consumer: Consumer | None = None
    ) -> Served[RawAnswer]:
        """Alpha Vantage's answer to `params` (its `function` one the service has no model of),
        apikey aside: one cache entry and one flight for every order of the same parameters,
        fresh for the function's own TTL. Charged as daily() is."""
        query = upstream_params(params)
        canonical = canonical_query(query)
        return await self._get(
            PASSTHROUGH, canonical, lambda _: self._client.raw(query), RawAnswer, consumer
        )

    def fresh_copy(self, function: str, symbol: str, of: object) -> Served[Value] | None:
        """This process's fresh copy if it is still `of` (the very value an answer was
        rendered from): what daily() and the others would answer at once, counted as their
        hit is. None, and nothing counted, when they would answer anything else."""
        hit = self._cache.get((function, symbol))
        if hit is None or not hit.fresh or hit.value is not of:
            return None
        self._events.count_cache(function, "hit")
        return Served(hit.value, "cache", hit.age, hit.ttl)

    async def aclose(self) -> None:
        await self._flights.aclose()

    async def _get(
        self,
        function: str,
        symbol: str,
        fetch: Callable[[str], Awaitable[T]],
        kind: type[T],
        consumer: Consumer | None,
    ) -> Served[T]:
        key = (function, symbol)
        hit = self._cache.get(key)
        if hit is not None and hit.fresh:
            self._events.count_cache(function, "hit")
            return self._of_kind(kind, Served(hit.value, "cache", hit.age, hit.ttl))
        self._events.count_cache(function, "miss")
        lane = self._lanes[function]

        async def call() -> T:
            return await self._call(key, lane, fetch, consumer)

        try:
            lane.breaker.check()  # an open breaker answers before a flight is set up
            # Joining a flight is free; a consumer past its budget starts none (the check
            # comes before the key's quota is looked at, and before any other caller joins).
            if consumer is not None and key not in self._flights:
                try:
                    await self._consumer_limits.check(consumer)
                except ConsumerThrottled as exc:
                    self._count_held_back(exc, consumer)
                    served = await self._shared_copy_or_raise(key, kind, exc)
                    return self._of_kind(kind, served)
            served = await self._flights.run(key, lambda: self._fetch(key, call, kind))
        except FAILURES as exc:
            if hit is not None:
                served = self._stale(key, hit.value, hit.age, hit.ttl, exc)
            elif isinstance(exc, ConsumerThrottled):
                raise  # wherever it came from, the shared tier was looked in on the way
            else:
                # No copy here, but another process may have one: an open breaker is
                # checked before the flight, which is where the shared tier is read.
                served = await self._shared_copy_or_raise(key, kind, exc)
        return self._of_kind(kind, served)

    async def _shared_copy_or_raise(
        self, key: Key, kind: type[T], error: Exception
    ) -> Served[Value]:
        """What may still be had without a call: the shared tier's copy, fresh or stale;
        else `error`."""
        shared = await self._shared.get(":".join(key))
        if shared is not None and shared.fresh:
            value = kind.model_validate(shared.value)
            kept = self._cache.put(key, value, age=shared.age, ttl=self._ttl(key, shared.age))
            return Served(value, "cache", kept.age, kept.ttl)
        return self._stale_or_raise(key, kind, shared, error)

    async def _fetch(
        self,
        key: Key,
        call: Callable[[], Awaitable[T]],
        kind: type[T],
        waiting: Callable[[], None] | None = None,
    ) -> Served[Value]:
        """One process's flight for `key`: the shared tier's fresh copy if there is one, the
        result of another process's flight if one is under way, else `call()` holding the
        lease. `waiting()` is told when it starts waiting for another process's flight."""
        name = ":".join(key)
        deadline = time.monotonic() + self._limits.max_wait
        shared = await self._shared.get(name)
        while shared is None or not shared.fresh:
            if await self._shared.lease(name):
                return await self._fetch_holding_the_lease(key, name, call, kind, shared)
            if waiting is not None:
                waiting()
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
        kept = self._cache.put(key, value, age=shared.age, ttl=self._ttl(key, shared.age))
        return Served(value, "cache", kept.age, kept.ttl)

    async def _fetch_holding_the_lease(
        self,
        key: Key,
        name: str,
        call: Callable[[], Awaitable[T]],
        kind: type[T],
        shared: SharedHit | None,
    ) -> Served[Value]:
        landed = await self._shared.get(name)
        if landed is not None and landed.fresh:
            # Another process's flight landed between our look and our lease: use it.
            await self._shared.release(name)
            value = kind.model_validate(landed.value)
            kept = self._cache.put(key, value, age=landed.age, ttl=self._ttl(key, landed.age))
            return Served(value, "cache", kept.age, kept.ttl)
        try:
            value = await call()
        except FAILURES as exc:
            await self._shared.release(name)
            return self._stale_or_raise(key, kind, shared, exc)
        except BaseException:
            await self._shared.release(name)
            raise
        ttl = self._ttl(key)
        kept = self._cache.put(key, value, ttl=ttl)
        # Put before the lease goes: a waiter that sees no lease and no value fetches again.
        await self._shared.put(name, value.model_dump(mode="json"), ttl=ttl)
        await self._shared.release(name)
        return Served(value, "upstream", kept.age, kept.ttl)

    async def _call(
        self,
        key: Key,
        lane: Lane,
        fetch: Callable[[str], Awaitable[R]],
        consumer: Consumer | None,
    ) -> R:
        try:
            async with self._limits.admit(lane.bulkhead):
                return await lane.breaker.call(self._call_upstream, key, fetch, consumer)
        except Throttled as exc:
            self._count_held_back(exc, consumer)
            detail = f"Alpha Vantage call held back: {exc.detail}"
            raise type(exc)(detail, exc.reason, exc.retry_after) from None

    def _ttl(self, key: Key, age: float = 0.0) -> float | None:
        """Seconds an entry for `key`, fetched `age` seconds ago, is fresh from its fetch: a
        search's day, a pass-through function's own TTL, or the freshness policy's; None: the
        caches' own."""
        function, query = key
        if function == SEARCH:
            return SEARCH_TTL
        if function == PASSTHROUGH:
            return self._passthrough_ttls.get(function_of(query))
        return None if self._freshness is None else self._freshness.fresh_for(function, query, age)

    def _count_held_back(self, exc: Throttled, consumer: Consumer | None) -> None:
        self._events.count_throttled(exc.reason)
        if isinstance(exc, ConsumerThrottled) and consumer is not None:
            self._events.count_consumer_throttled(consumer.name, exc.reason)

    def _stale_or_raise(
        self, key: Key, kind: type[T], shared: SharedHit | None, error: Exception
    ) -> Served[Value]:
        """The shared tier's expired copy instead of `error`, if it has one."""
        if shared is None:
            raise error
        value = kind.model_validate(shared.value)
        return self._stale(key, value, shared.age, shared.ttl, error)

    def _stale(
        self, key: Key, value: Value, age: float, ttl: float, cause: Exception
    ) -> Served[Value]:
        function, symbol = key
        self._events.count_cache(function, "stale")
        logger.info(
            "serving a stale copy",
            extra={"function": function, "symbol": symbol, "cause": type(cause).__name__},
        )
        return Served(value, "stale", age, ttl, stale_reason(cause))

    async def _call_upstream(
        self, key: Key, fetch: Callable[[str], Awaitable[R]], consumer: Consumer | None
    ) -> R:
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

    async def _start_bulk_flights(
        self, symbols: Sequence[str], consumer: Consumer | None
    ) -> set[str]:
        """Set up, in one step, the flight of every symbol with no fresh copy here and no flight
        under way, all fed by one REALTIME_BULK_QUOTES call charged to `consumer`: quote()
        then joins them. A lone such symbol is left to quote()'s own GLOBAL_QUOTE call, and
        so is every symbol when the breaker refuses calls or the consumer's budget is spent
        (checked here as _get checks before a flight): each then finds out for itself.
        Returns the symbols whose flights it set up."""
        lane = self._lanes[QUOTE]
        try:
            lane.breaker.check()
            if consumer is not None:
                await self._consumer_limits.check(consumer)
        except FAILURES:
            return set()
        # REALTIME_BULK_QUOTES quotes US listings only: the others each get a GLOBAL_QUOTE
        # rather than an answer that leaves them out (which would read as unknown).
        keys = [(QUOTE, symbol) for symbol in symbols if exchange_of(symbol) == US]
        misses = [key for key in keys if key not in self._flights and not self._fresh_here(key)]
        if len(misses) < 2:
            return set()

        async def bulk(symbols: list[str]) -> dict[str, Quote]:
            def fetch(_: str) -> Awaitable[dict[str, Quote]]:
                return self._client.bulk_quotes(symbols)

            return await self._call((BULK_QUOTES, ",".join(symbols)), lane, fetch, consumer)

        batch: Batch[str, Quote] = Batch((symbol for _, symbol in misses), bulk)
        for key in misses:
            self._flights.flight(key, functools.partial(self._bulk_member, key, batch))
        return {symbol for _, symbol in misses}

    async def _bulk_member(self, key: Key, batch: Batch[str, Quote]) -> Served[Value]:
        """A flight whose call is its part of `batch`'s call."""
        symbol = key[1]

        async def call() -> Quote:
            found = await batch.get(symbol)
            if symbol not in found:
                raise UnknownSymbol("unknown symbol")  # left out of the bulk answer
            return found[symbol]

        try:
            return await self._fetch(key, call, Quote, lambda: batch.step_aside(symbol))
        finally:
            batch.step_aside(symbol)  # done without a call: the others need not wait

    def _fresh_here(self, key: Key) -> bool:
        hit = self._cache.get(key)
        return hit is not None and hit.fresh

    @staticmethod
    def _of_kind(kind: type[T], served: Served[Value]) -> Served[T]:
        # One cache holds every kind; the function in the key decides which one a value is.
        if not isinstance(served.value, kind):
            raise TypeError(f"cached {type(served.value).__name__} where {kind.__name__} belongs")
        return cast(Served[T], served)
