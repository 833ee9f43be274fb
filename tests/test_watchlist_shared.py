"""The watchlist of two real service processes sharing a store (a SQLite file, or a real
redis-server), against a real simulator that counts the calls: one round between them."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from app.simulator import FaultMode
from tests.helpers import SimulatorControl, refreshed_long_ago
from tests.servers import ServerPool, ServerProcess, async_http_client

pytestmark = pytest.mark.integration

WATCHLIST = ("IBM", "MSFT", "AAPL")
API_KEY = "WATCHLIST-KEY"
TIMEOUT_SECONDS = 30.0


async def refreshed(service: ServerProcess, since: dt.datetime) -> set[str]:
    """The watchlist's symbols that /upstream says were refreshed after `since`."""
    async with async_http_client(service.url) as api:
        watchlist = (await api.get("/upstream")).json()["watchlist"]
    return {
        s["symbol"]
        for s in watchlist["symbols"]
        if dt.datetime.fromisoformat(s["last_refresh"]) > since
    }


async def test_two_processes_refresh_the_watchlist_once_between_them(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    await refreshed_long_ago(shared_state_url, API_KEY, WATCHLIST)  # all due at startup
    async with async_http_client(simulator.url) as client:
        sim = SimulatorControl(client)
        # Slow enough that the first process's round is still under way when the second
        # one starts and finds the symbols due.
        await sim.set_fault(FaultMode.SLOW, delay_seconds=1.5)
        settings = {
            "ALPHAVANTAGE_API_KEY": API_KEY,
            "STATE_URL": shared_state_url,
            "WATCHLIST": ",".join(WATCHLIST),
            "CACHE_FRESHNESS": "market",
            "SHUTDOWN_DRAIN_SECONDS": "0",
        }
        started = dt.datetime.now(dt.UTC)
        services = [servers.start_service(simulator, settings) for _ in range(2)]

        deadline = time.monotonic() + TIMEOUT_SECONDS
        while any([await refreshed(s, started) != set(WATCHLIST) for s in services]):
            assert time.monotonic() < deadline, "\n".join(s.output_tail() for s in services)
            await asyncio.sleep(0.2)

        assert await sim.calls() == {"TIME_SERIES_DAILY": len(WATCHLIST)}
    # One did the round; the other found it under way, and then done.
    outputs = sorted((s.stdout() for s in services), key=lambda out: "refreshed" in out)
    assert [out.count('"watchlist refreshed"') for out in outputs] == [0, 1]
    assert '"watchlist round left to the process holding its lease"' in outputs[0]
