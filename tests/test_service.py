"""The stock service (app/service.py): through the API against the in-process simulator (the
cache, stale copies while Alpha Vantage fails, coalescing of concurrent misses), and on its
own, with no app and no Prometheus registry (its events go to a recorder)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from app.errors import Throttled, UnknownSymbol
from app.limits import DAY
from app.service import SEARCH_TTL, Served, StockService
from app.settings import Settings
from app.simulator import FaultMode
from app.state import MemoryState
from tests.conftest import ADMIN, FakeClock, make_settings
from tests.helpers import (
    CACHE_REQUESTS,
    DAILY,
    ENDPOINTS,
    REJECTED_CALLS,
    SimulatorControl,
    assert_prices,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
    trip,
)
from tests.stock_service import TTL, RecordedEvents, shared_cache, stock_service

# -- cache -----------------------------------------------------------------------------------------


class TestCache:
    @ENDPOINTS
    async def test_second_request_is_served_from_cache(
        self, api: httpx.AsyncClient, sim: SimulatorControl, endpoint: str
    ) -> None:
        first = await api.get(endpoint.format("IBM"))
        second = await api.get(endpoint.format("IBM"))
        assert first.json()["source"] == "upstream"
        assert second.json()["source"] == "cache"
        assert {**first.json(), "source": "cache"} == second.json()
        assert await sim.total_calls() == 1

    async def test_any_days_is_served_from_one_cached_series(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        five = (await api.get("/stock/IBM", params={"days": 5})).json()
        hundred = (await api.get("/stock/IBM", params={"days": 100})).json()
        one = (await api.get("/stock/IBM", params={"days": 1})).json()
        assert [five["source"], hundred["source"], one["source"]] == ["upstream", "cache", "cache"]
        assert_prices(hundred["prices"], 100)
        assert hundred["prices"][:5] == five["prices"]
        assert hundred["prices"][:1] == one["prices"]
        assert await sim.total_calls() == 1

    async def test_daily_and_quote_are_cached_apart(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/IBM")).json()["source"] == "upstream"
        quote_response = await api.get("/stock/IBM/quote")
        assert quote_response.status_code == 200
        assert quote_response.json()["source"] == "upstream"
        assert await sim.calls() == {"TIME_SERIES_DAILY": 1, "GLOBAL_QUOTE": 1}

    async def test_failures_are_not_cached(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.HTTP_500)
        error_detail(await api.get("/stock/IBM"), 502)
        await sim.set_fault(FaultMode.HEALTHY)
        response = await api.get("/stock/IBM")
        assert response.status_code == 200
        assert response.json()["source"] == "upstream"


# -- stale serving ---------------------------------------------------------------------------------


class TestStaleServing:
    """Every cache entry is expired at once (a fixed TTL of 0) but kept an hour for degraded
    serving."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(cache_ttl_seconds=0, cache_stale_seconds=3600)

    async def test_expired_copy_is_refetched_while_upstream_is_healthy(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/IBM")).json()["source"] == "upstream"
        assert (await api.get("/stock/IBM")).json()["source"] == "upstream"
        assert await sim.total_calls() == 2

    @pytest.mark.parametrize(
        "mode", ["http_500", "down", "bad_json", "rate_limited", "invalid_key", "premium"]
    )
    @ENDPOINTS
    async def test_expired_copy_is_served_stale_when_upstream_fails(
        self, api: httpx.AsyncClient, sim: SimulatorControl, endpoint: str, mode: str
    ) -> None:
        fresh = (await api.get(endpoint.format("IBM"))).json()
        assert fresh["source"] == "upstream"
        await sim.set_fault(FaultMode(mode))
        response = await api.get(endpoint.format("IBM"))
        assert response.status_code == 200, response.text
        assert response.json() == {**fresh, "source": "stale"}
        assert await sim.total_calls() == 2  # it did try upstream first
        function = "TIME_SERIES_DAILY" if endpoint == DAILY else "GLOBAL_QUOTE"
        assert (await scrape(api)).value(CACHE_REQUESTS, function=function, result="stale") == 1.0

    async def test_stale_copy_is_served_while_the_breaker_is_forced_open(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/IBM", params={"days": 3})).status_code == 200
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        response = await api.get("/stock/IBM", params={"days": 7})
        assert response.status_code == 200
        assert response.json()["source"] == "stale"
        assert_prices(response.json()["prices"], 7)
        assert await sim.total_calls() == 1

    async def test_stale_copy_is_served_after_the_breaker_trips(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/IBM")).status_code == 200
        await trip(api, sim)
        assert (await breaker_status(api))["state"] == "open"
        response = await api.get("/stock/IBM")
        assert response.status_code == 200
        assert response.json()["source"] == "stale"
        assert await sim.total_calls() == 6
        assert (await scrape(api)).value(REJECTED_CALLS, breaker="alphavantage") == 1.0

    async def test_symbol_never_fetched_gets_an_error_not_a_stale_copy(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/IBM")).status_code == 200
        await sim.set_fault(FaultMode.HTTP_500)
        error_detail(await api.get("/stock/MSFT"), 502)
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        response = await api.get("/stock/MSFT")
        error_detail(response, 503)
        retry_after(response)
        # IBM's copy is only for IBM, and only for the daily series.
        error_detail(await api.get("/stock/IBM/quote"), 503)


# -- coalescing ------------------------------------------------------------------------------------


class TestCoalescing:
    async def test_concurrent_requests_share_one_upstream_call(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.SLOW, delay_seconds=0.2)
        days = [n % 100 + 1 for n in range(50)]
        responses = await asyncio.gather(
            *(api.get("/stock/MSFT", params={"days": d}) for d in days)
        )
        assert [response.status_code for response in responses] == [200] * 50
        assert await sim.total_calls() == 1
        bodies = [response.json() for response in responses]
        assert {body["source"] for body in bodies} <= {"upstream", "cache"}
        assert [len(body["prices"]) for body in bodies] == days
        longest = max(bodies, key=lambda body: len(body["prices"]))["prices"]
        assert all(body["prices"] == longest[: len(body["prices"])] for body in bodies)

    async def test_concurrent_requests_for_distinct_symbols_are_not_merged(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.SLOW, delay_seconds=0.1)
        symbols = ["AAA", "BBB", "CCC", "DDD", "EEE"] * 10
        responses = await asyncio.gather(*(api.get(f"/stock/{s}") for s in symbols))
        assert [response.json()["symbol"] for response in responses] == symbols
        assert await sim.total_calls() == 5


# -- on its own --------------------------------------------------------------------------------


@pytest.fixture
def events() -> RecordedEvents:
    return RecordedEvents()


@pytest.fixture
async def service(events: RecordedEvents) -> AsyncIterator[StockService]:
    async with stock_service(events, FakeClock(), quota=(1, DAY)) as built:
        yield built


async def test_a_miss_then_a_hit_report_their_events(
    service: StockService, events: RecordedEvents
) -> None:
    served = await service.daily("IBM")
    assert (served.value.symbol, served.source) == ("IBM", "upstream")
    assert (await service.daily("IBM")).source == "cache"
    assert events.events == [
        ("cache", "TIME_SERIES_DAILY", "miss"),
        ("charged", "anonymous"),  # no consumer is configured
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


async def test_a_search_stays_fresh_a_day(events: RecordedEvents) -> None:
    clock = FakeClock()
    async with stock_service(events, clock) as service:
        assert (await service.search("tesco")).source == "upstream"
        clock.advance(TTL * 10)  # long past the caches' own TTL
        assert (await service.search("tesco")).source == "cache"
        clock.advance(SEARCH_TTL)
        assert (await service.search("tesco")).source == "upstream"


async def test_bulk_quotes_make_one_call_counted_and_charged_once(events: RecordedEvents) -> None:
    async with stock_service(events, FakeClock(), quota=(1, DAY), bulk_quotes=True) as service:
        found = await service.quotes(["IBM", "MSFT", "ZZNOPE"])
        assert isinstance(found["ZZNOPE"], UnknownSymbol)
        for symbol in ("IBM", "MSFT"):
            outcome = found[symbol]
            assert isinstance(outcome, Served)
            assert outcome.source == "upstream"
        assert sorted(events.events) == sorted(
            [("cache", "GLOBAL_QUOTE", "miss")] * 3
            + [("charged", "anonymous"), ("upstream", "REALTIME_BULK_QUOTES", "success")]
        )
        assert (await service.quote("MSFT")).source == "cache"  # within the quota of one


async def test_a_bulk_call_does_not_wait_for_a_symbol_another_process_is_fetching(
    events: RecordedEvents,
) -> None:
    """Waiting for it could wait for ever: that process's flights may be waiting on this one's
    (two /quotes with the same symbols in another order)."""
    clock = FakeClock()
    state = MemoryState(clock)
    other_process = shared_cache(state)
    assert await other_process.lease("GLOBAL_QUOTE:YYY")
    async with stock_service(events, clock, bulk_quotes=True, state=state, max_wait=5) as service:
        asked = asyncio.ensure_future(service.quotes(["XXX", "YYY"]))
        while ("upstream", "REALTIME_BULK_QUOTES", "success") not in events.events:
            assert not asked.done()
            await asyncio.sleep(0.01)  # the bulk call for XXX goes out while YYY is leased
        landed = (await service.quote("XXX")).value.model_copy(update={"symbol": "YYY"})
        await other_process.put("GLOBAL_QUOTE:YYY", landed.model_dump(mode="json"))
        await other_process.release("GLOBAL_QUOTE:YYY")
        found = await asyncio.wait_for(asked, timeout=5)
    sources = [
        outcome.source if isinstance(outcome, Served) else outcome for outcome in found.values()
    ]
    assert sources == ["upstream", "cache"]
    assert [e for e in events.events if e[0] == "upstream"] == [
        ("upstream", "REALTIME_BULK_QUOTES", "success")
    ]


async def test_every_answer_says_how_old_and_how_fresh_it_is() -> None:
    clock, events = FakeClock(), RecordedEvents()
    async with stock_service(events, clock, quota=(1, DAY)) as service:
        fetched = await service.daily("IBM")
        assert (fetched.source, fetched.age, fetched.ttl) == ("upstream", 0, TTL)
        clock.advance(20)
        hit = await service.daily("IBM")
        assert (hit.value, hit.source, hit.age, hit.ttl) == (fetched.value, "cache", 20, TTL)
        assert hit.stale_because is None
        assert service.fresh_copy("TIME_SERIES_DAILY", "IBM", of=hit.value) == hit
        assert service.fresh_copy("TIME_SERIES_DAILY", "IBM", of=object()) is None
        clock.advance(TTL)  # expired; the quota of one is spent, so the copy stands in
        stale = await service.daily("IBM")
        assert (stale.value, stale.source, stale.age, stale.ttl) == (
            fetched.value,
            "stale",
            20 + TTL,
            TTL,
        )
        assert stale.stale_because == "quota"
        assert service.fresh_copy("TIME_SERIES_DAILY", "IBM", of=stale.value) is None
    hits = events.events.count(("cache", "TIME_SERIES_DAILY", "hit"))
    assert hits == 2  # the hit and the fresh copy the fast path would serve
