from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import Throttled, retry_after_seconds
from app.limits._state import State

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    limit: int
    used: int  # calls counted in the window
    remaining: int  # 0 while Alpha Vantage's own answer says the day's quota is spent
    next_refill_in: float | None  # seconds until the oldest counted call leaves the window
    blocked_for: float  # seconds left of a block set by Alpha Vantage's "per day" answer


class DailyQuota:
    """At most `limit` calls in any `window` seconds (a rolling day).

    Calls are counted when they are made, so a call refused by the breaker or the bulkhead
    costs nothing. `exhaust()` records Alpha Vantage's own word that the quota is spent: its
    counter is per key and IP, so other clients of the same key spend it too. `hold()` keeps
    the calls left for priority calls (a watchlist's round) for a while: others are refused.
    """

    def __init__(
        self, limit: int, window: float = DAY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or not (math.isfinite(window) and window > 0):
            raise ValueError(f"need limit >= 1 and window > 0, got {limit} and {window}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._calls: deque[float] = deque()
        self._blocked_until = -math.inf
        self._held = 0  # calls kept for priority calls, while the clock is before _held_until
        self._held_until = -math.inf

    def check(self, priority: bool = False) -> None:
        """Raise Throttled if a call now would go over the quota, or, unless it is a
        `priority` call, take a call held for those."""
        now = self._clock()
        wait = self._wait(now)
        if wait > 0:
            raise Throttled(
                f"the daily quota of {self.limit} calls is spent",
                "quota",
                retry_after_seconds(wait),
            )
        if not priority and now < self._held_until and self.limit - len(self._calls) <= self._held:
            raise Throttled(
                "the daily quota's calls left are held for the watchlist's refresh",
                "quota",
                retry_after_seconds(self._held_until - now),
            )

    def take(self, priority: bool = False) -> None:
        """Count a call about to be made, or raise Throttled as check() does."""
        self.check(priority)
        self._calls.append(self._clock())
        if priority and self._held > 0:
            self._held -= 1

    def hold(self, calls: int, seconds: float) -> None:
        """Keep up to `calls` of the calls left for priority calls for `seconds` (0: none)."""
        self._held, self._held_until = calls, self._clock() + seconds

    def refund(self) -> None:
        """Forget the newest counted call: it was counted but, refused further on, never made."""
        if self._calls:
            self._calls.pop()

    def exhaust(self) -> None:
        """Make no call until the oldest counted call leaves the window (a whole window if
        none is counted): Alpha Vantage's count is ahead of ours."""
        now = self._clock()
        self._expire(now)
        self._blocked_until = (self._calls[0] if self._calls else now) + self.window

    def status(self) -> QuotaUsage:
        now = self._clock()
        self._expire(now)
        blocked_for = max(0.0, self._blocked_until - now)
        return QuotaUsage(
            limit=self.limit,
            used=len(self._calls),
            remaining=0 if blocked_for else max(0, self.limit - len(self._calls)),
            next_refill_in=self._calls[0] + self.window - now if self._calls else None,
            blocked_for=blocked_for,
        )

    def _wait(self, now: float) -> float:
        self._expire(now)
        if now < self._blocked_until:
            return self._blocked_until - now
        if len(self._calls) < self.limit:
            return 0.0
        # Free once enough of the oldest calls have left the window to make room for one.
        return self._calls[len(self._calls) - self.limit] + self.window - now

    def _expire(self, now: float) -> None:
        calls, horizon = self._calls, now - self.window
        while calls and calls[0] <= horizon:
            calls.popleft()

    def dump(self) -> State:
        self._expire(self._clock())
        blocked = None if self._blocked_until == -math.inf else self._blocked_until
        held = [self._held, self._held_until] if self._held_until > self._clock() else None
        return {"calls": list(self._calls), "blocked_until": blocked, "held": held}

    @classmethod
    def load(
        cls, limit: int, window: float, clock: Callable[[], float], state: State
    ) -> DailyQuota:
        quota = cls(limit, window, clock)
        if state is not None:
            quota._calls.extend(state["calls"])
            if state["blocked_until"] is not None:
                quota._blocked_until = state["blocked_until"]
            if state.get("held") is not None:
                quota._held, quota._held_until = state["held"]
        return quota
