"""`make bench-quota`: how many Alpha Vantage calls a day a realistic workload costs.

The workload: 100 symbols with Zipf-distributed popularity (s = 1: the top symbol is asked
for 100 times as often as the last), 10 requests a second, daily series only, for a simulated
day. It runs through the real StockService (cache, single-flight coalescing, pacing, daily
quota, bulkhead, breaker) on a fake clock, so a day takes seconds. Each second's 10 requests
run concurrently and the fake upstream yields to the event loop before it answers, so
requests for one symbol within the same second share one call, as they would behind a real
upstream latency of a few hundred milliseconds. Pacing waits are accounted in the token
bucket but not slept, so a paced call lands up to UPSTREAM_MAX_WAIT_SECONDS early: the counts
of calls are exact, their timing within a second is not.

Prints, for several configurations, the upstream calls made over the day against the quota,
and what clients got: fresh answers (cache or upstream), stale copies, or 503s.

Then the same on a free key over a simulated trading week (Monday to Sunday, one request a
second, on a wall clock the exchange calendars read): fixed TTLs against market-hours
freshness (app/freshness.py), and against market freshness with a watchlist of the 25 most
popular symbols (app/watchlist.py), whose rounds run on the same fake clock.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock
from zoneinfo import ZoneInfo

# `python bench/quota_workload.py` puts bench/ first on the path, not the project's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import alphavantage
from app.breaker import CircuitBreaker, CircuitOpenError
from app.cache import TTLCache
from app.consumers import ConsumerLimits
from app.errors import UpstreamError, is_upstream_failure
from app.exchanges import US
from app.freshness import MarketFreshness
from app.limits import DAY, Bulkhead, UpstreamLimits
from app.market_hours import MarketHours
from app.metrics import Metrics
from app.models import DailySeries, Quote
from app.service import Key, Lane, StockService, Value
from app.shared_cache import SharedCache
from app.state import MemoryState
from app.watchlist import Watchlist

SYMBOLS = 100
ZIPF_S = 1.0
REQUESTS_PER_SECOND = 10
SEED = 20261126
WEEK_REQUESTS_PER_SECOND = 1
# A week with no holiday, from Monday 00:00 in New York: the symbols are US ones (no suffix).
WEEK_START = dt.datetime(2026, 11, 9, tzinfo=ZoneInfo("America/New_York")).timestamp()
SETTLE = 1800.0  # FRESHNESS_SETTLE_SECONDS's default
WATCHLIST_RESERVE = 5  # WATCHLIST_RESERVE's default


class FakeClock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class CountingUpstream:
    """Stands in for AlphaVantageClient: an empty series for every symbol, calls counted.
    A series's `last_refreshed` says when it was fetched, by `clock`."""

    def __init__(self, clock: FakeClock) -> None:
        self.calls = 0
        self._clock = clock

    async def daily(self, symbol: str) -> DailySeries:
        self.calls += 1
        fetched_at = repr(self._clock.now)
        for _ in range(3):  # an upstream latency: other requests of this second run meanwhile
            await yield_once()
        return DailySeries(symbol=symbol, last_refreshed=fetched_at, time_zone="", prices=())

    async def quote(self, symbol: str) -> Quote:
        raise NotImplementedError


@dataclass(frozen=True)
class Config:
    name: str
    ttl: float  # CACHE_TTL_SECONDS; 0: every request is a miss (coalescing still applies)
    rate: float  # UPSTREAM_RATE_PER_SECOND; 0: no pacing
    quota: int  # UPSTREAM_DAILY_QUOTA; 0: no quota
    market: bool = False  # CACHE_FRESHNESS=market, on a free key; else fixed
    watchlist: int = 0  # WATCHLIST: this many of the most popular symbols


