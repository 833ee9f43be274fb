"""The /metrics exposition, checked by Prometheus's own promtool."""

from __future__ import annotations

import subprocess

import httpx
from fastapi import FastAPI

from app import alphavantage
from app.limits import Bulkhead, UpstreamLimits
from app.metrics import Metrics
from app.simulator import FaultMode
from app.state import MemoryState
from tests.conftest import prometheus_tool
from tests.helpers import BREAKER_STATE, SimulatorControl, scrape

IN_FLIGHT = "stock_api_upstream_calls_in_flight"


def promtool_check_metrics(exposition: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [prometheus_tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
    )


async def test_exposition_passes_promtool_check_metrics(
    client: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    await client.get("/stock/IBM")
    await client.get("/stock/IBM/quote")
    await client.get("/stock/ZZZZ")
    await sim.set_fault(FaultMode.DOWN)
    for symbol in ("A", "B", "C", "D", "E", "F"):
        await client.get(f"/stock/{symbol}")
    response = await client.get("/metrics")
    assert response.status_code == 200
    result = promtool_check_metrics(response.content)
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool prints lint problems (and exits 0 for some of them): there must be none.
    assert result.stdout == b"", result.stdout
    assert result.stderr == b"", result.stderr


async def test_promtool_does_catch_a_broken_exposition() -> None:
    result = promtool_check_metrics(b"# TYPE broken counter\nbroken{a=} 1\n")
    assert result.returncode != 0


async def test_a_second_lifespan_of_the_same_app_exports_one_state_series(
    app: FastAPI,
) -> None:
    for _ in range(2):
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            metrics = await scrape(c)  # which fails at a sample exported twice
    states = {
        labels: value for (name, labels), value in metrics.samples.items() if name == BREAKER_STATE
    }
    assert states == {frozenset({("breaker", "alphavantage")}): 0.0}
    assert promtool_check_metrics(metrics.text.encode()).returncode == 0


async def test_the_in_flight_gauge_follows_the_bulkhead_slots() -> None:
    # Written as slots change, not read at scrape time: a group of workers sums the writes.
    metrics = Metrics(alphavantage.FUNCTIONS, [])
    bulkhead = Bulkhead("alphavantage", 2)
    limits = UpstreamLimits(MemoryState(), key="k", pacing=None, quota=None, max_wait=0)
    metrics.watch_limits(limits, [bulkhead])

    def in_flight() -> float | None:
        return metrics.registry.get_sample_value(IN_FLIGHT, {"bulkhead": "alphavantage"})

    assert in_flight() == 0
    async with bulkhead.slot(max_wait=0):
        async with bulkhead.slot(max_wait=0):
            assert in_flight() == 2
        assert in_flight() == 1
    assert in_flight() == 0
