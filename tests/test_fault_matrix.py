"""A fault matrix over real sockets: every way Alpha Vantage fails, as the service answers it.

The simulator and the service run as real uvicorn servers on 127.0.0.1 (tests/servers.py).
Each case asserts, through HTTP only: the answer (status, `{"detail"}` body, Retry-After), the
breaker (`GET /circuit-breaker`), the calls that reached the simulator (`GET /_stats`) and what
`GET /metrics` counted between a scrape before the case and one after it.

Cases that need no settings of their own share one simulator and service (`shared`), with the
breaker reset between them; the others start their own. Every request names a symbol of its
own, so the cache never hides an upstream call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from app.simulator import FaultMode
from tests.helpers import (
    BREAKER_STATE,
    HTTP_REQUESTS,
    REJECTED_CALLS,
    STATE_CHANGES,
    THROTTLED_CALLS,
    UPSTREAM_CALLS,
    Scrape,
    SimulatorControl,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
    trip,
    upstream_status,
)
from tests.servers import (
    ServerPool,
    Stack,
    StartStack,
    async_http_client,
    connect,
    free_port,
    timed_get,
)

pytestmark = pytest.mark.integration

DAILY = "TIME_SERIES_DAILY"
STOCK_ROUTE = "/stock/{symbol}"
API_KEY = "FAULTMATRIX-KEY-93c1"
ADMIN_TOKEN = "fault-matrix-admin"
SECRETS = (API_KEY, ADMIN_TOKEN)  # the throttle messages upstream quote the key
FAILURE_THRESHOLD = 5
SUCCESS_THRESHOLD = 3

STATE_VALUES = {"closed": 0.0, "open": 1.0, "half_open": 2.0}

# Every setting spelled out, so that no case depends on a default changing.
BASE_SETTINGS: dict[str, str] = {
    "ALPHAVANTAGE_API_KEY": API_KEY,
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "UPSTREAM_TIMEOUT_SECONDS": "2",
    "UPSTREAM_MAX_BODY_BYTES": "5000000",
    "BREAKER_FAILURE_THRESHOLD": str(FAILURE_THRESHOLD),
    "BREAKER_SUCCESS_THRESHOLD": str(SUCCESS_THRESHOLD),
    # Long enough that an open breaker cannot go half-open while a case looks at it.
    "BREAKER_TIMEOUT_SECONDS": "30",
    "BREAKER_HALF_OPEN_MAX_CALLS": "1",
    "CACHE_TTL_SECONDS": "300",
    "CACHE_STALE_SECONDS": "86400",
    "CACHE_MAX_ENTRIES": "1000",
    "SHUTDOWN_DRAIN_SECONDS": "0",  # stop at once at teardown
    "LOG_LEVEL": "INFO",
}

_serial = itertools.count(1)


def symbol(prefix: str) -> str:
    """A symbol no earlier request in this process has named."""
    return f"{prefix}{next(_serial)}"


# -- servers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One simulator and one service with BASE_SETTINGS, for the cases that need nothing else."""
    pool = ServerPool(tmp_path_factory.mktemp("fault-matrix"))
    try:
        simulator = pool.start_simulator()
        yield Stack(simulator, pool.start_service(simulator, BASE_SETTINGS))
    finally:
        pool.close()


@pytest.fixture
def start_stack(servers: ServerPool) -> StartStack:
    """Starts a simulator, then a service against it with BASE_SETTINGS | settings."""

    def start(**settings: str) -> Stack:
        simulator = servers.start_simulator()
        return Stack(simulator, servers.start_service(simulator, BASE_SETTINGS | settings))

    return start


# -- reading the service ----------------------------------------------------------------------


def increments(
    before: Scrape, after: Scrape, name: str, *labels: str
) -> dict[tuple[str, ...], float]:
    """How much each series of the counter `name` grew, by the values of `labels`; series that
    did not grow are left out."""
    grown: dict[tuple[str, ...], float] = {}
    for (sample, label_set), value in after.samples.items():
        if sample == name:
            delta = value - before.samples.get((sample, label_set), 0.0)
            if delta:
                values = dict(label_set)
                grown[tuple(values[label] for label in labels)] = delta
    return grown


