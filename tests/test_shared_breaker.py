"""One breaker for every process using one key: three real service processes on 127.0.0.1
sharing a store, against one real simulator whose call counter tells what reached it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import httpx
import pytest

from app.simulator import FaultMode
from tests.helpers import BREAKER_STATE, SimulatorControl, scrape
from tests.servers import ServerPool, ServerProcess, async_http_client

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "shared-breaker-admin"
OPEN_TIMEOUT = 1.0  # seconds: short, so that the test sees the probe
SETTINGS = {
    "ALPHAVANTAGE_API_KEY": "SHARED-BREAKER-KEY",
    "UPSTREAM_RATE_PER_SECOND": "0",  # the breaker is under test, not the limits
    "UPSTREAM_DAILY_QUOTA": "0",
    "BREAKER_FAILURE_THRESHOLD": "5",
    "BREAKER_TIMEOUT_SECONDS": str(OPEN_TIMEOUT),
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "SHUTDOWN_DRAIN_SECONDS": "0",
}
REPLICAS = 3
_symbols = (f"S{n}" for n in itertools.count(1))  # never cached: each miss goes upstream


class Replicas:
    """The replicas' clients and the simulator's control, all against live processes."""

    def __init__(self, apis: list[httpx.AsyncClient], simulator: SimulatorControl) -> None:
        self.apis = apis
        self.simulator = simulator

    async def upstream_calls(self) -> int:
        return await self.simulator.total_calls()

    async def statuses(self, api: httpx.AsyncClient, count: int = 1) -> list[int]:
        """`count` concurrent misses on one replica; their statuses."""
        responses = await asyncio.gather(
            *(api.get(f"/stock/{next(_symbols)}") for _ in range(count))
        )
        return [response.status_code for response in responses]

    async def reported_states(self) -> list[tuple[str, float]]:
        """Each replica's GET /circuit-breaker state and its state gauge (0 closed, 1 open)."""
        return [(await self._reported_state(api)) for api in self.apis]

    @staticmethod
    async def _reported_state(api: httpx.AsyncClient) -> tuple[str, float]:
        state: str = (await api.get("/circuit-breaker")).json()["state"]
        return state, (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage")


@pytest.fixture
async def replicas(servers: ServerPool, shared_state_url: str) -> AsyncIterator[Replicas]:
    simulator = servers.start_simulator()
    settings = SETTINGS | {"STATE_URL": shared_state_url}
    services: list[ServerProcess] = [
        servers.start_service(simulator, settings) for _ in range(REPLICAS)
    ]
    apis = [async_http_client(service.url) for service in services]
    async with async_http_client(simulator.url) as control:
        try:
            yield Replicas(apis, SimulatorControl(control))
        finally:
            for api in apis:
                await api.aclose()


async def test_five_failures_in_all_open_every_replica_and_one_probe_goes(
    replicas: Replicas,
) -> None:
    await replicas.simulator.set_fault(FaultMode.DOWN)
    for n in range(5):  # one at a time, round the replicas: 2, 2 and 1 failures
        (status,) = await replicas.statuses(replicas.apis[n % REPLICAS])
        assert status != 200
    assert await replicas.upstream_calls() == 5

    for api in replicas.apis:  # each rejects before its next upstream call
        assert await replicas.statuses(api) == [503]
    assert await replicas.upstream_calls() == 5
    assert await replicas.reported_states() == [("open", 1.0)] * REPLICAS

    await asyncio.sleep(OPEN_TIMEOUT + 0.2)
    bursts = await asyncio.gather(*(replicas.statuses(api, 5) for api in replicas.apis))
    statuses = [status for burst in bursts for status in burst]
    assert await replicas.upstream_calls() == 6  # exactly one probe in the group
    assert statuses.count(503) == len(statuses) - 1
    # The probe failed: open again everywhere, for longer (the backoff).
    assert await replicas.reported_states() == [("open", 1.0)] * REPLICAS


async def test_force_open_on_one_replica_and_reset_on_another_act_on_all(
    replicas: Replicas,
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    first, second, _ = replicas.apis
    assert (await first.post("/circuit-breaker/open", headers=admin)).status_code == 200

    for api in replicas.apis:
        assert await replicas.statuses(api) == [503]
    assert await replicas.upstream_calls() == 0
    assert await replicas.reported_states() == [("open", 1.0)] * REPLICAS

    assert (await second.post("/circuit-breaker/reset", headers=admin)).status_code == 200
    assert await replicas.reported_states() == [("closed", 0.0)] * REPLICAS
    for api in replicas.apis:
        assert await replicas.statuses(api) == [200]
    assert await replicas.upstream_calls() == REPLICAS
