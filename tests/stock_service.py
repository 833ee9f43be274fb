"""A StockService built from its parts over the in-process simulator, with no app and no
Prometheus registry, and a recorder of the events it reports (app.service.ServiceEvents)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from pydantic import SecretStr
from starlette.applications import Starlette

from app.alphavantage import FUNCTIONS, AlphaVantageClient
from app.breaker import CircuitBreaker
from app.cache import TTLCache
from app.consumers import ConsumerLimits
from app.errors import is_upstream_failure
from app.freshness import Freshness
from app.limits import Bulkhead, UpstreamLimits
from app.passthrough import PASSTHROUGH
from app.service import Key, Lane, StockService, Value
from app.shared_cache import SharedCache
from app.simulator import create_simulator
from app.state import MemoryState
from tests.conftest import FakeClock

TTL, STALE = 60, 3600  # seconds answers stay fresh, then stale, in both cache tiers


@dataclass
class RecordedEvents:
    events: list[tuple[str, ...]] = field(default_factory=list)

    def count_cache(self, function: str, result: str) -> None:
        self.events.append(("cache", function, result))

    def count_throttled(self, reason: str) -> None:
        self.events.append(("throttled", reason))

    def observe_upstream(self, function: str, outcome: str, seconds: float) -> None:
        self.events.append(("upstream", function, outcome))

    def count_consumer_call(self, consumer: str) -> None:
        self.events.append(("charged", consumer))

    def count_consumer_throttled(self, consumer: str, reason: str) -> None:
        self.events.append(("consumer throttled", consumer, reason))


@asynccontextmanager
async def stock_service(
    events: RecordedEvents,
    clock: FakeClock,
    *,
    quota: tuple[int, float] | None = None,
    passthrough_ttls: Mapping[str, float] | None = None,
    bulk_quotes: bool = False,
    freshness: Freshness | None = None,
    state: MemoryState | None = None,
    max_wait: float = 0,
    simulator: Starlette | None = None,
) -> AsyncIterator[StockService]:
    """One lane for every function, one memory store read on `clock` (or `state`, which
    another "process" may share), no pacing; its quota is kept under the key "k". Upstream is
    `simulator`, whose faults a test may set, or a simulator of its own."""
    transport = httpx.ASGITransport(app=simulator or create_simulator())
    async with httpx.AsyncClient(transport=transport) as http:
        client = AlphaVantageClient(
            http, api_key=SecretStr("k"), base_url="http://simulator/query", timeout=5
        )
        lane = Lane(CircuitBreaker("test", is_failure=is_upstream_failure), Bulkhead("test", 4))
        state = state or MemoryState(clock)
        limits = UpstreamLimits(
            state, key="k", pacing=None, quota=quota, max_wait=max_wait, clock=clock
        )
        cache: TTLCache[Key, Value] = TTLCache(ttl=TTL, stale=STALE, max_entries=100, clock=clock)
        shared = shared_cache(state)
        service = StockService(
            client,
            dict.fromkeys((*FUNCTIONS, PASSTHROUGH), lane),
            limits,
            cache,
            shared,
            events,
            ConsumerLimits(state),
            passthrough_ttls=passthrough_ttls,
            bulk_quotes=bulk_quotes,
            freshness=freshness,
        )
        try:
            yield service
        finally:
            await service.aclose()


def shared_cache(state: MemoryState) -> SharedCache:
    """The shared tier over `state`, as a service of stock_service() has it: another one is
    another process's."""
    return SharedCache(state, namespace="k", ttl=TTL, stale=STALE, lease_seconds=5)
