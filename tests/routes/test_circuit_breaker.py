"""GET /circuit-breaker and the admin actions POST /circuit-breaker/open and /reset
(app/routes/breaker.py): the breaker as the API shows it, opened by failing calls and closed
by successes or an operator, in each of its modes and scopes (tests/test_breaker.py tests the
breaker itself on a fake clock)."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest

from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import ADMIN, ADMIN_TOKEN, make_settings
from tests.helpers import (
    BREAKER_STATE,
    SimulatorControl,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
    trip,
    upstream_status,
)

BREAKER_FIELDS = {
    "name",
    "state",
    "failure_count",
    "success_count",
    "failure_threshold",
    "success_threshold",
    "timeout_seconds",
    "half_open_max_calls",
    "last_failure_time",
    "opened_at",
    "retry_after_seconds",
    "forced_open",
    "mode",
    "open_timeout_seconds",
    "reopens",
    "window_calls",
    "failure_rate",
    "slow_call_rate",
    "breakers",
}
DAILY_BREAKER = "alphavantage_time_series_daily"
QUOTE_BREAKER = "alphavantage_global_quote"
SEARCH_BREAKER = "alphavantage_symbol_search"
PASSTHROUGH_BREAKER = "alphavantage_passthrough"  # every function passed through


def utc_instant(value: object) -> dt.datetime:
    """An ISO 8601 string in UTC, close to now."""
    assert isinstance(value, str)
    moment = dt.datetime.fromisoformat(value)
    assert moment.utcoffset() == dt.timedelta(0)
    assert abs(moment - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    return moment


# -- the breaker's state ---------------------------------------------------------------------------


class TestCircuitBreaker:
    async def test_status_when_closed(self, api: httpx.AsyncClient) -> None:
        status = await breaker_status(api)
        assert set(status) == BREAKER_FIELDS
        assert status["name"] == "alphavantage"
        assert status["state"] == "closed"
        assert status["failure_count"] == 0
        assert status["success_count"] == 0
        assert status["failure_threshold"] == 5
        assert status["success_threshold"] == 3
        assert status["timeout_seconds"] == 30.0
        assert status["half_open_max_calls"] == 1
        assert status["last_failure_time"] is None
        assert status["opened_at"] is None
        assert status["retry_after_seconds"] == 0

    async def test_five_failures_open_it_and_the_sixth_is_rejected_without_upstream_call(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        assert await sim.total_calls() == 5
        response = await api.get("/stock/SIXTH")
        detail = error_detail(response, 503)
        assert "circuit breaker" in detail
        assert 1 <= retry_after(response) <= 30
        assert await sim.total_calls() == 5
        quote_response = await api.get("/stock/SIXTH/quote")
        error_detail(quote_response, 503)
        retry_after(quote_response)
        assert await sim.total_calls() == 5

    async def test_status_when_open(self, api: httpx.AsyncClient, sim: SimulatorControl) -> None:
        await trip(api, sim)
        status = await breaker_status(api)
        assert status["state"] == "open"
        assert status["failure_count"] == 5
        assert utc_instant(status["opened_at"]) >= utc_instant(status["last_failure_time"])
        assert 0 < status["retry_after_seconds"] <= 30

    async def test_success_clears_the_failure_count(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.HTTP_500)
        for n in range(4):
            error_detail(await api.get(f"/stock/FAIL{n}"), 502)
        assert (await breaker_status(api))["failure_count"] == 4
        utc_instant((await breaker_status(api))["last_failure_time"])
        await sim.set_fault(FaultMode.HEALTHY)
        assert (await api.get("/stock/IBM")).status_code == 200
        assert (await breaker_status(api))["failure_count"] == 0
        await sim.set_fault(FaultMode.HTTP_500)
        error_detail(await api.get("/stock/FAIL9"), 502)
        assert (await breaker_status(api))["state"] == "closed"


class TestBreakerTimeout:
    """A breaker that opens for 50 ms: these tests wait it out on purpose."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(breaker_timeout_seconds=0.05)

    async def test_half_open_after_the_timeout_and_closed_after_three_successes(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        await asyncio.sleep(0.1)
        assert (await breaker_status(api))["state"] == "half_open"
        await sim.set_fault(FaultMode.HEALTHY)
        for symbol in ("ONE", "TWO", "THREE"):
            assert (await api.get(f"/stock/{symbol}")).status_code == 200
        status = await breaker_status(api)
        assert status["state"] == "closed"
        assert status["opened_at"] is None

    async def test_state_gauge_reads_half_open_without_traffic(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker="alphavantage") == 1.0
        await asyncio.sleep(0.1)
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker="alphavantage") == 2.0
        assert metrics.state_changes("closed", "open") == 1.0
        assert metrics.state_changes("open", "half_open") == 1.0

    async def test_forced_open_outlasts_the_timeout(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        await asyncio.sleep(0.1)
        assert (await breaker_status(api))["state"] == "open"
        error_detail(await api.get("/stock/IBM"), 503)
        assert (await scrape(api)).value(BREAKER_STATE, breaker="alphavantage") == 1.0
        assert await sim.total_calls() == 0


class TestSubSecondBreakerTimeout:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(breaker_timeout_seconds=0.5)

    async def test_retry_after_is_rounded_up_to_one_second(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        response = await api.get("/stock/SIXTH")
        error_detail(response, 503)
        assert response.headers["retry-after"] == "1"
        assert 0 < (await breaker_status(api))["retry_after_seconds"] <= 0.5


# -- admin -----------------------------------------------------------------------------------------


class TestAdmin:
    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Bearer "},
            {"Authorization": ADMIN_TOKEN},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
            {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
        ],
        ids=["none", "wrong", "empty", "no-scheme", "basic", "longer", "shorter"],
    )
    @pytest.mark.parametrize("action", ["open", "reset"])
    async def test_without_the_token_is_401(
        self, api: httpx.AsyncClient, action: str, headers: dict[str, str]
    ) -> None:
        response = await api.post(f"/circuit-breaker/{action}", headers=headers)
        error_detail(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert (await breaker_status(api))["state"] == "closed"

    async def test_open_answers_the_snapshot_and_stays_open(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        response = await api.post("/circuit-breaker/open", headers=ADMIN)
        assert response.status_code == 200
        status = response.json()
        assert set(status) == BREAKER_FIELDS
        assert status["state"] == "open"
        utc_instant(status["opened_at"])
        assert status["retry_after_seconds"] > 0
        assert (await breaker_status(api))["state"] == "open"
        rejected = await api.get("/stock/IBM")
        error_detail(rejected, 503)
        retry_after(rejected)
        assert await sim.total_calls() == 0

    async def test_reset_closes_it(self, api: httpx.AsyncClient, sim: SimulatorControl) -> None:
        await trip(api, sim)
        await sim.set_fault(FaultMode.HEALTHY)
        response = await api.post("/circuit-breaker/reset", headers=ADMIN)
        assert response.status_code == 200
        status = response.json()
        assert status["state"] == "closed"
        assert status["failure_count"] == 0
        assert status["opened_at"] is None
        assert status["last_failure_time"] is None
        assert (await api.get("/stock/IBM")).status_code == 200

    async def test_reset_after_force_open_closes_it(self, api: httpx.AsyncClient) -> None:
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        assert (await api.post("/circuit-breaker/reset", headers=ADMIN)).json()["state"] == "closed"
        assert (await api.get("/stock/IBM")).status_code == 200


class TestAdminDisabled:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(admin_token=None)

    @pytest.mark.parametrize("headers", [{}, ADMIN], ids=["anonymous", "bearer"])
    @pytest.mark.parametrize("action", ["open", "reset"])
    async def test_admin_endpoints_are_404(
        self, api: httpx.AsyncClient, action: str, headers: dict[str, str]
    ) -> None:
        response = await api.post(f"/circuit-breaker/{action}", headers=headers)
        assert error_detail(response, 404) == "Not Found"
        assert (await breaker_status(api))["state"] == "closed"


# -- one breaker per function ----------------------------------------------------------------------


class TestFunctionScope:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(breaker_scope="function")

    async def test_a_failing_function_opens_only_its_own_breaker(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.DOWN, function="GLOBAL_QUOTE")
        for n in range(5):
            error_detail(await api.get(f"/stock/FAIL{n}/quote"), 502)
        error_detail(await api.get("/stock/IBM/quote"), 503)  # its breaker is open
        assert (await api.get("/stock/IBM")).status_code == 200  # the daily series is not

        status = await breaker_status(api)
        assert (status["name"], status["state"]) == (QUOTE_BREAKER, "open")  # the worst one
        states = {b["name"]: b["state"] for b in status["breakers"]}
        assert states == {
            DAILY_BREAKER: "closed",
            QUOTE_BREAKER: "open",
            SEARCH_BREAKER: "closed",
            PASSTHROUGH_BREAKER: "closed",
        }
        metrics = await scrape(api)
        assert metrics.value(BREAKER_STATE, breaker=QUOTE_BREAKER) == 1.0
        assert metrics.value(BREAKER_STATE, breaker=DAILY_BREAKER) == 0.0

        bulkheads = (await upstream_status(api))["bulkheads"]
        assert isinstance(bulkheads, list)
        assert [b["name"] for b in bulkheads] == [
            DAILY_BREAKER,
            QUOTE_BREAKER,
            SEARCH_BREAKER,
            PASSTHROUGH_BREAKER,
        ]

    async def test_admin_actions_can_name_one_breaker(self, api: httpx.AsyncClient) -> None:
        response = await api.post(f"/circuit-breaker/open?breaker={DAILY_BREAKER}", headers=ADMIN)
        assert response.status_code == 200
        states = {b["name"]: b["state"] for b in response.json()["breakers"]}
        assert states == {
            DAILY_BREAKER: "open",
            QUOTE_BREAKER: "closed",
            SEARCH_BREAKER: "closed",
            PASSTHROUGH_BREAKER: "closed",
        }
        assert (await api.get("/stock/IBM/quote")).status_code == 200
        error_detail(await api.get("/stock/IBM"), 503)

        response = await api.post("/circuit-breaker/reset?breaker=nope", headers=ADMIN)
        assert "alphavantage_global_quote" in error_detail(response, 404)
        response = await api.post("/circuit-breaker/reset", headers=ADMIN)  # every breaker
        assert {b["state"] for b in response.json()["breakers"]} == {"closed"}


async def test_the_shared_scope_lists_its_one_breaker(api: httpx.AsyncClient) -> None:
    status = await breaker_status(api)
    [only] = status["breakers"]
    assert only == {key: value for key, value in status.items() if key != "breakers"}


# -- failure rate and backoff ----------------------------------------------------------------------


class TestFailureRateMode:
    """Opens when half of the last 4 calls failed, once there are 4."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            breaker_mode="failure_rate",
            breaker_failure_rate_threshold=0.5,
            breaker_minimum_calls=4,
            breaker_window_size=4,
        )

    async def test_it_opens_on_the_rate_not_a_run(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        for symbol in ("IBM", "MSFT"):
            assert (await api.get(f"/stock/{symbol}")).status_code == 200
        await sim.set_fault(FaultMode.HTTP_500)
        error_detail(await api.get("/stock/FAIL1"), 502)
        status = await breaker_status(api)
        assert (status["mode"], status["state"], status["window_calls"]) == (
            "failure_rate",
            "closed",
            3,
        )
        assert status["failure_rate"] == pytest.approx(1 / 3)
        error_detail(await api.get("/stock/FAIL2"), 502)  # 2 of 4: open
        status = await breaker_status(api)
        assert status["state"] == "open"
        response = await api.get("/stock/FAIL3")
        assert "circuit breaker" in error_detail(response, 503)
        assert await sim.total_calls() == 4

    async def test_unknown_symbols_are_not_failures(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        for n in range(6):
            error_detail(await api.get(f"/stock/ZZ{n}"), 404)
        status = await breaker_status(api)
        assert (status["state"], status["window_calls"]) == ("closed", 0)


class TestBackoff:
    """Open for 50 ms at first; a failed probe re-opens it for 50 ms * 100 = 5 s."""

    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(
            breaker_timeout_seconds=0.05,
            breaker_backoff_multiplier=100,
            breaker_backoff_jitter=0,
        )

    async def test_a_failed_probe_re_opens_for_longer_and_retry_after_says_so(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        assert (await breaker_status(api))["open_timeout_seconds"] == 0.05
        await asyncio.sleep(0.1)  # past the first opening: half-open
        error_detail(await api.get("/stock/PROBE"), 502)
        status = await breaker_status(api)
        assert (status["state"], status["reopens"]) == ("open", 1)
        assert status["open_timeout_seconds"] == 5
        assert 4 < status["retry_after_seconds"] <= 5
        response = await api.get("/stock/LATER")
        error_detail(response, 503)
        assert retry_after(response) == 5

        reset = await api.post("/circuit-breaker/reset", headers=ADMIN)
        assert reset.json()["reopens"] == 0
        await trip(api, sim)  # closing forgot the backoff: the first opening again
        assert (await breaker_status(api))["open_timeout_seconds"] == 0.05
