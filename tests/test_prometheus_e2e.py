"""End to end: a real Prometheus scrapes the real service and evaluates prometheus/alerts.yml.

The simulator and the service run as in tests/test_integration.py (subprocesses on 127.0.0.1,
free ports). Prometheus (`/usr/bin/prometheus`, Debian's prometheus package; the test fails,
never skips, without it) runs on 127.0.0.1 too, with its data in tmp_path, scraping the
service every second and evaluating a copy of alerts.yml in which only the `for:` durations
are shortened. All three processes are stopped at teardown, whatever happens.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from app.simulator import FaultMode
from tests.conftest import prometheus_tool
from tests.helpers import SimulatorControl, breaker_status, trip
from tests.servers import (
    HOST,
    PORT_ATTEMPTS,
    ROOT,
    ServerPool,
    ServerProcess,
    ServerStartError,
    async_http_client,
    free_port,
    server_environment,
    wait_until_ready,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")

JOB = "stock-service"
BREAKER = "alphavantage"
DAILY = "TIME_SERIES_DAILY"
ADMIN_TOKEN = "e2e-admin-token"
FAILURE_THRESHOLD = 5
ALERTS = ROOT / "prometheus" / "alerts.yml"
SHORT_FOR = "1s"  # every `for:` in the copy of alerts.yml Prometheus evaluates
SHORT_FOR_SECONDS = 1
DEADLINE_SECONDS = 20.0  # for each thing we wait Prometheus to see
STATE_GAUGE = f'stock_api_circuit_breaker_state{{job="{JOB}",breaker="{BREAKER}"}}'

SERVICE_SETTINGS: dict[str, str] = {
    "ALPHAVANTAGE_API_KEY": "e2e-test-key",
    "UPSTREAM_TIMEOUT_SECONDS": "1",
    "BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
    "BREAKER_SUCCESS_THRESHOLD": "3",
    # Open for longer than the test runs: only the admin reset closes it.
    "BREAKER_TIMEOUT_SECONDS": "60",
    "BREAKER_HALF_OPEN_MAX_CALLS": "1",
    "CACHE_TTL_SECONDS": "300",
    "CACHE_STALE_SECONDS": "86400",
    "CACHE_MAX_ENTRIES": "1000",
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "LOG_LEVEL": "INFO",
}


# -- servers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    simulator: ServerProcess
    service: ServerProcess
    prometheus: ServerProcess


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def alert_names() -> list[str]:
    groups = load_yaml(ALERTS)["groups"]
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def write_fast_rules(path: Path) -> None:
    """Write alerts.yml with every `for:` shortened to SHORT_FOR, expressions untouched."""
    rules = load_yaml(ALERTS)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")


def write_config(path: Path, rules: Path, service: ServerProcess) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"{HOST}:{service.port}"]}],
            }
        ],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def start_prometheus(
    executable: str, directory: Path, config: Path, started: list[ServerProcess]
) -> ServerProcess:
    """Prometheus on a free port of 127.0.0.1 with its data in `directory`; every process it
    spawns is appended to `started` at once, so that teardown stops it even if this fails."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        stdout_path = directory / f"prometheus-{port}.stdout.log"
        stderr_path = directory / f"prometheus-{port}.stderr.log"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                [
                    executable,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address={HOST}:{port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=server_environment({}),
                cwd=directory,
                start_new_session=True,
            )
        server = ServerProcess("prometheus", port, process, stdout_path, stderr_path)
        started.append(server)
        try:
            wait_until_ready(server, "/-/ready")
        except ServerStartError:
            if "address already in use" not in server.stderr().lower() or attempt == PORT_ATTEMPTS:
                raise
        else:
            return server
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    executable = prometheus_tool("prometheus")  # before starting anything
    pool = ServerPool(tmp_path)
    prometheus_servers: list[ServerProcess] = []
    try:
        simulator = pool.start_simulator()
        service = pool.start_service(simulator, SERVICE_SETTINGS)
        rules, config = tmp_path / "alerts.yml", tmp_path / "prometheus.yml"
        write_fast_rules(rules)
        write_config(config, rules, service)
        prometheus = start_prometheus(executable, tmp_path, config, prometheus_servers)
        yield Stack(simulator, service, prometheus)
    finally:
        try:
            for server in prometheus_servers:
                try:
                    server.stop()
                finally:
                    server.kill_leftovers()
        finally:
            pool.close()


# -- Prometheus's HTTP API ------------------------------------------------------------------


class PrometheusAPI:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def _get(self, path: str, **params: str) -> Any:
        response = await self._client.get(path, params=params)
        assert response.status_code == 200, f"GET {path}: {response.text}"
        body: dict[str, Any] = response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, promql: str) -> list[str]:
        """The values of an instant query's samples, as Prometheus spells them."""
        data = await self._get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return [sample["value"][1] for sample in data["result"]]

    async def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts."""
        alerts: list[dict[str, Any]] = (await self._get("/api/v1/alerts"))["alerts"]
        return alerts

    async def active(self, name: str, **labels: str) -> list[dict[str, Any]]:
        """The pending and firing alerts named `name` that carry `labels`."""
        return [
            alert
            for alert in await self.alerts()
            if alert["labels"].get("alertname") == name
            and all(alert["labels"].get(key) == value for key, value in labels.items())
            and alert["state"] in ("pending", "firing")
        ]

    async def alerting_rules(self) -> list[dict[str, Any]]:
        groups = (await self._get("/api/v1/rules", type="alert"))["groups"]
        return [rule for group in groups for rule in group["rules"]]


async def wait_for(
    what: str,
    observe: Callable[[], Awaitable[T]],
    satisfied: Callable[[T], bool],
    within: float = DEADLINE_SECONDS,
) -> T:
    """Poll `observe()` until `satisfied` by what it returns; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        observed = await observe()
        if satisfied(observed):
            return observed
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within:g} s; last seen: {observed!r}")
        await asyncio.sleep(0.2)


