"""A state store that dies, pauses or is down at startup, for real: a service process on a
real redis-server that the test kills, restarts and pauses. The service keeps answering,
never overdraws the key, and recovers by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import SimulatorControl, scrape
from tests.redis_server import RedisServer
from tests.servers import ServerPool, ServerProcess, async_http_client, timed_get

pytestmark = pytest.mark.integration

STORE_TIMEOUT = 0.5
UPSTREAM_TIMEOUT = 2.0
# No request may wait longer than a store timeout and an upstream call, with room for a
# busy machine.
BOUND = STORE_TIMEOUT + UPSTREAM_TIMEOUT + 1.0
SETTINGS = {
    "ALPHAVANTAGE_API_KEY": "STORE-OUTAGE-KEY",
    "UPSTREAM_DAILY_QUOTA": "25",  # the ledger is on: a miss must prove the budget
    "UPSTREAM_RATE_PER_SECOND": "0",
    "UPSTREAM_TIMEOUT_SECONDS": str(UPSTREAM_TIMEOUT),
    "STATE_TIMEOUT_SECONDS": str(STORE_TIMEOUT),
    "SHUTDOWN_DRAIN_SECONDS": "0",
}


async def upstream_calls(simulator: ServerProcess) -> int:
    async with async_http_client(simulator.url) as client:
        return await SimulatorControl(client).total_calls()


async def wait_for_store(api: httpx.AsyncClient, state: str, within: float = 5.0) -> None:
    """Poll /healthz until it says the store is `state`; a miss makes the store be tried."""
    deadline = time.monotonic() + within
    while (await api.get("/healthz")).json()["state_store"] != state:
        assert time.monotonic() < deadline, f"the store never read {state}"
        await api.get(f"/stock/PROBE{time.monotonic_ns()}")
        await asyncio.sleep(0.2)


async def test_a_killed_store_costs_no_call_and_the_service_recovers_without_a_restart(
    servers: ServerPool, redis_server: RedisServer
) -> None:
    simulator = servers.start_simulator()
    service = servers.start_service(simulator, SETTINGS | {"STATE_URL": redis_server.url})
    async with async_http_client(service.url) as api:
        assert (await api.get("/stock/IBM")).status_code == 200
        calls = await upstream_calls(simulator)

        redis_server.kill()
        hit = await timed_get(api, "/stock/IBM")
        assert hit.response.status_code == 200  # the process's own cache answers
        assert hit.seconds < BOUND
        for symbol in ("MISS1", "MISS2", "MISS3"):
            miss = await timed_get(api, f"/stock/{symbol}")
            assert miss.response.status_code == 503, miss.response.text
            assert "state store" in miss.response.json()["detail"]
            assert miss.seconds < BOUND
        assert await upstream_calls(simulator) == calls  # the budget could not be proven

        healthz = await api.get("/healthz")
        assert (healthz.status_code, healthz.json()["state_store"]) == (200, "down")
        assert (await api.get("/readyz")).status_code == 200
        upstream = (await api.get("/upstream")).json()
        assert upstream["state_store"]["up"] is False
        assert upstream["quota"] is None
        metrics = await scrape(api)
        assert metrics.value("stock_api_state_store_up") == 0
        assert metrics.value("stock_api_state_store_errors_total") >= 1

        redis_server.restart()
        await wait_for_store(api, "up")
        assert (await api.get("/stock/AFTER")).status_code == 200
        assert (await scrape(api)).value("stock_api_state_store_up") == 1


async def test_a_paused_store_bounds_every_request(
    servers: ServerPool, redis_server: RedisServer
) -> None:
    simulator = servers.start_simulator()
    service = servers.start_service(simulator, SETTINGS | {"STATE_URL": redis_server.url})
    async with async_http_client(service.url) as api:
        assert (await api.get("/stock/IBM")).status_code == 200
        redis_server.pause(5)
        answers = await asyncio.gather(
            timed_get(api, "/stock/IBM"),
            *(timed_get(api, f"/stock/PAUSED{n}") for n in range(5)),
        )
        assert answers[0].response.status_code == 200
        for answer in answers:
            assert answer.seconds < BOUND, answer.response.text
        assert {a.response.status_code for a in answers[1:]} == {503}


async def test_the_service_starts_with_the_store_down_and_picks_it_up_later(
    servers: ServerPool, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    try:
        redis.kill()  # down before the service starts, on a port it will come back to
        simulator = servers.start_simulator()
        started = time.monotonic()
        service = servers.start_service(simulator, SETTINGS | {"STATE_URL": redis.url})
        assert time.monotonic() - started < 10
        async with async_http_client(service.url) as api:
            assert (await api.get("/stock/EARLY")).status_code == 503
            assert (await api.get("/healthz")).json()["state_store"] == "down"
            redis.restart()
            await wait_for_store(api, "up")
            assert (await api.get("/stock/LATER")).status_code == 200
    finally:
        redis.close()