def upstream_calls(before: Scrape, after: Scrape) -> dict[str, float]:
    """TIME_SERIES_DAILY calls counted by outcome; no other function may have been called."""
    grown = increments(before, after, UPSTREAM_CALLS, "function", "outcome")
    assert {function for function, _ in grown} <= {DAILY}, grown
    return {outcome: delta for (_, outcome), delta in grown.items()}


def transitions(before: Scrape, after: Scrape) -> dict[tuple[str, ...], float]:
    return increments(before, after, STATE_CHANGES, "from_state", "to_state")


def rejections(before: Scrape, after: Scrape) -> float:
    return sum(increments(before, after, REJECTED_CALLS, "breaker").values())


def stock_answers(before: Scrape, after: Scrape) -> dict[str, float]:
    """GET /stock/{symbol} answers counted by status."""
    grown = increments(before, after, HTTP_REQUESTS, "route", "method", "status")
    return {status: n for (route, method, status), n in grown.items() if route == STOCK_ROUTE}


async def assert_breaker(
    api: httpx.AsyncClient, state: str, failure_count: int, success_count: int = 0
) -> None:
    status = await breaker_status(api)
    observed = (status["state"], status["failure_count"], status["success_count"])
    assert observed == (state, failure_count, success_count), status
    gauge = (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage")
    assert gauge == STATE_VALUES[state]


async def reset_breaker(api: httpx.AsyncClient) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    response = await api.post("/circuit-breaker/reset", headers=headers)
    assert response.status_code == 200, response.text


async def wait_for_state(api: httpx.AsyncClient, state: str, within: float = 3.0) -> None:
    """Poll /circuit-breaker (reading it commits a due OPEN -> HALF_OPEN) until `state`."""
    deadline = time.monotonic() + within
    while (current := (await breaker_status(api))["state"]) != state:
        assert time.monotonic() < deadline, f"still {current} after {within:g} s, not {state}"
        await asyncio.sleep(0.05)


async def wait_for_calls(sim: SimulatorControl, expected: dict[str, int], within: float) -> None:
    """Poll the simulator's counters until they read `expected`."""
    deadline = time.monotonic() + within
    while (calls := await sim.calls()) != expected:
        assert time.monotonic() < deadline, f"the simulator counted {calls}, not {expected}"
        await asyncio.sleep(0.02)


# -- one failing call per fault -----------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    mode: FaultMode
    status: int
    outcome: str
    detail: str  # a part of the answer's detail
    retry_after: str | None = None


FAULTS = [
    Fault(FaultMode.DROP, 502, "unavailable", "could not reach Alpha Vantage"),
    Fault(FaultMode.HTTP_500, 502, "bad_response", "Alpha Vantage answered HTTP 500"),
    Fault(FaultMode.DOWN, 502, "bad_response", "Alpha Vantage answered HTTP 503"),
    Fault(FaultMode.PREMIUM, 502, "refused", f"requires a premium plan for {DAILY}"),
    Fault(FaultMode.PREMIUM_FULL, 502, "refused", f"requires a premium plan for {DAILY}"),
    Fault(FaultMode.DEMO_KEY, 502, "refused", "refused the demo API key"),
    Fault(FaultMode.INVALID_KEY, 502, "refused", "rejected the API key"),
    Fault(FaultMode.BAD_JSON, 502, "bad_response", "a body that is not JSON"),
    Fault(FaultMode.HTML, 502, "bad_response", "a body that is not JSON"),
    Fault(FaultMode.OVERSIZED, 502, "bad_response", "a body over 5000000 bytes"),
]


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.mode.value)
async def test_a_failing_call_is_answered_counted_and_charged_to_the_breaker(
    shared: Stack, fault: Fault
) -> None:
    async with connect(shared, SECRETS) as (api, sim):
        await reset_breaker(api)
        await sim.set_fault(fault.mode)
        await sim.reset_stats()
        before = await scrape(api)

        response = await api.get(f"/stock/{symbol(fault.mode.value.replace('_', '').upper())}")

        assert fault.detail in error_detail(response, fault.status)
        assert response.headers.get("Retry-After") == fault.retry_after
        assert await sim.calls() == {DAILY: 1}
        await assert_breaker(api, "closed", failure_count=1)
        after = await scrape(api)
        assert upstream_calls(before, after) == {fault.outcome: 1}
        assert stock_answers(before, after) == {str(fault.status): 1}
        assert transitions(before, after) == {}
        assert rejections(before, after) == 0


