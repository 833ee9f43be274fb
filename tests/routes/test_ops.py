"""GET /healthz, /readyz and /metrics (app/routes/ops.py), against the in-process simulator."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.conftest import ADMIN, SECRETS
from tests.helpers import (
    BREAKER_STATE,
    CACHE_REQUESTS,
    REJECTED_CALLS,
    UPSTREAM_CALLS,
    SimulatorControl,
    check_every_response,
    error_detail,
    scrape,
    trip,
)

# -- health ----------------------------------------------------------------------------------------


class TestHealth:
    async def test_healthz_and_readyz_while_running(self, api: httpx.AsyncClient) -> None:
        healthz = await api.get("/healthz")
        assert healthz.status_code == 200
        assert healthz.json() == {"status": "ok", "state_store": "up"}
        readyz = await api.get("/readyz")
        assert readyz.status_code == 200
        assert readyz.json() == {"status": "ready"}

    async def test_both_stay_200_while_the_breaker_is_open(self, api: httpx.AsyncClient) -> None:
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        assert (await api.get("/healthz")).status_code == 200
        assert (await api.get("/readyz")).status_code == 200

    async def test_readyz_is_503_after_shutdown(self, app: FastAPI) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as api:
            check_every_response(api, SECRETS)
            async with app.router.lifespan_context(app):
                assert (await api.get("/readyz")).status_code == 200
            assert error_detail(await api.get("/readyz"), 503) == "not ready"
            assert (await api.get("/healthz")).status_code == 200


# -- metrics ---------------------------------------------------------------------------------------


class TestMetrics:
    async def test_content_type_is_text_plain(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")

    async def test_known_series_exist_before_any_traffic(self, api: httpx.AsyncClient) -> None:
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker="alphavantage") == 0.0
        assert metrics.value(REJECTED_CALLS, breaker="alphavantage") == 0.0
        for old, new in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]:
            assert metrics.state_changes(old, new) == 0.0
        for function in ("TIME_SERIES_DAILY", "GLOBAL_QUOTE"):
            for outcome in ("success", "timeout", "rate_limited", "unknown_symbol"):
                assert metrics.value(UPSTREAM_CALLS, function=function, outcome=outcome) == 0.0
            for result in ("hit", "miss", "stale"):
                assert metrics.value(CACHE_REQUESTS, function=function, result=result) == 0.0

    async def test_state_gauge_follows_force_open_and_reset(self, api: httpx.AsyncClient) -> None:
        assert (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage") == 0.0
        await api.post("/circuit-breaker/open", headers=ADMIN)
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker="alphavantage") == 1.0
        assert metrics.state_changes("closed", "open") == 1.0
        await api.post("/circuit-breaker/reset", headers=ADMIN)
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker="alphavantage") == 0.0
        assert metrics.state_changes("open", "closed") == 1.0

    async def test_a_trip_counts_one_state_change_and_each_rejection(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        for _ in range(3):
            await api.get("/stock/REJECTED")
        metrics = await scrape(api)
        assert metrics.state_changes("closed", "open") == 1.0
        assert metrics.value(REJECTED_CALLS, breaker="alphavantage") == 3.0
        assert (
            metrics.value(UPSTREAM_CALLS, function="TIME_SERIES_DAILY", outcome="bad_response")
            == 5.0
        )

    async def test_upstream_calls_and_cache_lookups_are_counted(
        self, api: httpx.AsyncClient
    ) -> None:
        await api.get("/stock/IBM")
        await api.get("/stock/IBM", params={"days": 3})
        await api.get("/stock/IBM/quote")
        metrics = await scrape(api)
        assert metrics.value(UPSTREAM_CALLS, function="TIME_SERIES_DAILY", outcome="success") == 1.0
        assert metrics.value(UPSTREAM_CALLS, function="GLOBAL_QUOTE", outcome="success") == 1.0
        assert metrics.value(CACHE_REQUESTS, function="TIME_SERIES_DAILY", result="miss") == 1.0
        assert metrics.value(CACHE_REQUESTS, function="TIME_SERIES_DAILY", result="hit") == 1.0
        assert metrics.value(CACHE_REQUESTS, function="TIME_SERIES_DAILY", result="stale") == 0.0
        assert metrics.value(CACHE_REQUESTS, function="GLOBAL_QUOTE", result="miss") == 1.0
