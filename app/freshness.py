"""How long an answer stays fresh: until Alpha Vantage can have a newer one, by the sessions of
its symbol's exchange (CACHE_FRESHNESS=market), instead of one fixed TTL.

- A daily series is fresh until the next bar can be published: the close of the session in
  progress (or of the next one) plus the settle delay. Friday evening's lasts until Monday's
  close, a holiday's until the next session's, a half day's bar lands after its early close.
- A quote is fresh for the fixed TTL while its exchange trades (and for the settle delay
  after a close, while the closing prints land), and until the next open otherwise. On a
  free key Alpha Vantage updates GLOBAL_QUOTE once a day, at the close: there it follows the
  daily series's rule.
- Other functions, and symbols whose exchange has no calendar, keep the fixed TTL; so does
  an exchange whose calendar is still being built, in a worker thread (app/market_hours.py),
  until it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, Protocol

from app.alphavantage import DAILY, QUOTE
from app.exchanges import exchange_of
from app.market_hours import MarketHours, Sessions

Plan = Literal["free", "premium"]


class Freshness(Protocol):
    """What StockService asks of a freshness policy."""

    def fresh_for(self, function: str, symbol: str, age: float = 0.0) -> float | None:
        """Seconds an answer of `function` for `symbol`, fetched `age` seconds ago, is fresh
        from its fetch; None: the fixed TTL (CACHE_TTL_SECONDS)."""
        ...


class MarketFreshness:
    """Freshness by market hours. `clock` is the wall clock (UNIX seconds)."""

    def __init__(
        self,
        hours: MarketHours,
        *,
        settle: float,
        plan: Plan,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._hours = hours
        self._settle = settle
        self._plan = plan
        self._clock = clock

    def fresh_for(self, function: str, symbol: str, age: float = 0.0) -> float | None:
        fetched_at = self._clock() - age
        if function == DAILY or (function == QUOTE and self._plan == "free"):
            published = self.next_bar(symbol, fetched_at)
            return None if published is None else published - fetched_at
        if function == QUOTE:
            return self._quote_fresh_for(symbol, fetched_at)
        return None

    def next_bar(self, symbol: str, after: float, *, wait: bool = False) -> float | None:
        """When Alpha Vantage can have `symbol`'s first daily bar newer than what it had at
        `after` (UNIX seconds): a session's close plus the settle delay. None if the
        exchange has no calendar, or, unless `wait` (blocking: not on the event loop), while
        it is being built."""
        sessions = self._sessions(symbol, after, wait=wait)
        # A close less than the settle delay ago: that session's bar is not out yet.
        close = None if sessions is None else sessions.close_after(after - self._settle)
        return None if close is None else close + self._settle

    def _quote_fresh_for(self, symbol: str, at: float) -> float | None:
        sessions = self._sessions(symbol, at)
        if sessions is None or sessions.is_open(at):
            return None
        last_close = sessions.close_before(at)
        if last_close is not None and at < last_close + self._settle:
            return None
        opens = sessions.open_after(at)
        return None if opens is None else opens - at

    def _sessions(self, symbol: str, at: float, *, wait: bool = False) -> Sessions | None:
        exchange = exchange_of(symbol)
        if exchange is None:
            return None
        if wait:
            return self._hours.wait_for_sessions(exchange, at)
        return self._hours.sessions(exchange, at)
