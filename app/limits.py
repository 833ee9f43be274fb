"""What the service allows itself to ask of Alpha Vantage: pacing, a daily quota, a bulkhead.

A free key allows about one call a second and 25 a day, counted upstream per key and IP, and
going over makes calls fail for the rest of the day. A breaker reacts after that damage; these
limits keep the service under them instead. None of them queues without bound: a call that
would wait longer than it may is refused at once with Throttled, which carries a Retry-After.

Decisions use the injected monotonic clock; wall-clock times are only computed for display.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from app.errors import StoreUnavailable, Throttled, retry_after_seconds

DAY = 86400.0
# What a store keeps under a key: a JSON document, or None for nothing yet.
State = dict[str, Any] | None
R = TypeVar("R")
STORE_RETRY_AFTER = 5  # seconds: a store outage is usually short, and clients should come back


class TokenBucket:
    """`rate` calls a second on average and at most `burst` at once.

    A caller may reserve a token that is not there yet (the bucket goes below zero) and waits
    until it would have been: reservations keep their order, and the calls they allow start
    no closer together than the rate permits.
    """

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(rate) and rate > 0) or burst < 1:
            raise ValueError(f"need rate > 0 and burst >= 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def tokens(self) -> float:
        """Tokens available now; below zero when callers wait for tokens still to come."""
        self._refill(self._clock())
        return self._tokens

    def reserve(self, max_wait: float) -> float:
        """Take a token and return how long to wait before using it, or raise Throttled
        (taking nothing) if that would be longer than `max_wait`."""
        self._refill(self._clock())
        wait = max(0.0, (1.0 - self._tokens) / self.rate)
        if wait > max_wait:
            raise Throttled(
                f"calls are paced at {self.rate:g} a second and the queue is full",
                "pacing",
                retry_after_seconds(wait - max_wait),
            )
        self._tokens -= 1.0
        return wait

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    def dump(self) -> State:
        return {"tokens": self._tokens, "updated": self._updated}

    @classmethod
    def load(cls, rate: float, burst: int, clock: Callable[[], float], state: State) -> TokenBucket:
        bucket = cls(rate, burst, clock)
        if state is not None:
            bucket._tokens, bucket._updated = state["tokens"], state["updated"]
        return bucket


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
    counter is per key and IP, so other clients of the same key spend it too.
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

    def check(self) -> None:
        """Raise Throttled if a call now would go over the quota."""
        wait = self._wait(self._clock())
        if wait > 0:
            raise Throttled(
                f"the daily quota of {self.limit} calls is spent",
                "quota",
                retry_after_seconds(wait),
            )

    def take(self) -> None:
        """Count a call about to be made, or raise Throttled as check() does."""
        self.check()
        self._calls.append(self._clock())

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
        return {"calls": list(self._calls), "blocked_until": blocked}

    @classmethod
    def load(
        cls, limit: int, window: float, clock: Callable[[], float], state: State
    ) -> DailyQuota:
        quota = cls(limit, window, clock)
        if state is not None:
            quota._calls.extend(state["calls"])
            if state["blocked_until"] is not None:
                quota._blocked_until = state["blocked_until"]
        return quota


class Bulkhead:
    """At most `max_concurrency` calls at once; the rest wait a bounded time or are refused,
    so a slow upstream can never tie up every connection and task."""

    def __init__(self, name: str, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.name = name
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        # Told in_flight's new value on every change: the metrics' gauge, which in a group of
        # workers must be written as it changes (a scrape reaches one worker, not all).
        self.on_in_flight: Callable[[int], None] | None = None
        self._slots = asyncio.Semaphore(max_concurrency)

    @asynccontextmanager
    async def slot(self, max_wait: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(max_wait if self._slots.locked() else None):
                await self._slots.acquire()
        except TimeoutError:
            raise Throttled(
                f"{self.max_concurrency} calls are already in flight",
                "bulkhead",
                1,
            ) from None
        self._count(1)
        try:
            yield
        finally:
            self._count(-1)
            self._slots.release()

    def _count(self, change: int) -> None:
        self.in_flight += change
        if self.on_in_flight is not None:
            self.on_in_flight(self.in_flight)


class SharedState(Protocol):
    """Where the limits keep what every process calling with one API key must agree on
    (app/state has the memory, SQLite and Redis ones). Values are JSON documents."""

    async def update(self, key: str, change: Callable[[State, float], tuple[State, R]]) -> R:
        """Atomically across processes: call `change(value, now)` with the value at `key`
        (None if there is none) and the store's clock in seconds, store the value it
        returns (unless it is the very object it was given: nothing changed), and return
        its result. If `change` raises, nothing is stored. Raises StoreUnavailable when
        the store does not answer in time. What the limits store never expires."""
        ...


@dataclass(frozen=True, slots=True)
class LimitsStatus:
    quota: QuotaUsage | None  # None when the quota is off
    tokens: float | None  # the pacing bucket; None when pacing is off
    paused_for: float  # seconds left of a pause an upstream rate-limit answer asked for


class UpstreamLimits:
    """Pacing and the daily quota, shared by every call made with one API key, and the pause
    the upstream asks for when it answers that a limit is reached. Their state lives in
    `state` under keys derived from `key` (a digest of the API key, never the key), so that
    every process and replica sharing the store shares one budget."""

    def __init__(
        self,
        state: SharedState,
        *,
        key: str,
        pacing: tuple[float, int] | None,  # (rate a second, burst)
        quota: tuple[int, float] | None,  # (calls, window in seconds)
        max_wait: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if pacing is not None:
            TokenBucket(*pacing)  # validates
        if quota is not None:
            DailyQuota(*quota)
        self.pacing = pacing
        self.quota = quota
        self.max_wait = max_wait
        self.last_quota: QuotaUsage | None = None  # for the metrics, read at scrape time
        self._state = state
        self._keys = {name: f"limits:{key}:{name}" for name in ("quota", "pacing", "pause")}
        self._clock = clock

    @asynccontextmanager
    async def admit(self, bulkhead: Bulkhead) -> AsyncIterator[None]:
        """Wait, `max_wait` seconds at most in all, for a bulkhead slot, the end of a pause
        and then a paced turn; or raise Throttled at once. The token is taken last, so that
        the calls it paces start no closer together than the rate, however long the bulkhead
        or a pause made them wait."""
        deadline = self._clock() + self.max_wait
        if self.quota is not None:
            await self._on_quota(DailyQuota.check)  # no use waiting for a turn it would refuse
        await self._pause_left(self.max_wait)
        async with bulkhead.slot(self.max_wait):
            pause = await self._pause_left(max(0.0, deadline - self._clock()))
            if pause > 0:
                await asyncio.sleep(pause)
            if self.pacing is not None:
                budget = max(0.0, deadline - self._clock())
                wait = await self._on_bucket(lambda bucket: bucket.reserve(budget))
                if wait > 0:
                    await asyncio.sleep(wait)
            yield

    async def count_call(self) -> None:
        """Count a call about to be made against the quota (Throttled if it is spent)."""
        if self.quota is not None:
            await self._on_quota(DailyQuota.take)

    async def limit_reached(self, period: str | None, retry_after: float) -> int:
        """The upstream answered that a limit is reached: make no call for `retry_after`
        seconds. A per-day answer means the key is spent, quota on or off: with the quota on,
        until its window frees up; with it off (no ledger to tell), for a whole day. Returns
        the whole seconds until calls resume, for Retry-After."""
        if period == "day" and self.quota is not None:
            await self._on_quota(DailyQuota.exhaust)
            return retry_after_seconds(await self._on_quota(lambda q: q.status().blocked_for))
        if period == "day":
            retry_after = DAY
        reason = "quota" if period == "day" else "pacing"

        def extend(pause: Pause) -> float:
            pause.extend(retry_after, reason)
            return pause.left()

        return retry_after_seconds(await self._on_pause(extend))

    async def status(self) -> LimitsStatus:
        quota = None
        if self.quota is not None:
            quota = await self._on_quota(DailyQuota.status)
        tokens = None
        if self.pacing is not None:
            tokens = await self._on_bucket(TokenBucket.tokens)
        return LimitsStatus(quota, tokens, await self._on_pause(Pause.left))

    async def _pause_left(self, max_wait: float) -> float:
        """Seconds left of the pause, or Throttled if that is longer than `max_wait`."""
        pause = await self._on_pause(lambda p: (p.left(), p.reason))
        left, reason = pause
        if left > max_wait:
            raise Throttled(
                f"calls are paused for {left:.0f} s after a rate-limit answer",
                reason,
                retry_after_seconds(left),
            )
        return left

    async def _on_quota(self, use: Callable[[DailyQuota], R]) -> R:
        assert self.quota is not None
        limit, window = self.quota

        def change(state: State, now: float) -> tuple[State, R]:
            quota = DailyQuota.load(limit, window, lambda: now, state)
            result = use(quota)
            self.last_quota = quota.status()
            return quota.dump(), result

        return await self._update("quota", change)

    async def _on_bucket(self, use: Callable[[TokenBucket], R]) -> R:
        assert self.pacing is not None
        rate, burst = self.pacing

        def change(state: State, now: float) -> tuple[State, R]:
            bucket = TokenBucket.load(rate, burst, lambda: now, state)
            result = use(bucket)
            return bucket.dump(), result

        return await self._update("pacing", change)

    async def _on_pause(self, use: Callable[[Pause], R]) -> R:
        def change(state: State, now: float) -> tuple[State, R]:
            pause = Pause.load(now, state)
            result = use(pause)
            return pause.dump(), result

        return await self._update("pause", change)

    async def _update(self, name: str, change: Callable[[State, float], tuple[State, R]]) -> R:
        try:
            return await self._state.update(self._keys[name], change)
        except StoreUnavailable:
            # The budget cannot be proven: better no call than an overdrawn key.
            raise Throttled(
                "the shared state store does not answer, so the budget cannot be checked",
                "store",
                STORE_RETRY_AFTER,
            ) from None


class Pause:
    """No call before `until` (store clock), for the `reason` it is counted under."""

    def __init__(self, now: float, until: float = -math.inf, reason: str = "pacing") -> None:
        self._now = now
        self.until = until
        self.reason = reason

    def left(self) -> float:
        return max(0.0, self.until - self._now)

    def extend(self, seconds: float, reason: str) -> None:
        """Pause for `seconds` from now, unless a longer pause is set already."""
        if self._now + seconds > self.until:
            self.until, self.reason = self._now + seconds, reason

    def dump(self) -> State:
        return None if self.until == -math.inf else {"until": self.until, "reason": self.reason}

    @classmethod
    def load(cls, now: float, state: State) -> Pause:
        return cls(now) if state is None else cls(now, state["until"], state["reason"])
