"""WATCHLIST: symbols refreshed after each close of their exchange (plus the settle delay), so
that they are fresh all day for one call each a trading day.

A refresh asks StockService like any miss does, so it is paced, counted against the quota,
single-flighted and behind the breaker. On a free key only the daily series is refreshed: its
quote changes at the same close, and a second call a symbol would halve the symbols a day's
25 calls keep fresh. On a premium key the quote is refreshed too, and stays fresh until the
next open.

The quota's share: the watchlist's calls in any rolling day stay within the quota less
WATCHLIST_RESERVE, which is left to on-demand misses. The quota is a rolling day, a call
freeing up a day after it is made, and on a key whose misses take every call as it frees up
a round would find none at the close; so the quota holds for the next round the calls it
needs beyond those of its own that free up by then (DailyQuota.hold), and, during a round,
those it still needs. Rounds then stay on the close, and on-demand misses get the rest.

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
from typing import Any, Protocol

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


def state_key(key: str) -> str:
    """Where the store keeps the watchlist of API key `key` (its digest): when each symbol
    was last refreshed, {"refreshed": {symbol: UNIX seconds}}, and when its calls upstream
    were made, {"calls": [UNIX seconds]}."""
    return f"watchlist:{key}"


@dataclass(frozen=True, slots=True)
class WatchedSymbol:
    symbol: str
    last_refresh: float | None  # UNIX seconds; None: never
    next_refresh: float


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the store holds for the watchlist."""

    refreshed: dict[str, float]
    calls: list[float]  # its upstream calls, within the quota's window


class NextBar(Protocol):
    """MarketFreshness.next_bar: None for no calendar, or, unless `wait`, one not built yet."""

    def __call__(self, symbol: str, after: float, *, wait: bool = False) -> float | None: ...


