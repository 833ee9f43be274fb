"""Pacing, the daily quota, the bulkhead, per-function breakers and the adaptive breaker,
through the HTTP API against the in-process simulator (tests/test_limits.py and
tests/test_breaker.py test the policies themselves on a fake clock)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import ADMIN, make_settings
from tests.helpers import (
    BREAKER_STATE,
    THROTTLED_CALLS,
    SimulatorControl,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
    trip,
    upstream_status,
)

QUOTA_REMAINING = "stock_api_upstream_quota_remaining"
QUOTA_LIMIT = "stock_api_upstream_quota_limit"
DAILY_BREAKER = "alphavantage_time_series_daily"
QUOTE_BREAKER = "alphavantage_global_quote"
DAY = dt.timedelta(days=1)


def in_a_day(value: object) -> bool:
    """An ISO 8601 UTC instant just under 24 hours from now."""
    assert isinstance(value, str)
    moment = dt.datetime.fromisoformat(value)
    assert moment.utcoffset() == dt.timedelta(0)
    return dt.timedelta(hours=23, minutes=59) < moment - dt.datetime.now(dt.UTC) <= DAY


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


class TestFunctionScope:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(breaker_scope="function")

    async def test_a_failing_function_opens_only_its_own_breaker(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.DOWN, function="GLOBAL_QUOTE")
        for n in range(5):
            error_detail(await api.get(f"/stock/FAIL{n}/quote"), 502)
        error_detail(await api.get("/stock/IBM/quote"), 503)  # its breaker is open
        assert (await api.get("/stock/IBM")).status_code == 200  # the daily series is not

        status = await breaker_status(api)
        assert (status["name"], status["state"]) == (QUOTE_BREAKER, "open")  # the worst one
        states = {b["name"]: b["state"] for b in status["breakers"]}
        assert states == {DAILY_BREAKER: "closed", QUOTE_BREAKER: "open"}
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker=QUOTE_BREAKER) == 1.0
        assert metrics.value(BREAKER_STATE, breaker=DAILY_BREAKER) == 0.0

        bulkheads = (await upstream_status(api))["bulkheads"]
        assert isinstance(bulkheads, list)
        assert [b["name"] for b in bulkheads] == [DAILY_BREAKER, QUOTE_BREAKER]

    async def test_admin_actions_can_name_one_breaker(self, api: httpx.AsyncClient) -> None:
        response = await api.post(f"/circuit-breaker/open?breaker={DAILY_BREAKER}", headers=ADMIN)
        assert response.status_code == 200
        states = {b["name"]: b["state"] for b in response.json()["breakers"]}
        assert states == {DAILY_BREAKER: "open", QUOTE_BREAKER: "closed"}
        assert (await api.get("/stock/IBM/quote")).status_code == 200
        error_detail(await api.get("/stock/IBM"), 503)

        response = await api.post("/circuit-breaker/reset?breaker=nope", headers=ADMIN)
        assert "alphavantage_global_quote" in error_detail(response, 404)
        response = await api.post("/circuit-breaker/reset", headers=ADMIN)  # every breaker
        assert {b["state"] for b in response.json()["breakers"]} == {"closed"}


async def test_the_shared_scope_lists_its_one_breaker(api: httpx.AsyncClient) -> None:
    status = await breaker_status(api)
    [only] = status["breakers"]
    assert only == {key: value for key, value in status.items() if key != "breakers"}


class TestFailureRateMode:
    """Opens when half of the last 4 calls failed, once there are 4."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            breaker_mode="failure_rate",
            breaker_failure_rate_threshold=0.5,
            breaker_minimum_calls=4,
            breaker_window_size=4,
        )

    async def test_it_opens_on_the_rate_not_a_run(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        for symbol in ("IBM", "MSFT"):
            assert (await api.get(f"/stock/{symbol}")).status_code == 200
        await sim.set_fault(FaultMode.HTTP_500)
        error_detail(await api.get("/stock/FAIL1"), 502)
        status = await breaker_status(api)
        assert (status["mode"], status["state"], status["window_calls"]) == (
            "failure_rate",
            "closed",
            3,
        )
        assert status["failure_rate"] == pytest.approx(1 / 3)
        error_detail(await api.get("/stock/FAIL2"), 502)  # 2 of 4: open
        status = await breaker_status(api)
        assert status["state"] == "open"
        response = await api.get("/stock/FAIL3")
        assert "circuit breaker" in error_detail(response, 503)
        assert await sim.total_calls() == 4

    async def test_unknown_symbols_are_not_failures(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        for n in range(6):
            error_detail(await api.get(f"/stock/ZZ{n}"), 404)
        status = await breaker_status(api)
        assert (status["state"], status["window_calls"]) == ("closed", 0)


class TestBackoff:
    """Open for 50 ms at first; a failed probe re-opens it for 50 ms * 100 = 5 s."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            breaker_timeout_seconds=0.05,
            breaker_backoff_multiplier=100,
            breaker_backoff_jitter=0,
        )

    async def test_a_failed_probe_re_opens_for_longer_and_retry_after_says_so(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        assert (await breaker_status(api))["open_timeout_seconds"] == 0.05
        await asyncio.sleep(0.1)  # past the first opening: half-open
        error_detail(await api.get("/stock/PROBE"), 502)
        status = await breaker_status(api)
        assert (status["state"], status["reopens"]) == ("open", 1)
        assert status["open_timeout_seconds"] == 5
        assert 4 < status["retry_after_seconds"] <= 5
        response = await api.get("/stock/LATER")
        error_detail(response, 503)
        assert retry_after(response) == 5

        reset = await api.post("/circuit-breaker/reset", headers=ADMIN)
        assert reset.json()["reopens"] == 0
        await trip(api, sim)  # closing forgot the backoff: the first opening again
        assert (await breaker_status(api))["open_timeout_seconds"] == 0.05
