"""Consumers over real sockets: `python -m app consumers ...` run as a subprocess on a store
(a SQLite file or a real redis-server) that real service processes share, against a real
simulator. Budgets bind per consumer across replicas and restarts, one flight is one charge,
a revocation reaches another process within a second, and no token is ever shown."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from app.simulator import FaultMode
from tests.helpers import SimulatorControl, error_detail, retry_after, scrape
from tests.servers import (
    ServerPool,
    ServerProcess,
    add_consumer,
    async_http_client,
    consumers_cli,
)

pytestmark = pytest.mark.integration

SETTINGS = {
    "ALPHAVANTAGE_API_KEY": "CONSUMERS-KEY",
    "ADMIN_TOKEN": "consumers-admin-token",
    "SHUTDOWN_DRAIN_SECONDS": "0",
}
ADMIN = {"Authorization": f"Bearer {SETTINGS['ADMIN_TOKEN']}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def get(service: ServerProcess, path: str, token: str) -> httpx.Response:
    async with async_http_client(service.url) as api:
        return await api.get(path, headers=bearer(token))


async def used(service: ServerProcess, token: str) -> int:
    """The consumer's upstream calls in the rolling day, as /usage tells it (with a budget)."""
    response = await get(service, "/usage", token)
    assert response.status_code == 200, response.text
    spent: int = response.json()["used"]
    return spent


async def upstream_calls(simulator: ServerProcess) -> int:
    async with async_http_client(simulator.url) as client:
        return await SimulatorControl(client).total_calls()


def assert_never_logged(services: list[ServerProcess], tokens: list[str]) -> None:
    for service in services:
        output = service.stdout() + service.stderr()
        assert output  # it did log: the check means something
        for token in tokens:
            assert token not in output


async def test_budgets_bind_per_consumer_across_replicas_and_restarts(
    servers: ServerPool, shared_state_url: str, tmp_path: Path
) -> None:
    alice = add_consumer(shared_state_url, tmp_path, "alice", "--calls-per-day", "2")
    bob = add_consumer(shared_state_url, tmp_path, "bob", "--calls-per-day", "5")
    carol = add_consumer(shared_state_url, tmp_path, "carol", "--calls-per-day", "5")
    tokens = [alice, bob, carol]
    listed = consumers_cli(shared_state_url, tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    assert {"alice", "bob", "carol"} <= set(listed.stdout.split())
    assert not any(token in listed.stdout + listed.stderr for token in tokens)

    simulator = servers.start_simulator()
    shared = SETTINGS | {"STATE_URL": shared_state_url}
    first, second = (servers.start_service(simulator, shared) for _ in range(2))
    assert "bearer token required: 3 consumer(s)" in first.stdout()
    async with async_http_client(first.url) as api:
        error_detail(await api.get("/stock/IBM"), 401)

    # alice spends her 2 calls, on two replicas; a hit on either costs nothing.
    assert (await get(first, "/stock/A1", alice)).json()["source"] == "upstream"
    assert (await get(second, "/stock/A1", alice)).json()["source"] == "cache"
    assert (await get(second, "/stock/A2", alice)).status_code == 200
    refused = await get(first, "/stock/A3", alice)
    error_detail(refused, 429)
    assert retry_after(refused) > 86000
    # bob keeps getting fresh data for new symbols, and alice what others fetched.
    for symbol in ("B1", "B2", "A3"):
        assert (await get(second, f"/stock/{symbol}", bob)).json()["source"] == "upstream"
    assert (await get(first, "/stock/A3", alice)).status_code == 200
    assert await upstream_calls(simulator) == 5

    # One usage for both replicas, kept across a restart.
    assert await used(first, alice) == await used(second, alice) == 2
    first.stop()
    restarted = servers.start_service(simulator, shared)
    assert await used(restarted, alice) == 2
    assert await used(restarted, bob) == 3
    error_detail(await get(restarted, "/stock/A4", alice), 429)

    # bob and carol miss on one symbol at once, on two replicas: one call, one charge.
    async with async_http_client(simulator.url) as client:
        await SimulatorControl(client).set_fault(FaultMode.SLOW, delay_seconds=0.5)
    answers = await asyncio.gather(
        get(restarted, "/stock/SAME", bob), get(second, "/stock/SAME", carol)
    )
    assert [answer.status_code for answer in answers] == [200, 200]
    assert await upstream_calls(simulator) == 6
    assert await used(second, bob) + await used(second, carol) == 3 + 1

    async with async_http_client(second.url) as api:
        listed_usage = (await api.get("/consumers", headers=ADMIN)).json()
        metrics = await scrape(api)
    assert [entry["name"] for entry in listed_usage] == ["alice", "bob", "carol"]
    assert metrics.label_values("consumer") <= {"alice", "bob", "carol", "anonymous"}
    for token in tokens:
        assert token not in metrics.text
        assert token not in str(listed_usage)
    assert_never_logged([first, second, restarted], tokens)


async def test_a_revocation_reaches_another_process_within_a_second(
    servers: ServerPool, shared_state_url: str, tmp_path: Path
) -> None:
    simulator = servers.start_simulator()
    shared = SETTINGS | {"STATE_URL": shared_state_url}
    service = servers.start_service(simulator, shared)
    assert "open: no consumer is configured" in service.stdout()
    async with async_http_client(service.url) as api:
        assert (await api.get("/stock/IBM")).status_code == 200  # the demo: open

    token = add_consumer(shared_state_url, tmp_path, "erin")
    add_consumer(shared_state_url, tmp_path, "frank")
    deadline = time.monotonic() + 1.5  # the registry cache's second, and slack
    while (await get(service, "/stock/IBM", token)).status_code != 200:
        assert time.monotonic() < deadline, "a new consumer was not seen within a second"
        await asyncio.sleep(0.05)
    async with async_http_client(service.url) as api:
        error_detail(await api.get("/stock/IBM"), 401)

    revoked = consumers_cli(shared_state_url, tmp_path, "revoke", "erin")
    assert revoked.returncode == 0, revoked.stderr
    revoked_at = time.monotonic()
    while (response := await get(service, "/stock/IBM", token)).status_code != 401:
        assert time.monotonic() - revoked_at < 1.5, "the revocation took over a second"
        await asyncio.sleep(0.05)
    assert response.headers["www-authenticate"] == "Bearer"
    assert_never_logged([service], [token])