# -- rate limits: a throttle, not an outage ------------------------------------------------------


@dataclass(frozen=True)
class RateLimit:
    mode: FaultMode
    detail: str
    retry_after: int  # how long the service then holds off, its Retry-After
    quota_reason: bool = False  # a per-day answer: later misses are held back by the quota


RATE_LIMITS = [
    RateLimit(FaultMode.BURST_LIMITED, "rate limit reached (per second)", 1),
    RateLimit(FaultMode.MINUTE_LIMITED, "rate limit reached (per minute)", 60),
    RateLimit(FaultMode.HTTP_429, "rate limit reached (HTTP 429)", 30),  # its Retry-After
    # The quota is off here, and a key that says it is spent is spent: a whole day.
    RateLimit(FaultMode.RATE_LIMITED, "rate limit reached (per day)", 86400, quota_reason=True),
]


@pytest.mark.parametrize("limit", RATE_LIMITS, ids=lambda limit: limit.mode.value)
async def test_a_rate_limit_is_answered_503_and_never_charged_to_the_breaker(
    shared: Stack, servers: ServerPool, limit: RateLimit
) -> None:
    """Each case on a service of its own, as the answer makes it hold off upstream calls;
    held-back misses are refused at once (no wait allowed) rather than sent when it ends."""
    settings = BASE_SETTINGS | {"UPSTREAM_MAX_WAIT_SECONDS": "0"}
    service = servers.start_service(shared.simulator, settings)
    async with connect(Stack(shared.simulator, service), SECRETS) as (api, sim):
        await sim.set_fault(limit.mode)
        await sim.reset_stats()
        before = await scrape(api)

        response = await api.get(f"/stock/{symbol('LIMIT')}")
        assert limit.detail in error_detail(response, 503)
        assert limit.retry_after - 5 <= retry_after(response) <= limit.retry_after
        for _ in range(FAILURE_THRESHOLD):
            response = await api.get(f"/stock/{symbol('HELD')}")
            assert response.status_code == 503, response.text
            assert 1 <= retry_after(response) <= limit.retry_after
        after = await scrape(api)

        assert await sim.calls() == {DAILY: 1}
        assert upstream_calls(before, after) == {"rate_limited": 1}
        reason = "quota" if limit.quota_reason else "pacing"
        throttled = increments(before, after, THROTTLED_CALLS, "reason")
        assert throttled == {(reason,): FAILURE_THRESHOLD}
        await assert_breaker(api, "closed", failure_count=0)
        assert transitions(before, after) == {}


