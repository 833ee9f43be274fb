from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

from app.errors import StoreUnavailable, Throttled, retry_after_seconds
from app.limits._bulkhead import Bulkhead
from app.limits._pacing import Pause, TokenBucket
from app.limits._quota import DAY, DailyQuota, QuotaUsage
from app.limits._state import State

R = TypeVar("R")
STORE_RETRY_AFTER = 5  # seconds: a store outage is usually short, and clients should come back
# Set where calls may take the quota's held calls (a watchlist's round): a context variable,
# so that it reaches the calls made through StockService without a parameter at each step.
_PRIORITY: contextvars.ContextVar[PriorityCalls | None] = contextvars.ContextVar(
    "priority", default=None
)


@dataclass(slots=True)
class PriorityCalls:
    made: int = 0  # calls counted against the quota, whatever their outcome


@contextmanager
def priority_calls() -> Iterator[PriorityCalls]:
    """Calls made within (and in tasks started within) may take the quota's held calls; the
    value yielded counts them."""
    calls = PriorityCalls()
    token = _PRIORITY.set(calls)
    try:
        yield calls
    finally:
        _PRIORITY.reset(token)


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
            # No use waiting for a turn it would refuse.
            await self._on_quota(lambda quota: quota.check(_PRIORITY.get() is not None))
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
            priority = _PRIORITY.get()
            await self._on_quota(lambda quota: quota.take(priority is not None))
            if priority is not None:
                priority.made += 1

    async def hold(self, calls: int, seconds: float) -> None:
        """Keep up to `calls` of the quota's calls left for priority calls for `seconds`
        (DailyQuota.hold); nothing while the quota is off."""
        if self.quota is not None:
            await self._on_quota(lambda quota: quota.hold(calls, seconds))

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
            self.last_quota = quota.status()  # before `use`, which raises when it is spent
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