# -- the test -------------------------------------------------------------------------------


async def test_prometheus_sees_the_breaker_open_and_close_and_alerts(stack: Stack) -> None:
    async with (
        async_http_client(stack.service.url) as api,
        async_http_client(stack.simulator.url) as simulator,
        async_http_client(stack.prometheus.url) as prometheus_client,
    ):
        sim = SimulatorControl(simulator)
        prometheus = PrometheusAPI(prometheus_client)

        # Prometheus loaded every alert of alerts.yml, with the shortened `for`.
        rules = await prometheus.alerting_rules()
        assert sorted(rule["name"] for rule in rules) == sorted(alert_names())
        assert all(rule["duration"] == SHORT_FOR_SECONDS for rule in rules), rules
        assert all(rule["health"] != "err" for rule in rules), rules

        # It scrapes the service, and sees the breaker closed.
        await wait_for(
            "Prometheus scrapes the service",
            lambda: prometheus.query(f'up{{job="{JOB}"}}'),
            lambda values: values == ["1"],
        )
        assert await prometheus.query(STATE_GAUGE) == ["0"]
        assert not await prometheus.active("CircuitBreakerStuckOpen")

        # Alpha Vantage goes down: five failed calls open the breaker.
        await trip(api, sim, FAILURE_THRESHOLD)
        assert (await breaker_status(api))["state"] == "open"

        await wait_for(
            "Prometheus sees the breaker open",
            lambda: prometheus.query(STATE_GAUGE),
            lambda values: values == ["1"],
        )
        stuck = (
            await wait_for(
                "CircuitBreakerStuckOpen is pending or firing",
                lambda: prometheus.active("CircuitBreakerStuckOpen", breaker=BREAKER),
                lambda alerts: len(alerts) == 1,
            )
        )[0]
        assert stuck["labels"]["severity"] == "critical"
        assert stuck["annotations"]["runbook_url"].endswith("#circuitbreakerstuckopen")
        assert f"Circuit breaker {BREAKER} has been open" in stuck["annotations"]["description"]
        # Every call failed: the error ratio alert sees it too, by function.
        await wait_for(
            "UpstreamErrorRatioHigh is pending or firing for the daily series",
            lambda: prometheus.active("UpstreamErrorRatioHigh", function=DAILY),
            lambda alerts: len(alerts) == 1,
        )

        # Alpha Vantage comes back and an operator resets the breaker.
        await sim.set_fault(FaultMode.HEALTHY)
        response = await api.post(
            "/circuit-breaker/reset", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "closed"
        response = await api.get("/stock/E2EHEALED")
        assert response.status_code == 200, response.text

        await wait_for(
            "Prometheus sees the breaker closed again",
            lambda: prometheus.query(STATE_GAUGE),
            lambda values: values == ["0"],
        )
        await wait_for(
            "CircuitBreakerStuckOpen resolves",
            lambda: prometheus.active("CircuitBreakerStuckOpen"),
            lambda alerts: not alerts,
        )