async def test_with_a_free_keys_limits_a_burst_answer_costs_a_second_and_a_daily_one_the_day(
    start_stack: StartStack,
) -> None:
    """The real key's defaults (25 a day, 1 a second). The burst answer mentions the daily
    limit in passing: it must not stop the service for a day; the daily answer must."""
    stack = start_stack(UPSTREAM_DAILY_QUOTA="25", UPSTREAM_RATE_PER_SECOND="1")
    async with connect(stack, SECRETS) as (api, sim):
        await sim.set_fault(FaultMode.BURST_LIMITED)
        response = await api.get(f"/stock/{symbol('BURST')}")
        assert response.status_code == 503, response.text
        assert response.headers["Retry-After"] == "1"
        await sim.set_fault(FaultMode.HEALTHY)
        await asyncio.sleep(2)
        response = await api.get(f"/stock/{symbol('AFTERBURST')}")
        assert response.status_code == 200, response.text
        assert await sim.calls() == {DAILY: 2}
        quota = (await upstream_status(api))["quota"]
        assert (quota["used"], quota["remaining"], quota["blocked_until"]) == (2, 23, None)

        await sim.set_fault(FaultMode.RATE_LIMITED)
        await asyncio.sleep(1)  # past the pacing of the call before
        response = await api.get(f"/stock/{symbol('DAILY')}")
        assert response.status_code == 503, response.text
        # Blocked until the first counted call leaves the rolling day.
        assert 86000 <= retry_after(response) <= 86400
        await sim.set_fault(FaultMode.HEALTHY)
        for _ in range(3):
            response = await api.get(f"/stock/{symbol('AFTERDAILY')}")
            assert "quota" in error_detail(response, 503)
        assert await sim.calls() == {DAILY: 3}
        quota = (await upstream_status(api))["quota"]
        assert quota["remaining"] == 0
        assert quota["blocked_until"] is not None
        await assert_breaker(api, "closed", failure_count=0)


async def test_slow_within_the_timeout_succeeds(shared: Stack) -> None:
    async with connect(shared, SECRETS) as (api, sim):
        await reset_breaker(api)
        await sim.set_fault(FaultMode.SLOW, delay_seconds=0.2)
        await sim.reset_stats()
        before = await scrape(api)

        answer = await timed_get(api, f"/stock/{symbol('SLOWOK')}")

        assert answer.response.status_code == 200, answer.response.text
        assert answer.response.json()["source"] == "upstream"
        assert 0.2 <= answer.seconds < 2.0
        assert await sim.calls() == {DAILY: 1}
        await assert_breaker(api, "closed", failure_count=0)
        after = await scrape(api)
        assert upstream_calls(before, after) == {"success": 1}
        assert stock_answers(before, after) == {"200": 1}
        assert transitions(before, after) == {}


async def test_flapping_upstream_never_opens_the_breaker(shared: Stack) -> None:
    """Failures alternate with successes: each success resets the consecutive count."""
    async with connect(shared, SECRETS) as (api, sim):
        await reset_breaker(api)
        await sim.set_fault(FaultMode.FLAPPING)  # restarts the alternation at a good answer
        await sim.reset_stats()
        before = await scrape(api)

        statuses: list[int] = []
        for _ in range(20):
            response = await api.get(f"/stock/{symbol('FLAP')}")
            statuses.append(response.status_code)
            status = await breaker_status(api)
            assert status["state"] == "closed", status
            assert status["failure_count"] <= 1, status

        assert statuses == [200, 502] * 10
        assert await sim.calls() == {DAILY: 20}
        after = await scrape(api)
        assert upstream_calls(before, after) == {"success": 10, "bad_response": 10}
        assert stock_answers(before, after) == {"200": 10, "502": 10}
        assert transitions(before, after) == {}  # no closed -> open, nor any other


# -- cases with settings of their own -----------------------------------------------------------


