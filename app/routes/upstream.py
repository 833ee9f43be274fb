from __future__ import annotations

from fastapi import APIRouter

from app.deps import ResourcesDep
from app.errors import StoreUnavailable, Throttled
from app.limits import LimitsStatus
from app.models import (
    BulkheadStatus,
    PacingStatus,
    StateStoreStatus,
    UpstreamStatus,
    WatchedSymbolStatus,
    WatchlistStatus,
)
from app.state import describe
from app.views import quota_status, utc, utc_in
from app.watchlist import Watchlist

router = APIRouter(tags=["upstream"])


async def watchlist_status(watchlist: Watchlist) -> WatchlistStatus:
    try:
        symbols = [
            WatchedSymbolStatus(
                symbol=s.symbol,
                last_refresh=utc(s.last_refresh),
                next_refresh=utc(s.next_refresh),
            )
            for s in await watchlist.status()
        ]
    except StoreUnavailable:  # when they were refreshed is unknown
        symbols = [
            WatchedSymbolStatus(symbol=s, last_refresh=None, next_refresh=None)
            for s in watchlist.symbols
        ]
    return WatchlistStatus(
        functions=list(watchlist.functions), reserve=watchlist.reserve, symbols=symbols
    )


@router.get("/upstream", response_model=UpstreamStatus)
async def upstream_status(resources: ResourcesDep) -> UpstreamStatus:
    """What the service still allows itself to ask of Alpha Vantage: the daily quota, the
    pacing bucket and the bulkheads; and the watchlist's refreshes."""
    limits = resources.limits
    try:
        status = await limits.status()
    except Throttled:  # the store does not answer: what it holds is unknown
        status = LimitsStatus(quota=None, tokens=None, paused_for=0.0)
    quota = quota_status(limits, status.quota)
    pacing = None
    if limits.pacing is not None and status.tokens is not None:
        rate, burst = limits.pacing
        pacing = PacingStatus(rate_per_second=rate, burst=burst, tokens=round(status.tokens, 3))
    return UpstreamStatus(
        state_store=StateStoreStatus(url=describe(resources.state.url), up=resources.state.up),
        quota=quota,
        pacing=pacing,
        paused_until=utc_in(status.paused_for or None),
        max_wait_seconds=limits.max_wait,
        bulkheads=[
            BulkheadStatus(name=b.name, max_concurrency=b.max_concurrency, in_flight=b.in_flight)
            for b in resources.bulkheads
        ],
        watchlist=None
        if resources.watchlist is None
        else await watchlist_status(resources.watchlist),
    )
