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
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

# `python bench/quota_workload.py` puts bench/ first on the path, not the project's root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import alphavantage
from app.breaker import CircuitBreaker, CircuitOpenError
from app.cache import TTLCache
from app.consumers import ConsumerLimits
from app.errors import UpstreamError, is_upstream_failure
from app.limits import DAY, Bulkhead, UpstreamLimits
from app.metrics import Metrics
from app.models import DailySeries, Quote
from app.service import Key, Lane, StockService, Value
from app.shared_cache import SharedCache
from app.state import MemoryState

SYMBOLS = 100
ZIPF_S = 1.0
REQUESTS_PER_SECOND = 10
SEED = 20261126


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingUpstream:
    """Stands in for AlphaVantageClient: an empty series for every symbol, calls counted."""

    def __init__(self) -> None:
        self.calls = 0

    async def daily(self, symbol: str) -> DailySeries:
        self.calls += 1
        for _ in range(3):  # an upstream latency: other requests of this second run meanwhile
            await yield_once()
        return DailySeries(symbol=symbol, last_refreshed="", time_zone="", prices=())

    async def quote(self, symbol: str) -> Quote:
        raise NotImplementedError


@dataclass(frozen=True)
class Config:
    name: str
    ttl: float  # CACHE_TTL_SECONDS; 0: every request is a miss (coalescing still applies)
    rate: float  # UPSTREAM_RATE_PER_SECOND; 0: no pacing
    quota: int  # UPSTREAM_DAILY_QUOTA; 0: no quota


CONFIGS = (
    Config("no cache, no limits", ttl=0, rate=0, quota=0),
    Config("cache 5 min (the default), no limits", ttl=300, rate=0, quota=0),
    Config("cache 1 h, no limits", ttl=3600, rate=0, quota=0),
    Config("cache 5 min, pacing 1/s, quota 25 (the defaults)", ttl=300, rate=1, quota=25),
    Config("cache 1 h, pacing 1/s, quota 25", ttl=3600, rate=1, quota=25),
    Config("cache 24 h, pacing 1/s, quota 25", ttl=86400, rate=1, quota=25),
)


yield_once = functools.partial(asyncio.sleep, 0)  # the real sleep, before it is patched


async def no_sleep(seconds: float) -> None:
    await yield_once()


def build_replica(
    config: Config, state: MemoryState, clock: FakeClock, upstream: CountingUpstream
) -> StockService:
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
    return StockService(
        upstream,  # type: ignore[arg-type]
        dict.fromkeys(alphavantage.FUNCTIONS, lane),
        limits,
        cache,
        SharedCache(state, namespace="bench", ttl=config.ttl, stale=86400, lease_seconds=12),
        Metrics(alphavantage.FUNCTIONS, ()),
        ConsumerLimits(state),
    )


async def run(config: Config, seconds: int, replicas: int) -> tuple[int, Counter[str]]:
    """The day's calls and answers, the requests spread over `replicas` replicas that share
    one store (as on Redis)."""
    clock = FakeClock()
    upstream = CountingUpstream()
    state = MemoryState(clock)
    services = [build_replica(config, state, clock, upstream) for _ in range(replicas)]
    rng = random.Random(SEED)
    symbols = [f"S{rank:03d}" for rank in range(1, SYMBOLS + 1)]
    weights = [1 / rank**ZIPF_S for rank in range(1, SYMBOLS + 1)]
    answers: Counter[str] = Counter()

    async def ask(service: StockService, symbol: str) -> None:
        try:
            source = (await service.daily(symbol)).source
        except (UpstreamError, CircuitOpenError):
            answers["503"] += 1
        else:
            answers[source] += 1

    for second in range(seconds):
        clock.now = float(second)
        batch = rng.choices(symbols, weights, k=REQUESTS_PER_SECOND)
        await asyncio.gather(
            *(ask(services[n % replicas], symbol) for n, symbol in enumerate(batch))
        )
    for service in services:
        await service.aclose()
    return upstream.calls, answers


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0, help="simulated hours (24)")
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


if __name__ == "__main__":
    asyncio.run(main())
