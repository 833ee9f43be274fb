"""Pacing, the daily quota, the pause after a rate limit and the bulkhead, as the stock routes
answer them and GET /upstream (app/routes/upstream.py) shows them, against the in-process
simulator (tests/test_limits.py tests the policies themselves on a fake clock)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import API_KEY, make_settings
from tests.helpers import (
    THROTTLED_CALLS,
    SimulatorControl,
    breaker_status,
    error_detail,
    refreshed_long_ago,
    retry_after,
    scrape,
    upstream_status,
)

QUOTA_REMAINING = "stock_api_upstream_quota_remaining"
QUOTA_LIMIT = "stock_api_upstream_quota_limit"
DAY = dt.timedelta(days=1)


def in_a_day(value: object) -> bool:
    """An ISO 8601 UTC instant just under 24 hours from now."""
    assert isinstance(value, str)
    moment = dt.datetime.fromisoformat(value)
    assert moment.utcoffset() == dt.timedelta(0)
    return dt.timedelta(hours=23, minutes=59) < moment - dt.datetime.now(dt.UTC) <= DAY


# -- pacing ----------------------------------------------------------------------------------------


class TestPacing:
    """One call now, then none for 1,000 s: every later miss is refused at once."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            upstream_rate_per_second=0.001,
            upstream_max_wait_seconds=0,
            cache_ttl_seconds=0,
            cache_stale_seconds=3600,
        )

    async def test_a_miss_beyond_the_pace_is_503_with_retry_after_and_never_sent(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/IBM")).status_code == 200
        response = await api.get("/stock/MSFT")
        assert "paced" in error_detail(response, 503)
        assert 900 <= retry_after(response) <= 1000
        assert await sim.total_calls() == 1
        assert (await scrape(api)).value(THROTTLED_CALLS, reason="pacing") == 1.0
        assert (await breaker_status(api))["state"] == "closed"  # never a failure of Alpha Vantage

    async def test_a_stale_copy_is_served_instead(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        fresh = (await api.get("/stock/IBM")).json()
        response = await api.get("/stock/IBM")  # expired (TTL 0): wants upstream, is paced
        assert response.status_code == 200
        assert response.json() == {**fresh, "source": "stale"}
        assert await sim.total_calls() == 1

    async def test_upstream_shows_the_bucket(self, api: httpx.AsyncClient) -> None:
        await api.get("/stock/IBM")
        status = await upstream_status(api)
        assert status["pacing"] == {"rate_per_second": 0.001, "burst": 1, "tokens": 0.0}
        assert status["max_wait_seconds"] == 0


# -- the daily quota and rate limits ---------------------------------------------------------------


class TestDailyQuota:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(upstream_daily_quota=2)

    async def test_the_spent_quota_refuses_with_the_time_it_frees_up(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        metrics = await scrape(api)
        assert (metrics.value(QUOTA_LIMIT), metrics.value(QUOTA_REMAINING)) == (2.0, 2.0)
        assert (await api.get("/stock/IBM")).status_code == 200
        assert (await api.get("/stock/IBM/quote")).status_code == 200
        response = await api.get("/stock/MSFT")
        assert "quota" in error_detail(response, 503)
        assert 86000 <= retry_after(response) <= 86400
        assert (await api.get("/stock/IBM")).status_code == 200  # the cache still answers
        assert await sim.total_calls() == 2

        metrics = await scrape(api)
        assert metrics.value(QUOTA_REMAINING) == 0.0
        assert metrics.value(THROTTLED_CALLS, reason="quota") == 1.0
        quota = (await upstream_status(api))["quota"]
        assert isinstance(quota, dict)
        assert (quota["limit"], quota["used"], quota["remaining"]) == (2, 2, 0)
        assert quota["window_seconds"] == 86400
        assert in_a_day(quota["next_refill_at"])
        assert quota["blocked_until"] is None

    async def test_a_per_day_answer_marks_the_quota_spent(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.RATE_LIMITED)  # "25 requests per day"
        error_detail(await api.get("/stock/IBM"), 503)
        await sim.set_fault(FaultMode.HEALTHY)
        response = await api.get("/stock/MSFT")
        assert "quota" in error_detail(response, 503)
        assert retry_after(response) > 86000
        assert await sim.total_calls() == 1  # it stopped asking
        quota = (await upstream_status(api))["quota"]
        assert isinstance(quota, dict)
        assert quota["remaining"] == 0
        assert in_a_day(quota["blocked_until"])


async def test_without_a_quota_a_per_day_answer_still_stops_calls_for_a_day(
    api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    """A key that says it is spent is spent, whatever this service counts."""
    await sim.set_fault(FaultMode.RATE_LIMITED)
    assert retry_after(await api.get("/stock/IBM")) > 86000
    await sim.set_fault(FaultMode.HEALTHY)
    response = await api.get("/stock/MSFT")
    assert "paused" in error_detail(response, 503)
    assert retry_after(response) > 86000
    assert await sim.total_calls() == 1
    status = await upstream_status(api)
    assert status["quota"] is None
    assert in_a_day(status["paused_until"])
    assert (await breaker_status(api))["state"] == "closed"


@pytest.mark.parametrize(("mode", "seconds"), [("burst_limited", 1), ("minute_limited", 60)])
async def test_a_short_rate_limit_pauses_calls_for_its_period_only(
    api: httpx.AsyncClient, sim: SimulatorControl, mode: str, seconds: int
) -> None:
    await sim.set_fault(FaultMode(mode))
    response = await api.get("/stock/IBM")
    assert "rate limit" in error_detail(response, 503)
    assert retry_after(response) == seconds
    status = await upstream_status(api)
    assert isinstance(status["paused_until"], str)
    paused_for = dt.datetime.fromisoformat(status["paused_until"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(0) < paused_for <= dt.timedelta(seconds=seconds)
    assert (await breaker_status(api))["state"] == "closed"
    assert (await breaker_status(api))["failure_count"] == 0


async def test_limits_off_show_as_null_and_export_no_quota(api: httpx.AsyncClient) -> None:
    status = await upstream_status(api)
    assert status["quota"] is None
    assert status["pacing"] is None
    assert status["bulkheads"] == [{"name": "alphavantage", "max_concurrency": 4, "in_flight": 0}]
    metrics = await scrape(api)
    assert "stock_api_upstream_quota" not in metrics.text
    assert metrics.value("stock_api_upstream_max_concurrency", bulkhead="alphavantage") == 4.0


# -- the bulkhead ----------------------------------------------------------------------------------


class TestBulkhead:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(upstream_max_concurrency=1, upstream_max_wait_seconds=0.05)

    async def test_calls_beyond_it_are_refused_after_a_short_wait(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.SLOW, delay_seconds=0.5)
        slow = asyncio.create_task(api.get("/stock/IBM"))
        busy = [{"name": "alphavantage", "max_concurrency": 1, "in_flight": 1}]
        for _ in range(200):  # until the slow call holds the one slot
            if (await upstream_status(api))["bulkheads"] == busy:
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the slow call never took the bulkhead's slot")
        response = await api.get("/stock/MSFT")
        assert "in flight" in error_detail(response, 503)
        assert retry_after(response) == 1
        assert (await slow).status_code == 200
        assert await sim.total_calls() == 1
        assert (await scrape(api)).value(THROTTLED_CALLS, reason="bulkhead") == 1.0


# -- the watchlist ---------------------------------------------------------------------------------


class TestWatchlist:
    @pytest.fixture
    async def settings(self, tmp_path: Path) -> Settings:
        state_url = f"sqlite:///{tmp_path}/state.db"
        await refreshed_long_ago(state_url, API_KEY, ["IBM", "TSCO.LON"])  # due at startup
        return make_settings(
            watchlist="ibm,TSCO.LON",
            cache_freshness="market",  # which a watchlist needs
            upstream_daily_quota=25,
            state_url=state_url,
        )

    async def test_upstream_shows_each_symbols_last_and_next_refresh(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        started = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
        for _ in range(100):  # the round starts with the app, and takes two calls
            watchlist = (await upstream_status(api))["watchlist"]
            lasts = [dt.datetime.fromisoformat(s["last_refresh"]) for s in watchlist["symbols"]]
            if all(last > started for last in lasts):
                break
            await asyncio.sleep(0.05)
        assert watchlist["functions"] == ["TIME_SERIES_DAILY"]  # a free key's
        assert watchlist["reserve"] == 5
        assert [s["symbol"] for s in watchlist["symbols"]] == ["IBM", "TSCO.LON"]
        now = dt.datetime.now(dt.UTC)
        for symbol in watchlist["symbols"]:
            last = dt.datetime.fromisoformat(symbol["last_refresh"])
            upcoming = dt.datetime.fromisoformat(symbol["next_refresh"])
            assert started < last <= now  # not ten days ago
            # After the next close: within the week, a long weekend included.
            assert now < upcoming < now + dt.timedelta(days=5)
        assert await sim.calls() == {"TIME_SERIES_DAILY": 2}
        assert (await upstream_status(api))["quota"]["used"] == 2


async def test_without_a_watchlist_upstream_shows_none(api: httpx.AsyncClient) -> None:
    assert (await upstream_status(api))["watchlist"] is None