class Watchlist:
    """`next_bar`: when a symbol's next bar can exist (None: a day after its last refresh)."""

    def __init__(
        self,
        symbols: Sequence[str],
        service: StockService,
        limits: UpstreamLimits,
        store: CacheStore,
        *,
        key: str,
        next_bar: NextBar,
        reserve: int,
        plan: Plan,
        lease_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.symbols = tuple(symbols)
        self.reserve = reserve
        # What a refresh asks for each symbol.
        self.functions = (DAILY, QUOTE) if plan == "premium" else (DAILY,)
        self._service = service
        self._limits = limits
        self._store = store
        self._next_bar = next_bar
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._state_key = state_key(key)
        self._lease_key = f"{self._state_key}:lease"
        self._holder = uuid.uuid4().hex
        # A symbol never refreshed is first refreshed after the next close, not at startup:
        # a round now would spend calls at an hour that later rounds would keep (the quota
        # is a rolling day), and on-demand misses keep the symbols fresh until then anyway.
        self._started = clock()

    async def run(self) -> None:
        """Refresh what is due, then sleep until more is, until cancelled."""
        for symbol in self.symbols:  # its calendar, waited for off the loop (about a second)
            await asyncio.to_thread(self._next_bar, symbol, self._started, wait=True)
        while True:
            try:
                wait = await self.refresh_due()
            except Exception:  # a round's surprise must not end the rounds after it
                logger.exception("watchlist round failed")
                wait = RETRY_SECONDS
            await asyncio.sleep(min(RECHECK_SECONDS, wait))

    async def status(self) -> list[WatchedSymbol]:
        refreshed = (await self._ledger()).refreshed
        return [
            WatchedSymbol(s, refreshed.get(s), self._due_at(s, refreshed.get(s)))
            for s in self.symbols
        ]

    async def refresh_due(self) -> float:
        """Refresh the symbols due, unless another process is at it; the seconds until the
        next look."""
        try:
            if not self._due((await self._ledger()).refreshed):
                return await self._between_rounds()
            if not await self._take_lease():
                logger.info("watchlist round left to the process holding its lease")
                return min(self._lease_seconds, RETRY_SECONDS)  # then find its work done
            try:
                # Read again under the lease: a round may have ended since the first look.
                wait = await self._round(self._due((await self._ledger()).refreshed))
            finally:
                await self._release_lease()
            return wait if wait is not None else await self._between_rounds()
        except StoreUnavailable:
            return RETRY_SECONDS

    async def _round(self, due: list[str]) -> float | None:
        """Refresh `due` in turn; None when all were, else the seconds to wait before the
        rest. The quota holds the calls the round still needs; a round that fails lets them
        go."""
        for done, symbol in enumerate(due):
            needed = (len(due) - done) * len(self.functions)
            share = await self._share_left()
            if share is not None and share < len(self.functions):
                logger.info("watchlist round waits: its share of the day's quota is spent")
                wait = await self._until_share_frees()
                # Its own calls of the day before free up within seconds of the close: held
                # for it, not taken by the first miss that comes along.
                short = wait <= RETRY_SECONDS
                await self._hold(needed if short else 0, wait + self._lease_seconds)
                return wait
            # Renewed before each symbol, so that a long round keeps it; gone, if this
            # process stalled past it and another took it: that one goes on.
            if not await self._take_lease():
                return self._lease_seconds
            held = needed if share is None else min(needed, share)
            await self._hold(held, RETRY_SECONDS)
            try:
                with priority_calls() as calls:
                    try:
                        fresh = await self._refresh_one(symbol)
                    finally:
                        # Every call the quota counted is in its share, failed ones too.
                        await self._count_calls(calls.made)
            except UnknownSymbol:
                logger.warning("watchlist symbol unknown upstream", extra={"symbol": symbol})
                fresh = True  # asked again after the next close, not at every look
            except Throttled as exc:  # paced, or no call free yet: its turn comes
                retry = max(float(exc.retry_after), 1.0)
                await self._hold(held, retry + self._lease_seconds)
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
        logger.info("watchlist refreshed", extra={"symbols": due})
        return None

    async def _refresh_one(self, symbol: str) -> bool:
        """Whether `symbol` is fresh now (not a stale copy standing in for a failure)."""
        for function in self.functions:
            fetch = self._service.daily if function == DAILY else self._service.quote
            if (await fetch(symbol)).source == "stale":
                return False
        return True

    async def _between_rounds(self) -> float:
        """Hold for the next round the calls it may make then, beyond its own that free up
        by then; the seconds until the next look."""
        ledger = await self._ledger()
        now = self._clock()
        soonest = min(self._due_at(s, ledger.refreshed.get(s)) for s in self.symbols)
        window = self._quota_window()
        if window is not None:
            limit, seconds = window
            counted = [t for t in ledger.calls if t > now - seconds]
            still_counted = sum(1 for t in counted if t + seconds > soonest)
            freeing = len(counted) - still_counted
            share = max(0, limit - self.reserve - still_counted)
            held = max(0, min(len(self.symbols) * len(self.functions), share) - freeing)
            await self._hold(held, soonest - now + self._lease_seconds)
        return max(soonest - now, 1.0)

    async def _share_left(self) -> int | None:
        """Calls the watchlist may still make in the quota's window; None: no quota."""
        window = self._quota_window()
        if window is None:
            return None
        limit, seconds = window
        horizon = self._clock() - seconds
        made = sum(1 for t in (await self._ledger()).calls if t > horizon)
        return max(0, limit - self.reserve - made)

    async def _until_share_frees(self) -> float:
        window = self._quota_window()
        calls = (await self._ledger()).calls
        if window is None or not calls:
            return RETRY_SECONDS
        return max(min(calls) + window[1] - self._clock(), 1.0)

    def _quota_window(self) -> tuple[int, float] | None:
        return self._limits.quota

    async def _hold(self, calls: int, seconds: float) -> None:
        with contextlib.suppress(Throttled):  # the store does not answer: nothing is held
            await self._limits.hold(calls, seconds)

    def _due_at(self, symbol: str, last: float | None) -> float:
        since = self._started if last is None else last
        next_bar = self._next_bar(symbol, since)
        return since + DAY if next_bar is None else next_bar

    def _due(self, refreshed: dict[str, float]) -> list[str]:
        now = self._clock()
        return [s for s in self.symbols if self._due_at(s, refreshed.get(s)) <= now]

    async def _ledger(self) -> Ledger:
        def read(document: Document, now: float) -> tuple[Document, Ledger]:
            return document, _ledger_of(document)

        return await self._store.update(self._state_key, read)

    async def _mark_refreshed(self, symbol: str) -> None:
        await self._change(lambda ledger, at: ledger.refreshed.update({symbol: at}))

    async def _count_calls(self, made: int) -> None:
        if made:
            await self._change(lambda ledger, at: ledger.calls.extend([at] * made))

    async def _change(self, change: Callable[[Ledger, float], Any]) -> None:
        at = self._clock()
        window = self._quota_window()
        horizon = at - (window[1] if window is not None else DAY)
        watched = set(self.symbols)

        def write(document: Document, now: float) -> tuple[Document, None]:
            ledger = _ledger_of(document)
            change(ledger, at)
            refreshed = {s: t for s, t in ledger.refreshed.items() if s in watched}
            calls = [t for t in ledger.calls if t > horizon]
            return {"refreshed": refreshed, "calls": calls}, None

        await self._store.update(self._state_key, write)

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


def _ledger_of(document: Document) -> Ledger:
    document = document or {}
    return Ledger(dict(document.get("refreshed", {})), list(document.get("calls", [])))