async def test_connection_refused_is_unavailable_and_five_open_the_breaker(
    shared: Stack, servers: ServerPool
) -> None:
    closed_port = free_port()  # nothing listens on it
    service = servers.start_service(
        shared.simulator,
        BASE_SETTINGS | {"ALPHAVANTAGE_BASE_URL": f"http://127.0.0.1:{closed_port}/query"},
    )
    async with connect(Stack(shared.simulator, service), SECRETS) as (api, sim):
        await sim.set_fault(FaultMode.HEALTHY)
        await sim.reset_stats()
        before = await scrape(api)

        for number in range(1, FAILURE_THRESHOLD + 1):
            response = await api.get(f"/stock/{symbol('REFUSED')}")
            assert error_detail(response, 502) == "could not reach Alpha Vantage (ConnectError)"
            assert "Retry-After" not in response.headers
            if number < FAILURE_THRESHOLD:
                await assert_breaker(api, "closed", failure_count=number)
        await assert_breaker(api, "open", failure_count=FAILURE_THRESHOLD)

        rejected = await api.get(f"/stock/{symbol('REFUSED')}")
        assert "circuit breaker is open" in error_detail(rejected, 503)
        assert 1 <= retry_after(rejected) <= 30

        assert await sim.calls() == {}  # the service was pointed away from the simulator
        after = await scrape(api)
        assert upstream_calls(before, after) == {"unavailable": FAILURE_THRESHOLD}
        assert stock_answers(before, after) == {"502": FAILURE_THRESHOLD, "503": 1}
        assert transitions(before, after) == {("closed", "open"): 1}
        assert rejections(before, after) == 1


async def test_slow_beyond_the_timeout_is_504(start_stack: StartStack) -> None:
    stack = start_stack(UPSTREAM_TIMEOUT_SECONDS="0.5")
    async with connect(stack, SECRETS) as (api, sim):
        await sim.set_fault(FaultMode.SLOW, delay_seconds=1.5)
        await sim.reset_stats()
        before = await scrape(api)

        answer = await timed_get(api, f"/stock/{symbol('SLOWFAIL')}")

        assert error_detail(answer.response, 504) == "Alpha Vantage did not answer within 0.5 s"
        assert "Retry-After" not in answer.response.headers
        assert 0.5 <= answer.seconds < 1.5, f"answered after {answer.seconds:.3f} s"
        assert await sim.calls() == {DAILY: 1}
        await assert_breaker(api, "closed", failure_count=1)
        after = await scrape(api)
        assert upstream_calls(before, after) == {"timeout": 1}
        assert stock_answers(before, after) == {"504": 1}


async def test_body_limit_is_configurable(start_stack: StartStack) -> None:
    stack = start_stack(UPSTREAM_MAX_BODY_BYTES="1000")
    async with connect(stack, SECRETS) as (api, sim):
        await sim.reset_stats()
        before = await scrape(api)

        response = await api.get(f"/stock/{symbol('BIG')}")  # a healthy answer of ~10 kB

        assert error_detail(response, 502) == "Alpha Vantage sent a body over 1000 bytes"
        assert await sim.calls() == {DAILY: 1}
        await assert_breaker(api, "closed", failure_count=1)
        after = await scrape(api)
        assert upstream_calls(before, after) == {"bad_response": 1}


async def test_outage_heals_while_two_half_open_probes_are_in_flight(
    start_stack: StartStack,
) -> None:
    slow = 0.8
    stack = start_stack(BREAKER_TIMEOUT_SECONDS="1", BREAKER_HALF_OPEN_MAX_CALLS="2")
    async with connect(stack, SECRETS) as (api, sim):
        before = await scrape(api)
        await trip(api, sim, FAILURE_THRESHOLD)
        assert (await breaker_status(api))["state"] == "open"
        await sim.set_fault(FaultMode.SLOW, delay_seconds=slow)  # healthy again, but slow
        await wait_for_state(api, "half_open")
        await sim.reset_stats()

        probes = [asyncio.create_task(timed_get(api, f"/stock/{symbol('PROBE')}")) for _ in "ab"]
        await wait_for_calls(sim, {DAILY: 2}, within=slow / 2)  # both probes are upstream
        others = await asyncio.gather(
            *(timed_get(api, f"/stock/{symbol('EXTRA')}") for _ in range(5))
        )
        # Rejected at once: every one of them was answered while the probes were in flight.
        assert not any(probe.done() for probe in probes)
        answers = await asyncio.gather(*probes)

        assert await sim.calls() == {DAILY: 2}
        for other in others:
            assert "circuit breaker is half_open" in error_detail(other.response, 503)
            assert other.response.headers["Retry-After"] == "1"
            assert other.seconds < slow, f"a rejection took {other.seconds:.3f} s"
        for answer in answers:
            assert answer.response.status_code == 200, answer.response.text
            assert answer.response.json()["source"] == "upstream"
            assert answer.seconds >= slow
        await assert_breaker(api, "half_open", failure_count=0, success_count=2)

        response = await api.get(f"/stock/{symbol('HEALED')}")
        assert response.status_code == 200, response.text

        assert await sim.calls() == {DAILY: 3}
        await assert_breaker(api, "closed", failure_count=0)
        after = await scrape(api)
        assert upstream_calls(before, after) == {"bad_response": FAILURE_THRESHOLD, "success": 3}
        assert transitions(before, after) == {
            ("closed", "open"): 1,
            ("open", "half_open"): 1,
            ("half_open", "closed"): 1,
        }
        assert rejections(before, after) == 5
        assert stock_answers(before, after) == {"502": FAILURE_THRESHOLD, "503": 5, "200": 3}


