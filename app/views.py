"""How the breakers and the quota appear in answers (app/models.py shapes), for the routes and
the event stream alike."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from app.breaker import CircuitBreaker, Snapshot
from app.errors import Throttled
from app.limits import QuotaUsage, UpstreamLimits
from app.models import BreakerSnapshot, QuotaStatus


def utc(timestamp: float | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.UTC)


def utc_in(seconds: float | None) -> dt.datetime | None:
    return None if seconds is None else utc(time.time() + seconds)


def breaker_snapshot(snapshot: Snapshot) -> BreakerSnapshot:
    return BreakerSnapshot(
        name=snapshot.name,
        state=snapshot.state.value,
        failure_count=snapshot.failure_count,
        success_count=snapshot.success_count,
        failure_threshold=snapshot.failure_threshold,
        success_threshold=snapshot.success_threshold,
        timeout_seconds=snapshot.timeout,
        half_open_max_calls=snapshot.half_open_max_calls,
        last_failure_time=utc(snapshot.last_failure_time),
        opened_at=utc(snapshot.opened_at),
        retry_after_seconds=round(snapshot.retry_after, 3),
        forced_open=snapshot.forced_open,
        mode=snapshot.mode,
        open_timeout_seconds=round(snapshot.open_timeout, 3),
        reopens=snapshot.reopens,
        window_calls=snapshot.window_calls,
        failure_rate=snapshot.failure_rate,
        slow_call_rate=snapshot.slow_call_rate,
    )


async def refreshed(breakers: tuple[CircuitBreaker, ...]) -> tuple[CircuitBreaker, ...]:
    """`breakers`, each brought up to date with the state it shares with the other processes
    (and a force-open or reset given here written there)."""
    await asyncio.gather(*(breaker.refresh() for breaker in breakers))
    return breakers


def quota_status(limits: UpstreamLimits, usage: QuotaUsage | None) -> QuotaStatus | None:
    """The daily quota as GET /upstream shows it; None when it is off or unknown."""
    if limits.quota is None or usage is None:
        return None
    return QuotaStatus(
        limit=usage.limit,
        used=usage.used,
        remaining=usage.remaining,
        window_seconds=limits.quota[1],
        next_refill_at=utc_in(usage.next_refill_in),
        blocked_until=utc_in(usage.blocked_for or None),
    )


async def current_quota(limits: UpstreamLimits) -> QuotaStatus | None:
    """The daily quota now; None when it is off, or the store does not answer."""
    try:
        return quota_status(limits, (await limits.status()).quota)
    except Throttled:
        return None