CONFIGS = (
    Config("no cache, no limits", ttl=0, rate=0, quota=0),
    Config("cache 5 min (the default), no limits", ttl=300, rate=0, quota=0),
    Config("cache 1 h, no limits", ttl=3600, rate=0, quota=0),
    Config("cache 5 min, pacing 1/s, quota 25 (the defaults)", ttl=300, rate=1, quota=25),
    Config("cache 1 h, pacing 1/s, quota 25", ttl=3600, rate=1, quota=25),
    Config("cache 24 h, pacing 1/s, quota 25", ttl=86400, rate=1, quota=25),
)


WEEK_CONFIGS = (
    Config("fixed 5 min, pacing 1/s, quota 25", ttl=300, rate=1, quota=25),
    Config("fixed 24 h, pacing 1/s, quota 25", ttl=86400, rate=1, quota=25),
    Config("market freshness (the default)", ttl=300, rate=1, quota=25, market=True),
    Config(
        "market freshness + watchlist of the top 25",
        ttl=300,
        rate=1,
        quota=25,
        market=True,
        watchlist=25,
    ),
)
HOURS = MarketHours()  # every run reads the same sessions: built once


yield_once = functools.partial(asyncio.sleep, 0)  # the real sleep, before it is patched


async def no_sleep(seconds: float) -> None:
    await yield_once()


def build_replica(
    config: Config, state: MemoryState, clock: FakeClock, upstream: CountingUpstream
) -> tuple[StockService, UpstreamLimits]:
    """One replica: its own cache, breaker and bulkhead, the store shared with the others."""
    breaker = CircuitBreaker("bench", is_failure=is_upstream_failure, clock=clock)
    lane = Lane(breaker, Bulkhead("bench", 4))
    limits = UpstreamLimits(
        state,
        key="bench",
        pacing=(config.rate, 1) if config.rate else None,
        quota=(config.quota, DAY) if config.quota else None,
        max_wait=2.0,
        clock=clock,
    )
    cache: TTLCache[Key, Value] = TTLCache(
        ttl=config.ttl, stale=86400, max_entries=10_000, clock=clock
    )
    freshness = market_freshness(clock) if config.market else None
    service = StockService(
        upstream,  # type: ignore[arg-type]
        dict.fromkeys(alphavantage.FUNCTIONS, lane),
        limits,
        cache,
        SharedCache(state, namespace="bench", ttl=config.ttl, stale=86400, lease_seconds=12),
        Metrics(alphavantage.FUNCTIONS, ()),
        ConsumerLimits(state),
        freshness=freshness,
    )
    return service, limits


def latest_bar(now: float) -> float:
    """When the newest daily bar Alpha Vantage had at `now` was published (US symbols)."""
    sessions = HOURS.wait_for_sessions(US, now)
    close = None if sessions is None else sessions.close_before(now - SETTLE)
    assert close is not None, "the week lies within the calendar"
    return close + SETTLE


def market_freshness(clock: FakeClock) -> MarketFreshness:
    # Built before the run, as a server's is soon after it starts: until then, the fixed TTL.
    HOURS.wait_for_sessions(US, clock.now)
    return MarketFreshness(HOURS, settle=SETTLE, plan="free", clock=clock)