async def test_client_disconnect_during_a_probe_does_not_wedge_the_breaker(
    start_stack: StartStack,
) -> None:
    """The client of the only half-open probe goes away while the probe waits on a slow
    upstream. The service does not cancel the upstream call (single-flight runs it in a task of
    its own, behind asyncio.shield): it runs to its end, counts as a success, and frees the probe
    slot then. Until then other requests are rejected; after it, they are admitted again."""
    slow = 2.0
    stack = start_stack(
        BREAKER_TIMEOUT_SECONDS="1", BREAKER_HALF_OPEN_MAX_CALLS="1", UPSTREAM_TIMEOUT_SECONDS="5"
    )
    async with connect(stack, SECRETS) as (api, sim):
        before = await scrape(api)
        await trip(api, sim, FAILURE_THRESHOLD)
        assert (await breaker_status(api))["state"] == "open"
        await sim.set_fault(FaultMode.SLOW, delay_seconds=slow)
        await wait_for_state(api, "half_open")
        await sim.reset_stats()

        async with async_http_client(stack.service.url) as doomed:
            started = time.monotonic()
            request = asyncio.create_task(doomed.get(f"/stock/{symbol('GONE')}"))
            await asyncio.sleep(0.3)
            await wait_for_calls(sim, {DAILY: 1}, within=1.0)  # the probe waits on the simulator
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        # The client is closed, and with it the probe's TCP connection.
        disconnected = time.monotonic()
        await sim.set_fault(FaultMode.HEALTHY)

        statuses: Counter[int] = Counter()
        while True:
            response = await api.get(f"/stock/{symbol('AFTER')}")
            statuses[response.status_code] += 1
            if response.status_code == 200:
                break
            assert "circuit breaker is half_open" in error_detail(response, 503)
            assert time.monotonic() - disconnected < 5.0, "the probe slot was never freed"
            await asyncio.sleep(0.1)
        admitted = time.monotonic() - started

        # Admitted once the abandoned call had its answer, `slow` after it started: not before
        # (the slot stayed taken), and promptly after.
        assert slow <= admitted < slow + 1.0, f"admitted {admitted:.2f} s after the probe began"
        assert response.json()["source"] == "upstream"
        # The abandoned probe's success counts: one more success closes the breaker.
        await assert_breaker(api, "half_open", failure_count=0, success_count=2)
        response = await api.get(f"/stock/{symbol('AFTER')}")
        assert response.status_code == 200, response.text
        await assert_breaker(api, "closed", failure_count=0)

        assert await sim.calls() == {DAILY: 3}
        after = await scrape(api)
        assert upstream_calls(before, after) == {"bad_response": FAILURE_THRESHOLD, "success": 3}
        assert transitions(before, after) == {
            ("closed", "open"): 1,
            ("open", "half_open"): 1,
            ("half_open", "closed"): 1,
        }
        assert rejections(before, after) == statuses[503]
