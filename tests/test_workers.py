"""`python -m app --workers 2`: real worker processes on one socket, against a real simulator,
sharing one budget (a SQLite store) and one /metrics (prometheus_client's multiprocess mode).

A response's request id starts with its worker's random prefix (app/middleware.py), which
tells the workers apart without asking them for a pid.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import SimulatorControl
from tests.servers import (
    HOST,
    STARTUP_TIMEOUT_SECONDS,
    ServerPool,
    ServerProcess,
    async_http_client,
    free_port,
    server_environment,
)

pytestmark = pytest.mark.integration

WORKERS = 2
STARTUP_COMPLETE = '"msg": "Application startup complete."'
REQUEST_ID_PREFIX = 16  # hex digits of a worker's own prefix
ROUNDS = 50  # of concurrent requests, to reach every worker: on a busy machine one may take all
ROUND_SIZE = 16
STOCK_ROUTE = "/stock/{symbol}"
_symbols = (f"W{n}" for n in itertools.count(1))


def start_group(
    servers: ServerPool, tmp_path: Path, **settings: str
) -> tuple[ServerProcess, ServerProcess]:
    """A simulator, and `python -m app --workers 2` against it once every worker is ready."""
    simulator = servers.start_simulator()
    variables = {
        "ALPHAVANTAGE_API_KEY": "WORKERS-KEY",
        "ALPHAVANTAGE_BASE_URL": f"{simulator.url}/query",
        "UPSTREAM_RATE_PER_SECOND": "0",
        "UPSTREAM_DAILY_QUOTA": "0",
        "STATE_URL": f"sqlite:///{tmp_path}/state.db",
        "SHUTDOWN_DRAIN_SECONDS": "0",
        "TMPDIR": str(tmp_path),  # where the launcher makes the metrics directory
        **settings,
    }
    group = servers.start_launcher(simulator.port, variables, workers=WORKERS)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while group.stdout().count(STARTUP_COMPLETE) < WORKERS:
        assert time.monotonic() < deadline, group.output_tail()
        time.sleep(0.05)
    return simulator, group


def worker(response: httpx.Response) -> str:
    return response.headers["x-request-id"][:REQUEST_ID_PREFIX]


async def get_each(group: ServerProcess, paths: list[str]) -> list[httpx.Response]:
    """GET every path at once, each over a connection of its own (workers accept them)."""

    async def get(path: str) -> httpx.Response:
        async with async_http_client(group.url) as api:
            return await api.get(path)

    return list(await asyncio.gather(*(get(path) for path in paths)))


async def until_every_worker_answers(group: ServerProcess, path: str) -> list[httpx.Response]:
    """Rounds of concurrent GETs (`path` formatted with a fresh symbol each time) until every
    worker has answered one; all the responses."""
    responses: list[httpx.Response] = []
    for _ in range(ROUNDS):
        paths = [path.format(symbol=next(_symbols)) for _ in range(ROUND_SIZE)]
        responses += await get_each(group, paths)
        if len({worker(r) for r in responses}) == WORKERS:
            return responses
    pytest.fail(f"{len(responses)} requests all reached one worker")


async def test_workers_spend_one_budget(servers: ServerPool, tmp_path: Path) -> None:
    simulator, group = start_group(servers, tmp_path, UPSTREAM_DAILY_QUOTA="3")

    responses = await until_every_worker_answers(group, STOCK_ROUTE)  # all misses

    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 3, 503: len(responses) - 3}, statuses
    async with async_http_client(simulator.url) as client:
        assert await SimulatorControl(client).total_calls() == 3


def stock_requests(exposition: str) -> float:
    """stock_api_http_requests_total for the stock route, summed over methods and statuses."""
    (family,) = (
        f for f in text_string_to_metric_families(exposition) if f.name == "stock_api_http_requests"
    )
    return sum(
        sample.value
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels["route"] == STOCK_ROUTE
    )


async def test_any_workers_metrics_count_the_whole_groups_requests(
    servers: ServerPool, tmp_path: Path
) -> None:
    _, group = start_group(servers, tmp_path)

    sent = await until_every_worker_answers(group, STOCK_ROUTE)
    # A worker counts a request just after answering it: let the last ones be counted.
    deadline = time.monotonic() + 5
    while (counted := stock_requests((await get_each(group, ["/metrics"]))[0].text)) < len(sent):
        assert time.monotonic() < deadline, f"a scrape counts {counted} of {len(sent)} requests"
        await asyncio.sleep(0.05)
    scrapes = await until_every_worker_answers(group, "/metrics")

    # Each worker writes its own files; whichever answers a scrape reads them all.
    assert len(counter_files(tmp_path)) == WORKERS
    assert {stock_requests(scrape.text) for scrape in scrapes} == {len(sent)}
    # The store's own gauge too, for StateStoreDown.
    assert all("\nstock_api_state_store_up 1.0" in scrape.text for scrape in scrapes)


def counter_files(tmp_dir: Path) -> list[Path]:
    """The workers' counter files, in the metrics directory the launcher made under TMPDIR."""
    return list(tmp_dir.glob("stock-service-metrics-*/counter_*.db"))


def test_workers_refuse_a_store_of_their_own(tmp_path: Path) -> None:
    variables = {"ALPHAVANTAGE_API_KEY": "WORKERS-KEY", "STATE_URL": "memory://"}
    command = [sys.executable, "-m", "app", "--host", HOST, "--port", str(free_port())]
    result = subprocess.run(
        [*command, "--workers", str(WORKERS)],
        env=server_environment(variables),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_SECONDS,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stdout.splitlines()
    assert "STATE_URL: memory://" in line
    assert "workers would not share the budget" in line
