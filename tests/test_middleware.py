"""What app/middleware.py does to every request: the request id, the last-resort 500, encoded
slashes, and the HTTP metrics by route template."""

from __future__ import annotations

import re
from typing import cast

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app import middleware
from app.metrics import Metrics
from app.simulator import FaultMode
from tests.conftest import serve
from tests.helpers import HTTP_REQUESTS, SimulatorControl, error_detail, scrape

HEX32 = re.compile(r"[0-9a-f]{32}")
ROUTE_LABELS = {
    "/stock/{symbol}",
    "/stock/{symbol}/quote",
    "/circuit-breaker",
    "/circuit-breaker/open",
    "/circuit-breaker/reset",
    "/upstream",
    "/healthz",
    "/readyz",
    "/metrics",
    "unmatched",
}


# -- request ids -----------------------------------------------------------------------------------


class TestRequestId:
    @pytest.mark.parametrize("path", ["/healthz", "/stock/IBM", "/stock/%5E", "/nowhere"])
    async def test_a_plain_request_id_is_echoed(self, api: httpx.AsyncClient, path: str) -> None:
        response = await api.get(path, headers={"X-Request-ID": "abc-123"})
        assert response.headers.get_list("x-request-id") == ["abc-123"]

    async def test_a_request_id_is_generated_when_absent(self, api: httpx.AsyncClient) -> None:
        first = (await api.get("/healthz")).headers["x-request-id"]
        second = (await api.get("/healthz")).headers["x-request-id"]
        assert HEX32.fullmatch(first)
        assert HEX32.fullmatch(second)
        assert first != second

    @pytest.mark.parametrize(
        "sent",
        ["x" * 200, "abc 123", "abc\t123", "", "a/b", "<script>", "id;drop", "a" * 129],
        ids=["200-chars", "space", "tab", "empty", "slash", "markup", "semicolon", "129-chars"],
    )
    async def test_an_unusable_request_id_is_replaced(
        self, api: httpx.AsyncClient, sent: str
    ) -> None:
        response = await api.get("/healthz", headers={"X-Request-ID": sent})
        assert HEX32.fullmatch(response.headers["x-request-id"])

    async def test_the_longest_usable_request_id_is_echoed(self, api: httpx.AsyncClient) -> None:
        sent = "A1._:-" * 21 + "xy"  # 128 characters
        response = await api.get("/healthz", headers={"X-Request-ID": sent})
        assert response.headers["x-request-id"] == sent

    async def test_request_id_on_an_unexpected_error(
        self, app: FastAPI, sim: SimulatorControl
    ) -> None:
        # Over the in-process transport, the simulator's dropped connection reaches the app as
        # an exception it does not expect: the catch-all error handler answers.
        await sim.set_fault(FaultMode.DROP)
        async with serve(app, raise_app_exceptions=False) as api:
            response = await api.get("/stock/IBM", headers={"X-Request-ID": "abc-123"})
        assert error_detail(response, 500) == "internal server error"
        assert response.headers.get("x-request-id") == "abc-123"


# -- encoded slashes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/stock/A%2FB",
        "/stock/%2F",
        "/stock/%2FIBM",
        "/stock/A%2F",
        "/stock/IBM%2Fquote",
        "/stock/IBM%2fquote",
    ],
)
async def test_encoded_slash_in_symbol_never_reaches_upstream(
    api: httpx.AsyncClient, sim: SimulatorControl, path: str
) -> None:
    # "IBM/quote" (or "A/B") is no valid symbol: the request must not be served as another
    # resource (e.g. IBM's quote), and must not reach Alpha Vantage.
    response = await api.get(path)
    assert response.status_code in (307, 404, 422), response.text
    if response.status_code == 422:
        assert error_detail(response, 422).startswith("symbol: ")
    assert await sim.total_calls() == 0


# -- HTTP metrics ----------------------------------------------------------------------------------


async def test_http_requests_are_labelled_by_route_template_only(api: httpx.AsyncClient) -> None:
    for path in (
        "/stock/IBM",
        "/stock/IBM/quote",
        "/stock/ZZIBM",
        "/stock/%5EIBM",
        "/stock/IBM?days=0",
        "/stock/IBM/",
        "/nowhere/IBM",
    ):
        await api.get(path)
    await api.post("/stock/IBM")
    metrics = await scrape(api)
    stock_gets = {"method": "GET", "route": "/stock/{symbol}"}
    assert metrics.value(HTTP_REQUESTS, **stock_gets, status="200") == 1.0
    assert metrics.value(HTTP_REQUESTS, **stock_gets, status="422") == 2.0
    routes = metrics.label_values("route")
    assert "/stock/{symbol}" in routes
    assert "unmatched" in routes
    assert routes <= ROUTE_LABELS
    values = metrics.label_values()
    assert not [value for value in values if "IBM" in value or "nowhere" in value]
    assert "IBM" not in metrics.text


# -- latency of event streams ------------------------------------------------------------------


class RecordedLatency:
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        self.seconds.append(seconds)


@pytest.mark.parametrize(("stream", "observed"), [(True, 1.0), (False, 101.0)])
async def test_an_event_streams_latency_is_the_wait_for_it_to_begin(
    monkeypatch: pytest.MonkeyPatch, stream: bool, observed: float
) -> None:
    """A stream that begins after a second and lasts a hundred more is observed as a second;
    any other answer, as its whole time."""
    now = [0.0]
    monkeypatch.setattr("app.middleware.time.perf_counter", lambda: now[0])

    async def streaming(scope: Scope, receive: Receive, send: Send) -> None:
        scope[middleware.EVENT_STREAM] = stream  # as the event stream's route marks it
        now[0] += 1
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        now[0] += 100
        await send({"type": "http.response.body", "body": b"data: 1\n\n"})

    latency = RecordedLatency()
    app = middleware.RequestContextMiddleware(
        streaming, metrics=cast(Metrics, latency), static_routes=frozenset()
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
        assert (await client.get("http://test/events")).status_code == 200
    assert latency.seconds == [observed]
