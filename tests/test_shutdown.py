"""Graceful shutdown of a real uvicorn process: drain first, then finish what is in flight."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from app.simulator import FaultMode
from tests.helpers import SimulatorControl
from tests.servers import ServerPool, async_http_client

pytestmark = pytest.mark.integration


async def test_sigterm_turns_readyz_503_and_lets_in_flight_requests_finish(
    servers: ServerPool,
) -> None:
    simulator = servers.start_simulator()
    service = servers.start_service(
        simulator, {"ALPHAVANTAGE_API_KEY": "shutdown-test-key", "SHUTDOWN_DRAIN_SECONDS": "1.5"}
    )
    async with async_http_client(simulator.url) as control:
        await SimulatorControl(control).set_fault(FaultMode.SLOW, delay_seconds=2.5)

    async with async_http_client(service.url, timeout=20) as client:
        assert (await client.get("/readyz")).status_code == 200
        in_flight = asyncio.create_task(client.get("/stock/IBM"))
        await asyncio.sleep(0.5)  # the request now waits on the slow upstream
        service.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)

        # Draining: still serving, but no longer ready.
        async with async_http_client(service.url) as prober:
            readyz = await prober.get("/readyz")
            healthz = await prober.get("/healthz")
        assert readyz.status_code == 503
        assert readyz.json() == {"detail": "not ready"}
        assert healthz.status_code == 200

        response = await in_flight
    assert response.status_code == 200
    assert response.json()["source"] == "upstream"

    exit_code = await asyncio.to_thread(service.process.wait, 15)
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM once it is done
    assert "draining for 1.5 s" in service.stdout()
    assert "Application shutdown complete" in service.stdout()


async def test_after_the_drain_new_connections_are_refused(servers: ServerPool) -> None:
    simulator = servers.start_simulator()
    service = servers.start_service(
        simulator, {"ALPHAVANTAGE_API_KEY": "shutdown-test-key", "SHUTDOWN_DRAIN_SECONDS": "0"}
    )
    service.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(service.process.wait, 15)
    async with async_http_client(service.url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")