async def run(
    config: Config,
    seconds: int,
    replicas: int,
    rate: int = REQUESTS_PER_SECOND,
    start: float = 0.0,
) -> tuple[int, Counter[str]]:
    """The calls and answers of `seconds` from `start`, `rate` requests a second spread over
    `replicas` replicas that share one store (as on Redis)."""
    clock = FakeClock(start)
    upstream = CountingUpstream(clock)
    state = MemoryState(clock)
    built = [build_replica(config, state, clock, upstream) for _ in range(replicas)]
    services = [service for service, _ in built]
    rng = random.Random(SEED)
    symbols = [f"S{rank:03d}" for rank in range(1, SYMBOLS + 1)]
    watchlist = None
    if config.watchlist:
        watchlist = Watchlist(
            symbols[: config.watchlist],
            services[0],
            built[0][1],
            state,
            key="bench",
            next_bar=market_freshness(clock).next_bar,
            reserve=WATCHLIST_RESERVE,
            plan="free",
            lease_seconds=30,
            clock=clock,
        )
    next_look = start
    weights = [1 / rank**ZIPF_S for rank in range(1, SYMBOLS + 1)]
    answers: Counter[str] = Counter()

    async def ask(service: StockService, symbol: str) -> None:
        try:
            served = await service.daily(symbol)
        except (UpstreamError, CircuitOpenError):
            answers["503"] += 1
        else:
            answers[served.source] += 1
            if start and float(served.value.last_refreshed) >= latest_bar(clock.now):
                answers["current"] += 1

    for second in range(seconds):
        clock.now = start + second
        if watchlist is not None and clock.now >= next_look:
            next_look = clock.now + await watchlist.refresh_due()
        batch = rng.choices(symbols, weights, k=rate)
        await asyncio.gather(
            *(ask(services[n % replicas], symbol) for n, symbol in enumerate(batch))
        )
    for service in services:
        await service.aclose()
    return upstream.calls, answers


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (24)")
    parser.add_argument("--days", type=float, default=7.0, help="simulated week's days (7)")
    args = parser.parse_args()
    seconds = int(args.hours * 3600)
    requests = seconds * REQUESTS_PER_SECOND
    print(
        f"make bench-quota: {requests:,} requests over {args.hours:g} simulated hours "
        f"({REQUESTS_PER_SECOND}/s, {SYMBOLS} symbols, Zipf s={ZIPF_S:g}), Python "
        f"{sys.version.split()[0]}\n"
    )
    header = (
        f"{'configuration':50} {'replicas':>8} {'upstream calls':>14} {'fresh':>7} "
        f"{'stale':>7} {'503':>7}"
    )
    print(header)
    print("-" * len(header))
    # Pacing sleeps on the event loop's clock, not the fake one: count the wait, skip it.
    # So do waits for another replica's flight (polls of the shared tier).
    runs = [(config, 1) for config in CONFIGS] + [(config, 3) for config in CONFIGS[3:5]]
    with (
        mock.patch("app.limits._upstream.asyncio.sleep", no_sleep),
        mock.patch("app.shared_cache.asyncio.sleep", no_sleep),
    ):
        for config, replicas in runs:
            started = time.perf_counter()
            calls, answers = await run(config, seconds, replicas)
            fresh = answers["cache"] + answers["upstream"]
            print(
                f"{config.name:50} {replicas:>8} {calls:>14,} {fresh / requests:>7.1%} "
                f"{answers['stale'] / requests:>7.1%} {answers['503'] / requests:>7.1%}"
                f"   ({time.perf_counter() - started:.0f} s)"
            )
        await a_week(args.days)


async def a_week(days: float) -> None:
    seconds = int(days * DAY)
    requests = seconds * WEEK_REQUESTS_PER_SECOND
    print(
        f"\nA free key over a trading week: {requests:,} requests over {days:g} simulated days "
        f"from Monday ({WEEK_REQUESTS_PER_SECOND}/s, the same symbols), 1 replica\n"
    )
    # current: answered with the newest bar Alpha Vantage had (fresh or stale, the copy's
    # own TTL aside): what "fresh" promises, and what a long fixed TTL fails to keep.
    header = (
        f"{'configuration':50} {'calls a day':>11} {'fresh':>7} {'stale':>7} {'503':>7} "
        f"{'current':>8}"
    )
    print(header)
    print("-" * len(header))
    for config in WEEK_CONFIGS:
        started = time.perf_counter()
        calls, answers = await run(
            config, seconds, 1, rate=WEEK_REQUESTS_PER_SECOND, start=WEEK_START
        )
        fresh = answers["cache"] + answers["upstream"]
        print(
            f"{config.name:50} {calls / days:>11.1f} {fresh / requests:>7.1%} "
            f"{answers['stale'] / requests:>7.1%} {answers['503'] / requests:>7.1%} "
            f"{answers['current'] / requests:>8.1%}"
            f"   ({time.perf_counter() - started:.0f} s)"
        )


if __name__ == "__main__":
    asyncio.run(main())
