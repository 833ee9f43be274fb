"""How the tests talk to the service and to the simulator over HTTP, written once.

Plain functions and classes over an `httpx.AsyncClient`: the same ones serve the in-process
tests (the app and the simulator behind `httpx.ASGITransport`, tests/conftest.py) and the
real-socket ones (uvicorn subprocesses on 127.0.0.1, tests/servers.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from app.resources import key_digest
from app.simulator import FaultMode
from app.state import open_state
from app.watchlist import state_key

# -- answers ---------------------------------------------------------------------------------


def error_detail(response: httpx.Response, status: int) -> str:
    """Assert an error answer: `status`, JSON, exactly `{"detail": "<non-empty text>"}`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert isinstance(body, dict)
    assert set(body) == {"detail"}
    detail = body["detail"]
    assert isinstance(detail, str)
    assert detail
    return detail


def retry_after(response: httpx.Response) -> int:
    """The Retry-After header: a whole number of seconds, at least one."""
    value = response.headers.get("retry-after", "")
    assert value.isdigit(), f"Retry-After is not an integer number of seconds: {value!r}"
    seconds = int(value)
    assert seconds >= 1, value
    return seconds


def assert_clean(response: httpx.Response, secrets: Collection[str]) -> None:
    """No secret and no traceback, in the body or any header."""
    for secret in secrets:
        assert secret not in response.text
        for name, value in response.headers.multi_items():
            assert secret not in name
            assert secret not in value
    assert "Traceback" not in response.text


def check_every_response(client: httpx.AsyncClient, secrets: Collection[str]) -> None:
    """Make `client` fail the test at any answer that shows one of `secrets` or a traceback."""

    async def check(response: httpx.Response) -> None:
        await response.aread()
        assert_clean(response, secrets)

    client.event_hooks["response"].append(check)


# -- the stock routes ------------------------------------------------------------------------

DAILY = "/stock/{}"
QUOTE = "/stock/{}/quote"
ENDPOINTS = pytest.mark.parametrize("endpoint", [DAILY, QUOTE], ids=["daily", "quote"])
PRICE_FIELDS = {"date", "open", "high", "low", "close", "volume"}


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def assert_prices(prices: object, count: int) -> None:
    """`count` daily prices, newest first, each with every field."""
    assert isinstance(prices, list)
    assert len(prices) == count
    dates = [dt.date.fromisoformat(point["date"]) for point in prices]
    assert dates == sorted(set(dates), reverse=True)  # newest first, no repeats
    for point in prices:
        assert set(point) == PRICE_FIELDS
        assert all(is_number(point[key]) for key in ("open", "high", "low", "close"))
        assert type(point["volume"]) is int


# -- the breaker -----------------------------------------------------------------------------


async def breaker_status(api: httpx.AsyncClient) -> dict[str, Any]:
    """GET /circuit-breaker: the most severe breaker at the top level, all of them in
    `breakers`."""
    response = await api.get("/circuit-breaker")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


_trip_symbols = itertools.count(1)


async def trip(api: httpx.AsyncClient, sim: SimulatorControl, failures: int = 5) -> None:
    """Open the breaker: take the simulator down, then send `failures` requests (the default
    BREAKER_FAILURE_THRESHOLD unless told), each answered 502. Each names a symbol never asked
    before, so that no cached copy answers it."""
    await sim.set_fault(FaultMode.DOWN)
    for _ in range(failures):
        error_detail(await api.get(f"/stock/TRIP{next(_trip_symbols)}"), 502)


# -- the upstream limits ---------------------------------------------------------------------


async def upstream_status(api: httpx.AsyncClient) -> dict[str, Any]:
    """GET /upstream: the daily quota, the pacing bucket, the pause and the bulkheads."""
    response = await api.get("/upstream")
    assert response.status_code == 200, response.text
    status: dict[str, Any] = response.json()
    return status


# -- /metrics --------------------------------------------------------------------------------

BREAKER_STATE = "stock_api_circuit_breaker_state"
STATE_CHANGES = "stock_api_circuit_breaker_state_changes_total"
REJECTED_CALLS = "stock_api_circuit_breaker_rejected_calls_total"
UPSTREAM_CALLS = "stock_api_upstream_calls_total"
THROTTLED_CALLS = "stock_api_upstream_throttled_calls_total"
CACHE_REQUESTS = "stock_api_cache_requests_total"
HTTP_REQUESTS = "stock_api_http_requests_total"

Series = tuple[str, frozenset[tuple[str, str]]]  # a sample's name and labels


@dataclass(frozen=True)
class Scrape:
    """One /metrics exposition, as prometheus_client's own parser reads it."""

    text: str
    samples: dict[Series, float]

    def value(self, name: str, **labels: str) -> float:
        """The value of the sample `name` with exactly `labels`."""
        series = (name, frozenset(labels.items()))
        assert series in self.samples, f"no sample {name} {labels} in:\n{self.text}"
        return self.samples[series]

    def state_changes(self, from_state: str, to_state: str, breaker: str = "alphavantage") -> float:
        """How many times `breaker` went from `from_state` to `to_state`."""
        return self.value(STATE_CHANGES, breaker=breaker, from_state=from_state, to_state=to_state)

    def label_values(self, label: str | None = None) -> set[str]:
        """Every value that `label` (any label, without one) takes in a sample."""
        return {
            value
            for _, labels in self.samples
            for name, value in labels
            if label is None or name == label
        }


