"""Every error answer: unknown symbols, each way Alpha Vantage fails, timeouts, unknown routes
and methods, each as its status and `{"detail"}` (app/errors.py, and the handlers in
app/main.py); and no answer of any kind shows the API key."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import ADMIN, SECRETS, make_settings
from tests.helpers import (
    DAILY,
    ENDPOINTS,
    QUOTE,
    UPSTREAM_CALLS,
    SimulatorControl,
    assert_clean,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
)

# -- unknown symbols -------------------------------------------------------------------------------


class TestUnknownSymbol:
    @ENDPOINTS
    async def test_unknown_symbol_is_404_naming_it(
        self, api: httpx.AsyncClient, endpoint: str
    ) -> None:
        detail = error_detail(await api.get(endpoint.format("zztop")), 404)
        assert "ZZTOP" in detail

    async def test_unknown_symbols_do_not_trip_the_breaker(self, api: httpx.AsyncClient) -> None:
        for n in range(10):
            endpoint = DAILY if n % 2 else QUOTE
            error_detail(await api.get(endpoint.format(f"ZZ{n}")), 404)
        status = await breaker_status(api)
        assert status["state"] == "closed"
        assert status["failure_count"] == 0
        assert status["last_failure_time"] is None
        assert (await api.get("/stock/IBM")).status_code == 200

    async def test_unknown_symbol_does_not_reset_the_failure_count(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.HTTP_500)
        for n in range(4):
            error_detail(await api.get(f"/stock/FAIL{n}"), 502)
        await sim.set_fault(FaultMode.HEALTHY)
        error_detail(await api.get("/stock/ZZTOP"), 404)
        assert (await breaker_status(api))["failure_count"] == 4
        await sim.set_fault(FaultMode.HTTP_500)
        error_detail(await api.get("/stock/FAIL4"), 502)
        assert (await breaker_status(api))["state"] == "open"

    async def test_unknown_symbol_is_counted_as_its_own_outcome(
        self, api: httpx.AsyncClient
    ) -> None:
        await api.get("/stock/ZZTOP")
        await api.get("/stock/ZZTOP/quote")
        metrics = await scrape(api)
        for function in ("TIME_SERIES_DAILY", "GLOBAL_QUOTE"):
            assert metrics.value(UPSTREAM_CALLS, function=function, outcome="unknown_symbol") == 1.0
            assert metrics.value(UPSTREAM_CALLS, function=function, outcome="success") == 0.0


# -- upstream faults -------------------------------------------------------------------------------


class TestUpstreamFaults:
    @pytest.mark.parametrize(
        ("mode", "status", "words", "outcome"),
        [
            ("rate_limited", 503, "rate limit", "rate_limited"),
            ("invalid_key", 502, "key", "refused"),
            ("premium", 502, "premium", "refused"),
            ("http_500", 502, "500", "bad_response"),
            ("down", 502, "503", "bad_response"),
            ("bad_json", 502, "not JSON", "bad_response"),
        ],
    )
    @ENDPOINTS
    async def test_fault_maps_to_an_error_answer(
        self,
        api: httpx.AsyncClient,
        sim: SimulatorControl,
        endpoint: str,
        mode: str,
        status: int,
        words: str,
        outcome: str,
    ) -> None:
        await sim.set_fault(FaultMode(mode))
        response = await api.get(endpoint.format("IBM"))
        detail = error_detail(response, status)
        assert words.lower() in detail.lower()
        if mode == "rate_limited":
            retry_after(response)
        assert await sim.total_calls() == 1
        function = "TIME_SERIES_DAILY" if endpoint == DAILY else "GLOBAL_QUOTE"
        assert (await scrape(api)).value(UPSTREAM_CALLS, function=function, outcome=outcome) == 1.0


class TestUpstreamTimeout:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(upstream_timeout_seconds=0.2)

    @ENDPOINTS
    async def test_slow_upstream_is_504(
        self, api: httpx.AsyncClient, sim: SimulatorControl, endpoint: str
    ) -> None:
        await sim.set_fault(FaultMode.SLOW, delay_seconds=1.0)
        started = time.perf_counter()
        response = await api.get(endpoint.format("IBM"))
        assert time.perf_counter() - started < 0.9  # the timeout, not the upstream's delay
        detail = error_detail(response, 504)
        assert "0.2" in detail
        function = "TIME_SERIES_DAILY" if endpoint == DAILY else "GLOBAL_QUOTE"
        assert (await scrape(api)).value(
            UPSTREAM_CALLS, function=function, outcome="timeout"
        ) == 1.0

    async def test_concurrent_timeouts_share_one_call_and_one_failure(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.SLOW, delay_seconds=1.0)
        responses = await asyncio.gather(*(api.get("/stock/IBM") for _ in range(20)))
        for response in responses:
            error_detail(response, 504)
        assert await sim.total_calls() == 1
        assert (await breaker_status(api))["failure_count"] == 1


# -- unknown routes and methods --------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(
        "path", ["/nowhere", "/stock", "/stock/IBM/quote/extra", "/STOCK/IBM", "/stock//IBM"]
    )
    async def test_unknown_route_is_404(
        self, api: httpx.AsyncClient, sim: SimulatorControl, path: str
    ) -> None:
        assert error_detail(await api.get(path), 404) == "Not Found"
        assert await sim.total_calls() == 0

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/stock/IBM"),
            ("DELETE", "/stock/IBM/quote"),
            ("PUT", "/circuit-breaker"),
            ("GET", "/circuit-breaker/open"),
            ("GET", "/circuit-breaker/reset"),
            ("POST", "/healthz"),
        ],
    )
    async def test_wrong_method_is_405(
        self, api: httpx.AsyncClient, sim: SimulatorControl, method: str, path: str
    ) -> None:
        response = await api.request(method, path, headers=ADMIN)
        assert error_detail(response, 405) == "Method Not Allowed"
        assert "allow" in response.headers
        assert await sim.total_calls() == 0
        assert (await breaker_status(api))["state"] == "closed"


# -- secrets ---------------------------------------------------------------------------------------


async def test_the_api_key_never_leaves_the_service(
    client: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    """Every kind of answer, checked explicitly (the plain client, without the hook)."""
    responses: list[httpx.Response] = []

    async def get_all(*paths: str) -> None:
        for path in paths:
            responses.append(await client.get(path, headers={"X-Request-ID": "leak-check"}))

    await get_all("/stock/IBM", "/stock/IBM/quote", "/stock/IBM", "/stock/ZZTOP", "/stock/^")
    # rate_limited last: it stops upstream calls for a day.
    for mode in ("invalid_key", "premium", "http_500", "down", "bad_json", "rate_limited"):
        await sim.set_fault(FaultMode(mode))
        await get_all(f"/stock/{mode.replace('_', '')}", f"/stock/{mode[:4]}/quote")
    # The rate-limit message quotes the key upstream: the key did travel, it must not return.
    assert await sim.total_calls() > 0
    await get_all("/stock/REJECTED", "/circuit-breaker", "/metrics", "/healthz", "/readyz")
    await get_all("/nowhere", "/openapi.json", "/docs")
    responses.append(await client.post("/circuit-breaker/open"))
    responses.append(await client.post("/circuit-breaker/open", headers=ADMIN))
    responses.append(await client.post("/circuit-breaker/reset", headers=ADMIN))
    responses.append(await client.delete("/stock/IBM"))
    statuses = {response.status_code for response in responses}
    assert statuses >= {200, 401, 404, 405, 422, 502, 503}
    for response in responses:
        assert_clean(response, SECRETS)
