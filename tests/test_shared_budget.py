"""One budget, one cache and one flight for every process using one key, across restarts:
real service processes on 127.0.0.1 sharing a store (the default SQLite file, or a real
redis-server) against a real simulator."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import Iterable

import httpx
import pytest

from app.simulator import FaultMode
from tests.helpers import SimulatorControl
from tests.servers import ServerPool, ServerProcess, async_http_client

pytestmark = pytest.mark.integration

SETTINGS = {
    "ALPHAVANTAGE_API_KEY": "SHARED-BUDGET-KEY",
    "UPSTREAM_RATE_PER_SECOND": "0",  # the budget is what is under test, not the pace
    "SHUTDOWN_DRAIN_SECONDS": "0",
}
_serial = itertools.count(1)


def start_services(
    servers: ServerPool, simulator: ServerProcess, count: int, **settings: str
) -> list[ServerProcess]:
    return [servers.start_service(simulator, SETTINGS | settings) for _ in range(count)]


async def get_misses(services: Iterable[ServerProcess], per_service: int) -> list[int]:
    """`per_service` concurrent misses (distinct symbols) on each service; their statuses."""

    async def miss(service: ServerProcess) -> int:
        async with async_http_client(service.url) as api:
            return (await api.get(f"/stock/S{next(_serial)}")).status_code

    jobs = [miss(service) for service in services for _ in range(per_service)]
    return list(await asyncio.gather(*jobs))


async def upstream_calls(simulator: ServerProcess) -> int:
    async with async_http_client(simulator.url) as client:
        return await SimulatorControl(client).total_calls()


async def quota_used(service: ServerProcess) -> int:
    async with async_http_client(service.url) as api:
        used: int = (await api.get("/upstream")).json()["quota"]["used"]
        return used


async def test_two_processes_and_a_restart_spend_one_budget(
    servers: ServerPool, shared_state_url: str
) -> None:
    """Each process used to spend its own 3, and a restarted one its 3 again: 9 calls."""
    simulator = servers.start_simulator()
    shared = {"UPSTREAM_DAILY_QUOTA": "3", "STATE_URL": shared_state_url}
    first, second = start_services(servers, simulator, 2, **shared)

    statuses = await get_misses([first], 2) + await get_misses([second], 2)
    assert sorted(statuses) == [200, 200, 200, 503]
    first.stop()
    (restarted,) = start_services(servers, simulator, 1, **shared)
    assert await get_misses([restarted, second], 2) == [503] * 4

    assert await upstream_calls(simulator) == 3
    assert await quota_used(restarted) == 3


async def test_processes_racing_for_the_last_units_spend_exactly_the_limit(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    services = start_services(
        servers, simulator, 3, UPSTREAM_DAILY_QUOTA="10", STATE_URL=shared_state_url
    )
    statuses = await get_misses(services, 12)  # 36 concurrent misses for 10 units
    assert statuses.count(200) == 10
    assert statuses.count(503) == 26
    assert await upstream_calls(simulator) == 10


async def test_a_call_made_by_a_process_killed_mid_flight_stays_counted(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    async with async_http_client(simulator.url) as client:
        await SimulatorControl(client).set_fault(FaultMode.SLOW, delay_seconds=5)
    shared = {"UPSTREAM_DAILY_QUOTA": "3", "STATE_URL": shared_state_url}
    (doomed,) = start_services(servers, simulator, 1, **shared)

    async with async_http_client(doomed.url) as api:
        in_flight = asyncio.create_task(api.get("/stock/INFLIGHT"))
        deadline = time.monotonic() + 5
        while await upstream_calls(simulator) == 0:  # the call is on its way upstream
            assert time.monotonic() < deadline, "the call never reached the simulator"
            await asyncio.sleep(0.02)
        doomed.stop(signal.SIGKILL)
        with pytest.raises(httpx.TransportError):
            await in_flight

    (successor,) = start_services(servers, simulator, 1, **shared)
    assert await quota_used(successor) == 1


async def test_concurrent_misses_for_one_symbol_on_three_processes_make_one_call(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    async with async_http_client(simulator.url) as client:
        # Slow enough that all 50 misses arrive while the one call is under way.
        await SimulatorControl(client).set_fault(FaultMode.SLOW, delay_seconds=0.5)
    services = start_services(servers, simulator, 3, STATE_URL=shared_state_url)

    async def ask(service: ServerProcess) -> tuple[int, str]:
        async with async_http_client(service.url) as api:
            response = await api.get("/stock/ONE", params={"days": 1})
            return response.status_code, response.json()["source"]

    answers = await asyncio.gather(*(ask(services[n % 3]) for n in range(50)))
    assert {status for status, _ in answers} == {200}
    assert await upstream_calls(simulator) == 1
    # One process called; the others got its result from the shared tier.
    assert sorted({source for _, source in answers}) == ["cache", "upstream"]


async def test_a_value_fetched_by_one_process_is_served_by_the_others(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    first, second = start_services(servers, simulator, 2, STATE_URL=shared_state_url)
    async with async_http_client(first.url) as api:
        fetched = (await api.get("/stock/IBM/quote")).json()
    async with async_http_client(second.url) as api:
        served = (await api.get("/stock/IBM/quote")).json()
    assert fetched["source"] == "upstream"
    assert served == {**fetched, "source": "cache"}
    assert await upstream_calls(simulator) == 1


async def test_with_the_breaker_open_a_copy_from_another_process_is_served(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    first, second = start_services(
        servers, simulator, 2, STATE_URL=shared_state_url, ADMIN_TOKEN="shared-admin"
    )
    async with async_http_client(first.url) as api:
        assert (await api.get("/stock/IBM")).status_code == 200
        opened = await api.post(
            "/circuit-breaker/open", headers={"Authorization": "Bearer shared-admin"}
        )
        assert opened.status_code == 200
    async with async_http_client(second.url) as api:
        response = await api.get("/stock/IBM")  # nothing in its own cache; the breaker is open
        assert response.status_code == 200, response.text
        assert response.json()["source"] == "cache"
        assert (await api.get("/stock/MSFT")).status_code == 503  # no copy anywhere
    assert await upstream_calls(simulator) == 1
