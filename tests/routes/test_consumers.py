"""Consumers through the API, in process (app/routes/consumers.py, the stock routes' token
check): 401s with WWW-Authenticate, /usage and the admin /consumers, 429 with Retry-After past
a budget or a rate, and hits, stale copies and other consumers' data free. tests/
test_consumers.py does it over real sockets with processes sharing a store."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.consumers import ConsumerRegistry
from app.main import create_app
from app.resources import Resources
from tests.conftest import ADMIN, make_settings, serve
from tests.helpers import SimulatorControl, error_detail, retry_after, scrape

CONSUMER_CALLS = "stock_api_consumer_upstream_calls_total"
CONSUMER_THROTTLED = "stock_api_consumer_throttled_requests_total"
USAGE_FIELDS = {
    "name",
    "calls_per_day",
    "used",
    "remaining",
    "next_refill_at",
    "requests_per_second",
    "created_at",
}


def registry(app: FastAPI) -> ConsumerRegistry:
    resources: Resources = app.state.resources
    return resources.consumers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def usage(api: httpx.AsyncClient, token: str) -> dict[str, object]:
    response = await api.get("/usage", headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    assert set(body) == USAGE_FIELDS
    return body


async def test_with_no_consumer_the_service_stays_open(api: httpx.AsyncClient) -> None:
    assert (await api.get("/stock/IBM")).status_code == 200
    assert "no consumer" in error_detail(await api.get("/usage"), 404)
    assert (await api.get("/consumers", headers=ADMIN)).json() == []
    assert (await scrape(api)).value(CONSUMER_CALLS, consumer="anonymous") == 1


async def test_once_a_consumer_exists_stock_needs_its_token(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    token = await registry(app).add("alice", None, None)
    for headers in ({}, bearer("wrong"), {"Authorization": f"Basic {token}"}, bearer("")):
        for path in ("/stock/IBM", "/stock/IBM/quote", "/usage"):
            response = await api.get(path, headers=headers)
            error_detail(response, 401)
            assert response.headers["www-authenticate"] == "Bearer"
    assert (await api.get("/stock/IBM", headers=bearer(token))).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api.get(path)).status_code == 200
    # Admin stays on ADMIN_TOKEN: a consumer token is no admin token, nor the reverse.
    error_detail(await api.get("/consumers", headers=bearer(token)), 401)
    assert (await api.get("/consumers", headers=ADMIN)).status_code == 200
    error_detail(await api.get("/stock/IBM", headers=ADMIN), 401)


async def test_a_revoked_token_is_refused(app: FastAPI, api: httpx.AsyncClient) -> None:
    token = await registry(app).add("alice", None, None)
    await registry(app).add("bob", None, None)
    assert (await api.get("/stock/IBM", headers=bearer(token))).status_code == 200
    assert await registry(app).revoke("alice")
    error_detail(await api.get("/stock/IBM", headers=bearer(token)), 401)


async def test_a_budget_counts_upstream_calls_and_hits_are_free(
    app: FastAPI, api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    alice = await registry(app).add("alice", 2, None)
    bob = await registry(app).add("bob", None, None)
    for _ in range(3):
        assert (await api.get("/stock/IBM", headers=bearer(alice))).status_code == 200
    assert (await api.get("/stock/IBM?days=5", headers=bearer(bob))).json()["source"] == "cache"
    own = await usage(api, alice)
    assert (own["name"], own["calls_per_day"], own["used"], own["remaining"]) == (
        "alice",
        2,
        1,
        1,
    )
    assert own["next_refill_at"] is not None

    assert (await api.get("/stock/MSFT", headers=bearer(alice))).status_code == 200
    response = await api.get("/stock/AAPL", headers=bearer(alice))
    assert "spent its 2 upstream calls" in error_detail(response, 429)
    assert retry_after(response) > 86000  # when its first call leaves the rolling day
    assert (await usage(api, alice))["remaining"] == 0

    # Nobody else is affected, and what others fetched is free for alice.
    assert (await api.get("/stock/AAPL", headers=bearer(bob))).status_code == 200
    assert (await api.get("/stock/AAPL", headers=bearer(alice))).status_code == 200
    assert await sim.total_calls() == 3

    metrics = await scrape(api)
    assert metrics.value(CONSUMER_CALLS, consumer="alice") == 2
    assert metrics.value(CONSUMER_CALLS, consumer="bob") == 1
    assert metrics.value(CONSUMER_THROTTLED, consumer="alice", reason="consumer_budget") == 1
    assert metrics.label_values("consumer") <= {"alice", "bob", "anonymous"}
    assert alice not in metrics.text
    assert bob not in metrics.text


@pytest.mark.parametrize("settings", [make_settings(cache_ttl_seconds=0)])
async def test_past_its_budget_stale_copies_are_served(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    token = await registry(app).add("alice", 1, None)
    assert (await api.get("/stock/IBM", headers=bearer(token))).json()["source"] == "upstream"
    assert (await api.get("/stock/IBM", headers=bearer(token))).json()["source"] == "stale"
    error_detail(await api.get("/stock/MSFT", headers=bearer(token)), 429)


async def test_a_rate_answers_429_with_retry_after(app: FastAPI, api: httpx.AsyncClient) -> None:
    token = await registry(app).add("alice", None, 1)
    assert (await api.get("/stock/IBM", headers=bearer(token))).status_code == 200
    response = await api.get("/stock/IBM", headers=bearer(token))
    assert "1 requests a second" in error_detail(response, 429)
    assert retry_after(response) == 1
    metrics = await scrape(api)
    assert metrics.value(CONSUMER_THROTTLED, consumer="alice", reason="consumer_rate") == 1


async def test_the_admin_sees_every_consumer_and_no_hash(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    alice = await registry(app).add("alice", 5, 2.5)
    await registry(app).add("bob", None, None)
    assert (await api.get("/stock/IBM", headers=bearer(alice))).status_code == 200
    response = await api.get("/consumers", headers=ADMIN)
    assert response.status_code == 200
    listed = response.json()
    assert [entry["name"] for entry in listed] == ["alice", "bob"]
    assert all(set(entry) == USAGE_FIELDS for entry in listed)
    assert listed[0] | {"next_refill_at": None, "created_at": None} == {
        "name": "alice",
        "calls_per_day": 5,
        "used": 1,
        "remaining": 4,
        "next_refill_at": None,
        "requests_per_second": 2.5,
        "created_at": None,
    }
    assert listed[1]["used"] is None  # no budget, no ledger
    assert "sha256" not in response.text
    assert alice not in response.text
    error_detail(await api.get("/consumers"), 401)


async def test_the_store_down_before_any_read_answers_503() -> None:
    # A Redis URL nothing listens on: the store never answers this process.
    settings = make_settings(state_url="redis://127.0.0.1:1/0", state_timeout_seconds=0.2)
    async with serve(create_app(settings, configure_logs=False)) as api:
        response = await api.get("/stock/IBM")
        assert "tokens cannot be checked" in error_detail(response, 503)
        assert retry_after(response) >= 1


async def test_a_pass_through_miss_is_charged_and_a_hit_is_free(
    app: FastAPI, api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    token = await registry(app).add("alice", 1, None)
    intraday = {"function": "TIME_SERIES_INTRADAY", "symbol": "IBM", "interval": "5min"}
    for _ in range(2):  # a miss, then a hit
        response = await api.get("/query", params={**intraday, "apikey": token})
        assert "Time Series (5min)" in response.json()
    assert (await usage(api, token))["used"] == 1
    assert await sim.calls() == {"TIME_SERIES_INTRADAY": 1}
    assert (await scrape(api)).value(CONSUMER_CALLS, consumer="alice") == 1
    # Another miss is past alice's budget of one call a day: held back, never sent.
    response = await api.get("/query", params={**intraday, "interval": "1min", "apikey": token})
    assert response.status_code == 429
    assert "limit: consumer_budget" in response.json()["Information"]
    assert await sim.total_calls() == 1
