"""Integration tests over real sockets.

The Alpha Vantage simulator and the service run as real uvicorn servers in subprocesses on
127.0.0.1 (see tests/servers.py); the service is started with `python -m uvicorn app.main:app`
and configured through environment variables, exactly as in production. Upstream traffic is
counted with the simulator's `/_stats`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest

from app.settings import Settings
from app.simulator import FaultMode
from tests.helpers import (
    BREAKER_STATE,
    THROTTLED_CALLS,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
    trip,
    upstream_status,
)
from tests.servers import (
    ROOT,
    ServerPool,
    Stack,
    StartStack,
    connect,
    free_port,
    http_client,
    server_environment,
    timed_get,
    wait_until_port_closed,
)

pytestmark = pytest.mark.integration

DAILY = "TIME_SERIES_DAILY"
FAILURE_THRESHOLD = 5
SUCCESS_THRESHOLD = 3
SHORT_BREAKER_TIMEOUT = 1.0
SLOW_DELAY = 0.5

# Every setting spelled out, so a test never depends on a default changing.
BASE_SETTINGS: dict[str, str] = {
    "ALPHAVANTAGE_API_KEY": "integration-test-key",
    "UPSTREAM_TIMEOUT_SECONDS": "1",
    "BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
    "BREAKER_SUCCESS_THRESHOLD": str(SUCCESS_THRESHOLD),
    "BREAKER_TIMEOUT_SECONDS": str(SHORT_BREAKER_TIMEOUT),
    "BREAKER_HALF_OPEN_MAX_CALLS": "1",
    "CACHE_TTL_SECONDS": "300",
    "CACHE_STALE_SECONDS": "86400",
    "CACHE_MAX_ENTRIES": "1000",
    "LOG_LEVEL": "INFO",
}
# Long enough that an open breaker cannot go half-open while a test looks at it.
LONG_BREAKER_TIMEOUT = {"BREAKER_TIMEOUT_SECONDS": "30"}


# -- servers and clients --------------------------------------------------------------------


@pytest.fixture
def start_stack(servers: ServerPool) -> StartStack:
    """Starts the simulator, then the service against it with BASE_SETTINGS | settings."""

    def start(**settings: str) -> Stack:
        simulator = servers.start_simulator()
        service = servers.start_service(simulator, BASE_SETTINGS | settings)
        return Stack(simulator, service)

    return start


# -- the breaker over real sockets ----------------------------------------------------------


async def test_breaker_opens_after_five_upstream_failures(start_stack: StartStack) -> None:
    stack = start_stack(**LONG_BREAKER_TIMEOUT)
    async with connect(stack) as (api, sim):
        assert (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage") == 0.0

        await trip(api, sim, FAILURE_THRESHOLD)

        assert await sim.calls() == {DAILY: FAILURE_THRESHOLD}
        status = await breaker_status(api)
        assert status["state"] == "open"
        assert status["failure_count"] == FAILURE_THRESHOLD
        assert status["opened_at"] is not None
        assert (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage") == 1.0


async def test_open_breaker_fails_fast_without_calling_upstream(start_stack: StartStack) -> None:
    stack = start_stack(**LONG_BREAKER_TIMEOUT)
    async with connect(stack) as (api, sim):
        await trip(api, sim, FAILURE_THRESHOLD)
        await sim.reset_stats()

        for number in range(1, 21):
            response = await api.get(f"/stock/FAST{number}")
            assert "circuit breaker is open" in error_detail(response, 503)
            assert 1 <= retry_after(response) <= 30

        assert await sim.calls() == {}
        assert (await breaker_status(api))["state"] == "open"


async def test_half_open_admits_one_probe_among_30_concurrent_requests(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    async with connect(stack) as (api, sim):
        await trip(api, sim, FAILURE_THRESHOLD)
        await sim.set_fault(FaultMode.SLOW, delay_seconds=SLOW_DELAY)
        await asyncio.sleep(SHORT_BREAKER_TIMEOUT + 0.1)  # the open timeout runs out
        await sim.reset_stats()

        answers = await asyncio.gather(
            *(timed_get(api, f"/stock/PROBE{number}") for number in range(1, 31))
        )

        assert await sim.calls() == {DAILY: 1}
        statuses = Counter(answer.response.status_code for answer in answers)
        assert statuses == {200: 1, 503: 29}
        (probe,) = (answer for answer in answers if answer.response.status_code == 200)
        assert probe.response.json()["source"] == "upstream"
        assert probe.seconds >= SLOW_DELAY
        rejected = [answer for answer in answers if answer.response.status_code == 503]
        # Rejected at once: none of them waited for the slow probe.
        slowest = max(answer.seconds for answer in rejected)
        assert slowest < SLOW_DELAY, f"a rejection took {slowest:.3f} s"
        for answer in rejected:
            assert retry_after(answer.response) >= 1
        status = await breaker_status(api)
        assert (status["state"], status["success_count"]) == ("half_open", 1)


async def test_three_half_open_successes_close_the_breaker(start_stack: StartStack) -> None:
    stack = start_stack()
    async with connect(stack) as (api, sim):
        await trip(api, sim, FAILURE_THRESHOLD)
        await sim.set_fault(FaultMode.HEALTHY)
        await asyncio.sleep(SHORT_BREAKER_TIMEOUT + 0.1)
        await sim.reset_stats()

        for number in range(1, SUCCESS_THRESHOLD + 1):
            response = await api.get(f"/stock/HEAL{number}")
            assert response.status_code == 200, response.text
            assert response.json()["source"] == "upstream"
            if number < SUCCESS_THRESHOLD:
                status = await breaker_status(api)
                assert (status["state"], status["success_count"]) == ("half_open", number)

        status = await breaker_status(api)
        assert status["state"] == "closed"
        assert status["failure_count"] == 0
        assert (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage") == 0.0
        assert await sim.calls() == {DAILY: SUCCESS_THRESHOLD}


# -- cache ----------------------------------------------------------------------------------


async def test_stale_copy_is_served_while_upstream_fails_and_breaker_is_open(
    start_stack: StartStack,
) -> None:
    # A fixed TTL of 0 makes every entry stale at once; it stays servable for an hour.
    stack = start_stack(
        CACHE_FRESHNESS="fixed",
        CACHE_TTL_SECONDS="0",
        CACHE_STALE_SECONDS="3600",
        **LONG_BREAKER_TIMEOUT,
    )
    async with connect(stack) as (api, sim):
        fresh = await api.get("/stock/IBM")
        assert fresh.status_code == 200, fresh.text
        assert fresh.json()["source"] == "upstream"

        await sim.set_fault(FaultMode.DOWN)
        await sim.reset_stats()
        for _ in range(FAILURE_THRESHOLD):
            stale = await api.get("/stock/IBM")
            assert stale.status_code == 200, stale.text
            assert stale.json()["source"] == "stale"
            assert stale.json()["prices"] == fresh.json()["prices"]
        # Every one of them tried upstream first, and together they opened the breaker.
        assert await sim.calls() == {DAILY: FAILURE_THRESHOLD}
        assert (await breaker_status(api))["state"] == "open"

        await sim.reset_stats()
        stale = await api.get("/stock/IBM")
        assert stale.status_code == 200, stale.text
        assert stale.json()["source"] == "stale"
        assert stale.json()["prices"] == fresh.json()["prices"]
        assert await sim.calls() == {}


async def test_concurrent_requests_for_one_symbol_share_one_upstream_call(
    start_stack: StartStack,
) -> None:
    stack = start_stack()
    async with connect(stack) as (api, sim):
        await sim.set_fault(FaultMode.SLOW, delay_seconds=SLOW_DELAY)

        responses = await asyncio.gather(*(api.get("/stock/COAL") for _ in range(50)))

        assert [response.status_code for response in responses] == [200] * 50
        assert len({response.text for response in responses}) == 1
        assert await sim.calls() == {DAILY: 1}


# -- batch quotes and CSV -------------------------------------------------------------------


def test_csv_reads_from_the_url_as_pandas_reads_it(start_stack: StartStack) -> None:
    """pandas.read_csv("http://...") opens the URL with urllib and parses what comes: the
    same here, with the csv module (pandas is no dependency of the project)."""
    stack = start_stack()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only
    with opener.open(f"{stack.service.url}/stock/IBM?days=7&format=csv", timeout=10) as answer:
        assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
        rows = list(csv.DictReader(io.TextIOWrapper(answer, encoding="utf-8", newline="")))
    assert len(rows) == 7
    assert list(rows[0]) == ["date", "open", "high", "low", "close", "volume"]
    assert all(float(row["low"]) <= float(row["close"]) <= float(row["high"]) for row in rows)


async def test_100_symbols_in_one_premium_request_make_one_upstream_call(
    start_stack: StartStack,
) -> None:
    """A cold /quotes of 100 symbols over a real socket and the SQLite store: each symbol's
    flight reads and writes the shared tier, the misses share one bulk call."""
    stack = start_stack(ALPHAVANTAGE_PLAN="premium")
    symbols = ",".join(f"SYM{n}" for n in range(100))
    async with connect(stack) as (api, sim):
        response = await api.get("/quotes", params={"symbols": symbols})
        assert response.status_code == 200, response.text
        assert response.json()["failed"] == 0
        assert await sim.calls() == {"REALTIME_BULK_QUOTES": 1}
        again = await api.get("/quotes", params={"symbols": symbols})
        assert {r["quote"]["source"] for r in again.json()["quotes"]} == {"cache"}
        assert await sim.calls() == {"REALTIME_BULK_QUOTES": 1}


# -- pacing, quota and bulkhead -------------------------------------------------------------

LIMIT_SETTINGS = (
    "upstream_rate_per_second",
    "upstream_burst",
    "upstream_max_wait_seconds",
    "upstream_daily_quota",
    "upstream_max_concurrency",
)


async def test_a_burst_of_200_distinct_misses_is_paced_and_every_client_answered(
    start_stack: StartStack,
) -> None:
    defaults = {name: Settings.model_fields[name].default for name in LIMIT_SETTINGS}
    stack = start_stack(**{name.upper(): str(value) for name, value in defaults.items()})
    async with connect(stack) as (api, sim):
        started = time.monotonic()
        responses = await asyncio.gather(*(api.get(f"/stock/BURST{n}") for n in range(200)))
        elapsed = time.monotonic() - started

        calls = sum((await sim.calls()).values())
        # The bucket's burst, then one call a second for as long as the burst lasted.
        allowed = defaults["upstream_burst"] + defaults["upstream_rate_per_second"] * elapsed
        assert 1 <= calls <= allowed, (calls, elapsed)
        statuses = Counter(response.status_code for response in responses)
        assert statuses == {200: calls, 503: 200 - calls}
        for response in responses:
            if response.status_code == 503:
                assert "paced" in error_detail(response, 503)
                assert retry_after(response) >= 1
        # Nobody queued past UPSTREAM_MAX_WAIT_SECONDS (plus the time to serve 200 requests).
        assert elapsed < defaults["upstream_max_wait_seconds"] + 3

        metrics = await scrape(api)
        assert metrics.value(THROTTLED_CALLS, reason="pacing") == 200.0 - calls
        quota = (await upstream_status(api))["quota"]
        assert (quota["used"], quota["remaining"]) == (
            calls,
            defaults["upstream_daily_quota"] - calls,
        )


# -- logs and secrets -----------------------------------------------------------------------

LEAK_KEY = "LEAKCHECK-7f3a9c"
LEAK_ADMIN_TOKEN = "ADMINCHECK-42be1d"
LOG_KEYS = {"ts", "level", "logger", "msg", "request_id"}
# What the service answers for each simulator fault, the daily series and the quote alike.
FAULT_STATUSES = {
    FaultMode.DOWN: 502,
    FaultMode.SLOW: 504,  # slower than UPSTREAM_TIMEOUT_SECONDS
    FaultMode.HTTP_500: 502,
    FaultMode.BAD_JSON: 502,
    FaultMode.DROP: 502,
    FaultMode.INVALID_KEY: 502,
    FaultMode.PREMIUM: 502,
    # Last: its message quotes the API key, and it stops upstream calls for a day, so the
    # quote after the daily series is held back unsent.
    FaultMode.RATE_LIMITED: 503,
}


def assert_secrets_absent(text: str, where: str) -> None:
    for secret in (LEAK_KEY, LEAK_ADMIN_TOKEN):
        assert secret not in text, f"{secret!r} leaked in {where}:\n{text}"


async def test_api_key_never_leaks_and_logs_are_json_lines(start_stack: StartStack) -> None:
    stack = start_stack(
        ALPHAVANTAGE_API_KEY=LEAK_KEY,
        ADMIN_TOKEN=LEAK_ADMIN_TOKEN,
        LOG_LEVEL="DEBUG",
        UPSTREAM_TIMEOUT_SECONDS="0.5",
        # Every fault must reach the simulator; the breaker is opened by hand further down.
        BREAKER_FAILURE_THRESHOLD="1000",
        **LONG_BREAKER_TIMEOUT,
    )
    responses: list[httpx.Response] = []
    admin = {"Authorization": f"Bearer {LEAK_ADMIN_TOKEN}"}

    async with connect(stack) as (api, sim):

        async def get(path: str, expected: int, headers: Mapping[str, str] | None = None) -> None:
            response = await api.get(path, headers=headers)
            responses.append(response)
            assert response.status_code == expected, f"GET {path}: {response.text}"

        async def post(path: str, expected: int, headers: Mapping[str, str]) -> None:
            response = await api.post(path, headers=headers)
            responses.append(response)
            assert response.status_code == expected, f"POST {path}: {response.text}"

        await get("/stock/IBM", 200, {"X-Request-ID": "it-123"})
        await get("/stock/IBM/quote", 200)
        await get("/stock/ZZLEAK", 404)
        await get("/stock/ZZLEAK/quote", 404)

        for mode, expected in FAULT_STATUSES.items():
            await sim.set_fault(mode, delay_seconds=1.5)
            symbol = "F" + mode.value.replace("_", "").upper()
            await get(f"/stock/{symbol}", expected)
            await get(f"/stock/{symbol}/quote", expected)
        await sim.set_fault(FaultMode.HEALTHY)
        assert sum((await sim.calls()).values()) == 4 + 2 * len(FAULT_STATUSES) - 1

        await get("/stock/IBM?days=0", 422)
        await get("/stock/A..B", 422)

        await post("/circuit-breaker/open", 401, {"Authorization": "Bearer wrong"})
        await post("/circuit-breaker/open", 200, admin)
        await get("/stock/REJECTED", 503)
        await get("/stock/REJECTED/quote", 503)
        await post("/circuit-breaker/reset", 200, admin)

        for path in ("/circuit-breaker", "/metrics", "/docs", "/openapi.json", "/healthz"):
            await get(path, 200)
        await get("/readyz", 200)
        await get("/no-such-page", 404)

    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught: -15 is a clean exit.
    exit_status = stack.service.stop(signal.SIGTERM)
    assert exit_status in (0, -signal.SIGTERM), stack.service.output_tail()

    for response in responses:
        where = f"the answer to {response.request.method} {response.request.url}"
        assert_secrets_absent(response.text, where)
        assert_secrets_absent(repr(response.headers.multi_items()), f"the headers of {where}")
    stdout, stderr = stack.service.stdout(), stack.service.stderr()
    assert_secrets_absent(stdout, "the service's stdout")
    assert_secrets_absent(stderr, "the service's stderr")

    entries = []
    for line in stdout.splitlines():
        if line.strip():
            entry = json.loads(line)
            assert isinstance(entry, dict), line
            assert entry.keys() >= LOG_KEYS, line
            entries.append(entry)
    assert any(entry["request_id"] == "it-123" for entry in entries), stdout
    assert any(entry["logger"] == "app.access" for entry in entries), stdout
    assert entries[-1]["msg"].startswith("Finished server process"), stdout


# -- launching ------------------------------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_make_run_serves_from_the_simulator_and_stops_it(
    servers: ServerPool, stop_signal: signal.Signals
) -> None:
    # pydantic-settings would read a .env file from the launcher's working directory.
    assert not (ROOT / ".env").exists(), f"move {ROOT / '.env'} away to run this test"
    simulator_port = free_port()
    launcher = servers.start_launcher(simulator_port, {})  # no ALPHAVANTAGE_API_KEY

    with http_client(launcher.url) as client:
        response = client.get("/stock/IBM")
    assert response.status_code == 200, response.text
    assert response.json()["symbol"] == "IBM"
    assert response.json()["source"] == "upstream"

    launcher.stop(stop_signal)

    mentions = [line for line in launcher.stdout().splitlines() if "simulator" in line.lower()]
    assert len(mentions) == 1, launcher.output_tail()
    assert "ALPHAVANTAGE_API_KEY is not set" in mentions[0]
    assert json.loads(mentions[0])["level"] == "WARNING"
    assert wait_until_port_closed(simulator_port, timeout=3), (
        f"the simulator still listens on port {simulator_port} after the launcher got "
        f"{stop_signal.name}"
    )


def test_bad_configuration_stops_startup_with_one_clear_message(tmp_path: Path) -> None:
    env = server_environment({"ALPHAVANTAGE_API_KEY": "a-key", "BREAKER_FAILURE_THRESHOLD": "0"})
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert time.monotonic() - started < 10
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "BREAKER_FAILURE_THRESHOLD" in output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output


def test_bad_configuration_under_uvicorn_fails_without_a_traceback(tmp_path: Path) -> None:
    """Production's `uvicorn app.main:app` reads the settings in the lifespan: a bad value must
    stop it with the same one-line message as `python -m app`, not a traceback."""
    env = server_environment({"ALPHAVANTAGE_API_KEY": "a-key", "BREAKER_FAILURE_THRESHOLD": "0"})
    result = subprocess.run(
        [
            *(sys.executable, "-m", "uvicorn", "app.main:app"),
            *("--host", "127.0.0.1", "--port", str(free_port())),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "BREAKER_FAILURE_THRESHOLD" in output
    assert "Traceback" not in output, output
