"""WATCHLIST: symbols refreshed after each close of their exchange (plus the settle delay), so
that they are fresh all day for one call each a trading day.

A refresh asks StockService like any miss does, so it is paced, counted against the quota,
single-flighted and behind the breaker; it is made only while the quota has more than
WATCHLIST_RESERVE calls left, which stay for on-demand misses. While a round waits for calls
to free up, the quota holds them for it (DailyQuota.hold). On a free key only the daily
series is refreshed: its quote changes at the same close, and a second call a symbol would
halve the symbols a day's 25 calls keep fresh. On a premium key the quote is refreshed too,
and stays fresh until the next open.

When each symbol was last refreshed lives in the store, and a round runs under a lease there:
in a group sharing the store one process refreshes a symbol, and the others find it done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from app.alphavantage import DAILY, QUOTE
from app.breaker import CircuitOpenError
from app.errors import StoreUnavailable, Throttled, UnknownSymbol, UpstreamError
from app.freshness import Plan
from app.limits import DAY, UpstreamLimits, priority_calls
from app.service import StockService
from app.shared_cache import CacheStore, Document

logger = logging.getLogger(__name__)

RETRY_SECONDS = 300.0  # after a refresh that failed (upstream down, breaker open, store down)
RECHECK_SECONDS = 3600.0  # the longest sleep: the host may have been suspended meanwhile
# How long before a round is due the quota starts holding calls for it. The quota is a
# rolling day, a call freeing up a day after it is made: on a key whose misses take every
# call as it frees up, a round that finds none at the close drifts to whenever calls free
# up, and stays there. The calls that free up in the hour before keep it on the close.
HOLD_AHEAD_SECONDS = 3600.0


def state_key(key: str) -> str:
    """Where the store keeps when each symbol of the watchlist of API key `key` (its digest)
    was last refreshed: {symbol: UNIX seconds}."""
    return f"watchlist:{key}"


@dataclass(frozen=True, slots=True)
class WatchedSymbol:
    symbol: str
    last_refresh: float | None  # UNIX seconds; None: never
    next_refresh: float


class Watchlist:
    """`next_bar(symbol, after)`: when a bar newer than `after` can exist (None: the exchange
    has no calendar, and the symbol is refreshed a day after the last time)."""

    def __init__(
        self,
        symbols: Sequence[str],
        service: StockService,
        limits: UpstreamLimits,
        store: CacheStore,
        *,
        key: str,
        next_bar: Callable[[str, float], float | None],
        reserve: int,
        plan: Plan,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.symbols = tuple(symbols)
        self.reserve = reserve
        self._service = service
        self._limits = limits
        self._store = store
        self._next_bar = next_bar
        # What a refresh asks for each symbol.
        self.functions = (DAILY, QUOTE) if plan == "premium" else (DAILY,)
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._state_key = state_key(key)
        self._lease_key = f"{self._state_key}:lease"
        self._holder = uuid.uuid4().hex
        # A symbol never refreshed is first refreshed after the next close, not at startup:
        # a round now would spend the quota that the round after the close needs (the quota
        # is a rolling day), and on-demand misses keep the symbols fresh until then anyway.
        self._started = clock()

    async def run(self) -> None:
        """Refresh what is due, then sleep until more is, until cancelled."""
        # The symbols' calendars, built off the event loop: importing the library and
        # building a calendar take about a second (app/market_hours.py).
        await asyncio.to_thread(lambda: [self._next_bar(s, self._started) for s in self.symbols])
        while True:
            try:
                wait = await self.refresh_due()
            except Exception:  # a round's surprise must not end the rounds after it
                logger.exception("watchlist round failed")
                wait = RETRY_SECONDS
            await asyncio.sleep(min(RECHECK_SECONDS, wait))

    async def status(self) -> list[WatchedSymbol]:
        refreshed = await self._refreshed()
        return [
            WatchedSymbol(s, refreshed.get(s), self._due_at(s, refreshed.get(s)))
            for s in self.symbols
        ]

    async def refresh_due(self) -> float:
        """Refresh the symbols due, unless another process is at it; the seconds until the
        next look."""
        try:
            if not self._due(await self._refreshed()):
                return await self._ahead_of_the_round()
            if not await self._take_lease():
                logger.info("watchlist round left to the process holding its lease")
                return min(self._lease_seconds, RETRY_SECONDS)  # then find its work done
            try:
                # Read again under the lease: a round may have ended since the first look.
                wait = await self._refresh(self._due(await self._refreshed()))
            finally:
                await self._release_lease()
            return wait if wait is not None else await self._ahead_of_the_round()
        except StoreUnavailable:
            return RETRY_SECONDS

    async def _refresh(self, due: list[str]) -> float | None:
        """Refresh `due` in turn; None when all were, else the seconds to wait before the
        rest. Meanwhile the quota's calls left are held for the round: on-demand misses take
        each call as it frees up, and the round would otherwise never find more than the
        reserve left. A round that fails lets them go."""
        for done, symbol in enumerate(due):
            calls_left = (len(due) - done) * len(self.functions)
            wait = await self._over_the_reserve()
            if wait is not None:
                logger.info("watchlist refresh waits: no more than the reserve is left")
                await self._hold_while(calls_left, wait)
                return wait
            # Renewed before each symbol, so that a long round keeps it; gone, if this
            # process stalled past it and another took it: that one goes on.
            if not await self._take_lease():
                return self._lease_seconds
            await self._hold(calls_left, self._lease_seconds)
            try:
                with priority_calls():
                    fresh = await self._refresh_one(symbol)
            except UnknownSymbol:
                logger.warning("watchlist symbol unknown upstream", extra={"symbol": symbol})
                fresh = True  # asked again after the next close, not at every look
            except Throttled as exc:  # paced, or the quota spent: its turn comes
                retry = max(float(exc.retry_after), 1.0)
                await self._hold_while(calls_left, retry)
                return retry
            except (UpstreamError, CircuitOpenError) as exc:
                logger.warning(
                    "watchlist refresh failed",
                    extra={"symbol": symbol, "cause": type(exc).__name__},
                )
                fresh = False
            if not fresh:  # a failure, or a stale copy standing in for one
                await self._hold(0, 0)
                return RETRY_SECONDS
            await self._mark_refreshed(symbol)
        await self._hold(0, 0)
        logger.info("watchlist refreshed", extra={"symbols": due})
        return None

    async def _hold_while(self, calls: int, wait: float) -> None:
        """Hold `calls` while the round waits `wait` seconds for them, if that is short: a
        long wait (nothing frees up for hours) would only keep on-demand misses waiting."""
        if wait <= RETRY_SECONDS:
            await self._hold(calls, wait + self._lease_seconds)
        else:
            await self._hold(0, 0)

    async def _hold(self, calls: int, seconds: float) -> None:
        """Hold `calls` for the round, and the reserve, which the round leaves to on-demand
        misses once it is over; 0: none."""
        held = calls + self.reserve if calls else 0
        with contextlib.suppress(Throttled):  # the store does not answer: nothing is held
            await self._limits.hold(held, seconds)

    async def _refresh_one(self, symbol: str) -> bool:
        """Whether `symbol` is fresh now (not a stale copy standing in for a failure)."""
        _, source = await self._service.daily(symbol)
        if QUOTE in self.functions and source != "stale":
            _, source = await self._service.quote(symbol)
        return source != "stale"

    async def _over_the_reserve(self) -> float | None:
        """None while the quota has more than the reserve left; else the seconds until it
        may again."""
        try:
            usage = (await self._limits.status()).quota
        except Throttled:  # the store does not answer
            return RETRY_SECONDS
        if usage is None or usage.remaining > self.reserve:
            return None
        return max(usage.blocked_for, usage.next_refill_in or RETRY_SECONDS, 1.0)

    def _due_at(self, symbol: str, last: float | None) -> float:
        since = self._started if last is None else last
        next_bar = self._next_bar(symbol, since)
        return since + DAY if next_bar is None else next_bar

    def _due(self, refreshed: dict[str, float]) -> list[str]:
        now = self._clock()
        return [s for s in self.symbols if self._due_at(s, refreshed.get(s)) <= now]

    async def _ahead_of_the_round(self) -> float:
        """Nothing is due: within HOLD_AHEAD_SECONDS of the next round, hold the calls it
        will need. The seconds until the next look."""
        refreshed = await self._refreshed()
        now = self._clock()
        due_at = [self._due_at(s, refreshed.get(s)) for s in self.symbols]
        soonest = min(due_at)
        if soonest - now > HOLD_AHEAD_SECONDS:
            return max(soonest - HOLD_AHEAD_SECONDS - now, 1.0)
        coming = sum(1 for t in due_at if t <= now + HOLD_AHEAD_SECONDS)
        await self._hold(coming * len(self.functions), soonest - now + self._lease_seconds)
        return max(soonest - now, 1.0)

    async def _refreshed(self) -> dict[str, float]:
        def read(document: Document, now: float) -> tuple[Document, dict[str, float]]:
            return document, dict(document or {})

        return await self._store.update(self._state_key, read)

    async def _mark_refreshed(self, symbol: str) -> None:
        at = self._clock()
        watched = set(self.symbols)

        def mark(document: Document, now: float) -> tuple[Document, None]:
            kept = {s: t for s, t in (document or {}).items() if s in watched}
            return {**kept, symbol: at}, None

        await self._store.update(self._state_key, mark)

    async def _take_lease(self) -> bool:
        def take(document: Document, now: float) -> tuple[Document, bool]:
            if document is not None and document["holder"] != self._holder:
                return document, False
            return {"holder": self._holder}, True

        return await self._store.update(self._lease_key, take, self._lease_seconds)

    async def _release_lease(self) -> None:
        def give_back(document: Document, now: float) -> tuple[Document, None]:
            if document is None or document["holder"] != self._holder:
                return document, None
            return None, None

        with contextlib.suppress(StoreUnavailable):
            await self._store.update(self._lease_key, give_back, 0)