async def scrape(api: httpx.AsyncClient) -> Scrape:
    """GET /metrics, parsed; every sample must appear once."""
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    samples: dict[Series, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            series = (sample.name, frozenset(sample.labels.items()))
            assert series not in samples, f"{sample.name} {sample.labels} is exported twice"
            samples[series] = sample.value
    return Scrape(response.text, samples)


# -- the simulator ---------------------------------------------------------------------------


class SimulatorControl:
    """Switches the simulator's faults and reads its call counters, through its own endpoints
    (`/_faults`, `/_stats`): `client` points at the simulator, over a socket or in-process."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def set_fault(
        self, mode: FaultMode, delay_seconds: float | None = None, function: str | None = None
    ) -> None:
        """Fail every /query call as `mode` says (only `function`'s calls, when named); without
        `delay_seconds`, the simulator's default delay (2 s) for `slow`."""
        payload: dict[str, object] = {"mode": mode.value}
        if delay_seconds is not None:
            payload["delay_seconds"] = delay_seconds
        if function is not None:
            payload["function"] = function
        response = await self._client.post("/_faults", json=payload)
        assert response.status_code == 200, response.text

    async def reset_stats(self) -> None:
        response = await self._client.post("/_stats/reset")
        assert response.status_code == 200, response.text

    async def calls(self) -> dict[str, int]:
        """The /query calls received since the last reset, by function."""
        calls: dict[str, int] = (await self._stats()).json()["calls"]
        return calls

    async def total_calls(self) -> int:
        """The /query calls received since the last reset, all functions together."""
        total = (await self._stats()).json()["total"]
        assert isinstance(total, int)
        return total

    async def _stats(self) -> httpx.Response:
        response = await self._client.get("/_stats")
        assert response.status_code == 200, response.text
        return response


# -- the event stream (GET /circuit-breaker/events) ------------------------------------------


STREAM_GUARD_SECONDS = 5.0


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: Any  # the `data:` line, parsed as JSON
    id: int | None


class EventStream:
    """Reads a `text/event-stream` answer event by event, as a browser's EventSource would,
    keeping the comments (heartbeats) it skips."""

    def __init__(self, lines: AsyncIterator[str], headers: httpx.Headers | None = None) -> None:
        self.headers = headers or httpx.Headers()
        self.comments: list[str] = []
        self._lines = lines

    async def next(self, event: str | None = None) -> ServerSentEvent:
        """The next event (of type `event`, skipping others); fails the test after
        STREAM_GUARD_SECONDS (a guard against a hang, not a timing goal) or at the stream's
        end."""
        async with asyncio.timeout(STREAM_GUARD_SECONDS):
            while True:
                received = await self._read_event()
                assert received is not None, "the stream ended"
                if event is None or received.event == event:
                    return received

    async def next_comment(self) -> str:
        """The next comment line (a heartbeat), which must come before any event."""
        async with asyncio.timeout(STREAM_GUARD_SECONDS):
            async for line in self._lines:
                assert not line or line.startswith(":"), f"not a comment: {line}"
                if line:
                    self.comments.append(line)
                    return line
        raise AssertionError("the stream ended")

    async def ended(self) -> bool:
        """Read on until the stream ends: True if it does within STREAM_GUARD_SECONDS."""
        try:
            async with asyncio.timeout(STREAM_GUARD_SECONDS):
                while await self._read_event() is not None:
                    pass
        except TimeoutError:
            return False
        return True

    async def _read_event(self) -> ServerSentEvent | None:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if not line:
                if "event" in fields:
                    event_id = fields.get("id")
                    return ServerSentEvent(
                        fields["event"],
                        json.loads(fields["data"]),
                        None if event_id is None else int(event_id),
                    )
                fields.clear()  # a retry: line, or comments alone
            elif line.startswith(":"):
                self.comments.append(line)
            else:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        return None


@asynccontextmanager
async def event_stream(
    api: httpx.AsyncClient, last_event_id: int | None = None
) -> AsyncIterator[EventStream]:
    """GET /circuit-breaker/events over `api` (a client without response hooks that read the
    body: this one never ends by itself), closed on exit."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    async with api.stream("GET", "/circuit-breaker/events", headers=headers) as response:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response.aiter_lines(), response.headers)


async def transition_history(api: httpx.AsyncClient, limit: int | None = None) -> list[Any]:
    """GET /circuit-breaker/history: the transitions, oldest first."""
    params = {} if limit is None else {"limit": limit}
    response = await api.get("/circuit-breaker/history", params=params)
    assert response.status_code == 200, response.text
    transitions: list[Any] = response.json()["transitions"]
    return transitions


# -- the watchlist -------------------------------------------------------------------------


async def refreshed_long_ago(state_url: str, api_key: str, symbols: Collection[str]) -> None:
    """Record in the store at `state_url` that the watchlist of `api_key` last refreshed
    `symbols` ten days ago, so that a service started on it refreshes them at once (it
    would otherwise wait for the next close)."""
    state = open_state(state_url, timeout=5)

    def write(document: Any, now: float) -> tuple[dict[str, Any], None]:
        return {"refreshed": dict.fromkeys(symbols, now - 10 * 86400)}, None

    try:
        await state.update(state_key(key_digest(SecretStr(api_key))), write)
    finally:
        await state.aclose()
