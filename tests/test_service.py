"""StockService on its own: no app, no Prometheus registry; its events go to a recorder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from pydantic import SecretStr

from app import alphavantage
from app.alphavantage import AlphaVantageClient
from app.breaker import CircuitBreaker
from app.cache import TTLCache
from app.errors import Throttled, is_upstream_failure
from app.limits import DAY, Bulkhead, UpstreamLimits
from app.models import DailySeries, Quote
from app.service import Lane, ServiceEvents, StockService
from app.shared_cache import SharedCache
from app.simulator import create_simulator
from app.state import MemoryState
from tests.conftest import FakeClock


@dataclass
class RecordedEvents:
    events: list[tuple[str, ...]] = field(default_factory=list)

    def count_cache(self, function: str, result: str) -> None:
        self.events.append(("cache", function, result))

    def count_throttled(self, reason: str) -> None:
        self.events.append(("throttled", reason))

    def observe_upstream(self, function: str, outcome: str, seconds: float) -> None:
        self.events.append(("upstream", function, outcome))


@pytest.fixture
def events() -> RecordedEvents:
    return RecordedEvents()


@pytest.fixture
async def service(events: RecordedEvents) -> AsyncIterator[StockService]:
    clock = FakeClock()
    recorder: ServiceEvents = events
    transport = httpx.ASGITransport(app=create_simulator())
    async with httpx.AsyncClient(transport=transport) as http:
        client = AlphaVantageClient(
            http, api_key=SecretStr("k"), base_url="http://simulator/query", timeout=5
        )
        lane = Lane(CircuitBreaker("test", is_failure=is_upstream_failure), Bulkhead("test", 4))
        state = MemoryState(clock)
        limits = UpstreamLimits(
            state, key="k", pacing=None, quota=(1, DAY), max_wait=0, clock=clock
        )
        cache: TTLCache[tuple[str, str], DailySeries | Quote] = TTLCache(
            ttl=60, stale=3600, max_entries=100, clock=clock
        )
        lanes = dict.fromkeys(alphavantage.FUNCTIONS, lane)
        shared = SharedCache(state, namespace="k", ttl=60, stale=3600, lease_seconds=5)
        stock = StockService(client, lanes, limits, cache, shared, recorder)
        yield stock
        await stock.aclose()


async def test_a_miss_then_a_hit_report_their_events(
    service: StockService, events: RecordedEvents
) -> None:
    series, source = await service.daily("IBM")
    assert (series.symbol, source) == ("IBM", "upstream")
    assert (await service.daily("IBM"))[1] == "cache"
    assert events.events == [
        ("cache", "TIME_SERIES_DAILY", "miss"),
        ("upstream", "TIME_SERIES_DAILY", "success"),
        ("cache", "TIME_SERIES_DAILY", "hit"),
    ]


async def test_a_call_held_back_is_reported_and_worded_for_the_client(
    service: StockService, events: RecordedEvents
) -> None:
    await service.quote("IBM")  # spends the quota of one
    with pytest.raises(Throttled) as caught:
        await service.quote("MSFT")
    assert caught.value.detail == (
        "Alpha Vantage call held back: the daily quota of 1 calls is spent"
    )
    assert events.events[-2:] == [("cache", "GLOBAL_QUOTE", "miss"), ("throttled", "quota")]
