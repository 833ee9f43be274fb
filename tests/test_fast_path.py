"""The hit fast path (app/fast_path.py, app/hits.py): a repeat of an answer from a fresh hit
is the route's answer, byte for byte and header for header, without the route; tokens, rates,
conditional requests, expiry and refreshes hold as on the route. The app runs against the
in-process simulator, its cache on a fake clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from app.hits import FastHit, HitTable, request_key
from app.main import create_app
from app.rendering import Rendered
from app.resources import Resources
from app.settings import Settings
from tests.conftest import FakeClock, serve
from tests.helpers import CACHE_REQUESTS, HTTP_REQUESTS, error_detail, retry_after, scrape

PATH = "/stock/IBM?days=5"
TTL = 300.0  # the settings' CACHE_TTL_SECONDS


class RouteCalls:
    """Counts the requests that reach the stock routes (each asks the service)."""

    def __init__(self, resources: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("daily", "quote"):
            monkeypatch.setattr(
                resources.service, name, self._counting(getattr(resources.service, name))
            )

    def _counting(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await method(*args, **kwargs)

        return counted


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(settings: Settings, simulator: Starlette, clock: FakeClock) -> FastAPI:
    transport = httpx.ASGITransport(app=simulator)
    return create_app(
        settings, upstream_transport=transport, configure_logs=False, cache_clock=clock
    )


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        yield client


def resources_of(app: FastAPI) -> Resources:
    resources: Resources = app.state.resources
    return resources


@pytest.fixture
def route_calls(
    app: FastAPI, api: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> RouteCalls:
    return RouteCalls(resources_of(app), monkeypatch)


def stable(response: httpx.Response) -> dict[str, str]:
    """The headers, but for the request id and the second Last-Modified falls in."""
    return {k: v for k, v in response.headers.items() if k not in ("x-request-id", "last-modified")}


@pytest.mark.parametrize("path", [PATH, "/stock/IBM/quote"])
async def test_a_repeated_hit_is_the_routes_answer_without_the_route(
    api: httpx.AsyncClient, route_calls: RouteCalls, path: str
) -> None:
    assert (await api.get(path)).json()["source"] == "upstream"
    by_route = await api.get(path)  # the first hit: the route answers and remembers it
    assert route_calls.count == 2
    repeats = [await api.get(path) for _ in range(3)]
    assert route_calls.count == 2
    for repeat in repeats:
        assert repeat.status_code == 200
        assert repeat.content == by_route.content
        assert stable(repeat) == stable(by_route)
        assert repeat.headers["x-request-id"] != by_route.headers["x-request-id"]
    scraped = await scrape(api)
    route = "/stock/{symbol}/quote" if "quote" in path else "/stock/{symbol}"
    assert scraped.value(HTTP_REQUESTS, route=route, method="GET", status="200") == 5
    function = "GLOBAL_QUOTE" if "quote" in path else "TIME_SERIES_DAILY"
    assert scraped.value(CACHE_REQUESTS, function=function, result="hit") == 4


async def test_the_exact_path_and_query_and_accept_are_the_key(
    api: httpx.AsyncClient, route_calls: RouteCalls
) -> None:
    await api.get(PATH)
    await api.get(PATH)
    for other in ("/stock/IBM?days=6", "/stock/ibm?days=5", "/stock/IBM?days=5&x=1"):
        assert (await api.get(other)).json()["source"] == "cache"
    assert route_calls.count == 5
    await api.get(PATH, headers={"Accept": "text/csv"})  # may be rendered otherwise
    assert route_calls.count == 6


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        (PATH, {"Accept": "text/csv"}),
        (f"{PATH}&format=csv", {}),
        ("/stock/IBM/quote?format=csv", {}),
    ],
)
async def test_a_csv_answer_is_repeated_as_csv(
    api: httpx.AsyncClient, route_calls: RouteCalls, path: str, headers: dict[str, str]
) -> None:
    await api.get(path, headers=headers)
    by_route = await api.get(path, headers=headers)
    fast = await api.get(path, headers=headers)
    assert route_calls.count == 2
    assert fast.content == by_route.content
    assert stable(fast) == stable(by_route)
    assert fast.headers["content-type"] == "text/csv; charset=utf-8"
    assert fast.headers["content-disposition"].startswith('inline; filename="IBM')
    assert fast.headers["vary"] == "Accept"
    assert fast.text.startswith(("date,open,", "symbol,"))
    json_answer = await api.get(PATH)  # the same URL without Accept: JSON, by the route
    assert json_answer.headers["content-type"] == "application/json"


async def test_if_none_match_gets_304_from_the_fast_path_as_from_the_route(
    api: httpx.AsyncClient, route_calls: RouteCalls
) -> None:
    await api.get(PATH)
    tag = (await api.get(PATH)).headers["etag"]
    conditional = {"If-None-Match": f'"stale-tag", {tag}'}
    by_route = await api.get("/stock/IBM?days=5&again", headers=conditional)
    assert route_calls.count == 3
    fast = await api.get(PATH, headers=conditional)
    assert route_calls.count == 3
    assert fast.status_code == by_route.status_code == 304
    assert fast.content == by_route.content == b""
    assert stable(fast) == stable(by_route)
    assert set(stable(fast)) == {"etag", "cache-control", "age", "cache-status", "vary"}
    assert (await api.get(PATH, headers={"If-None-Match": '"other"'})).status_code == 200


async def test_an_expired_copy_is_not_repeated(
    api: httpx.AsyncClient, route_calls: RouteCalls, clock: FakeClock
) -> None:
    await api.get(PATH)
    await api.get(PATH)
    clock.advance(TTL - 1)
    fast = await api.get(PATH)
    assert route_calls.count == 2
    assert fast.headers["age"] == str(int(TTL - 1))
    assert fast.headers["cache-status"] == "stock-service; hit; ttl=1"
    clock.advance(1)  # the copy in this process is no longer fresh: the route answers
    await api.get(PATH)
    assert route_calls.count == 3


async def test_a_refreshed_copy_ends_the_entry(
    app: FastAPI, api: httpx.AsyncClient, route_calls: RouteCalls
) -> None:
    await api.get(PATH)
    first = await api.get(PATH)
    resources = resources_of(app)
    entry = resources.hits.get(request_key_of(PATH))
    assert entry is not None
    # The cache now holds another value for the series, as a refresh leaves it.
    refreshed = type(entry.value).model_validate(entry.value.model_dump())  # type: ignore[attr-defined]
    resources.service._cache.put(("TIME_SERIES_DAILY", "IBM"), refreshed)
    again = await api.get(PATH)
    assert route_calls.count == 3  # the route, not the old bytes
    assert again.content == first.content  # the same data, rendered from the new value
    replaced = resources.hits.get(request_key_of(PATH))
    assert replaced is not None
    assert replaced.value is refreshed


def request_key_of(path: str) -> tuple[str, bytes, bytes | None]:
    url = httpx.URL(path)
    # httpx sends Accept: */*
    return url.path, url.query, b"*/*"


async def test_tokens_are_checked_and_a_revoked_one_is_refused(
    app: FastAPI, api: httpx.AsyncClient, route_calls: RouteCalls
) -> None:
    consumers = resources_of(app).consumers
    token = await consumers.add("alice", None, None)
    await consumers.add("bob", None, None)
    alice = {"Authorization": f"Bearer {token}"}
    await api.get(PATH, headers=alice)
    by_route = await api.get(PATH, headers=alice)
    fast = await api.get(PATH, headers=alice)
    assert route_calls.count == 2
    assert fast.headers["cache-control"] == by_route.headers["cache-control"]
    assert fast.headers["cache-control"] == f"private, max-age={int(TTL)}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"}):
        refused = await api.get(PATH, headers=headers)
        error_detail(refused, 401)
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.headers["cache-control"] == "no-store"
    # Two Authorization headers: the first decides, on the fast path as on the route.
    twice = [("Authorization", "Bearer wrong"), ("Authorization", f"Bearer {token}")]
    error_detail(await api.get(PATH, headers=twice), 401)
    assert await consumers.revoke("alice")
    error_detail(await api.get(PATH, headers=alice), 401)
    assert route_calls.count == 2  # refused on the way: no answer from the route either


async def test_a_consumers_rate_holds_on_the_fast_path_and_counts_once(
    app: FastAPI, api: httpx.AsyncClient, route_calls: RouteCalls
) -> None:
    token = await resources_of(app).consumers.add("alice", None, 3)  # a burst of 3
    alice = {"Authorization": f"Bearer {token}"}
    assert [(await api.get(PATH, headers=alice)).status_code for _ in range(3)] == [200] * 3
    throttled = await api.get(PATH, headers=alice)
    assert "3 requests a second" in error_detail(throttled, 429)
    assert retry_after(throttled) >= 1
    assert route_calls.count == 2  # the third answer was the fast path's
    scraped = await scrape(api)
    assert (
        scraped.value(
            "stock_api_consumer_throttled_requests_total", consumer="alice", reason="consumer_rate"
        )
        == 1
    )


def test_the_table_is_bounded_and_forgets_the_least_recently_used() -> None:
    table = HitTable(max_entries=2)
    hit = FastHit(
        "F", "S", object(), Rendered(b"", '""'), [(b"content-type", b"application/json")], None
    )
    keys = [(f"/stock/{n}", b"", None) for n in "ABC"]
    table.remember(keys[0], hit)
    table.remember(keys[1], hit)
    assert table.get(keys[0]) is hit  # A is now more recent than B
    table.remember(keys[2], hit)
    assert len(table) == 2
    assert table.get(keys[1]) is None
    assert table.get(keys[0]) is table.get(keys[2]) is hit
    table.forget(keys[0])
    assert table.get(keys[0]) is None


def test_the_key_is_the_path_the_query_and_accept() -> None:
    scope = {
        "path": "/stock/IBM",
        "query_string": b"days=5",
        "headers": [(b"host", b"x"), (b"accept", b"text/csv")],
    }
    assert request_key(scope) == ("/stock/IBM", b"days=5", b"text/csv")
    assert request_key({**scope, "headers": []}) == ("/stock/IBM", b"days=5", None)


async def test_the_request_id_and_the_access_log_are_the_routes(
    api: httpx.AsyncClient, route_calls: RouteCalls, caplog: pytest.LogCaptureFixture
) -> None:
    await api.get(PATH)
    await api.get(PATH)
    with caplog.at_level(logging.INFO, logger="app.access"):
        fast = await api.get(PATH, headers={"X-Request-ID": "fast-1"})
    assert route_calls.count == 2
    assert fast.headers["x-request-id"] == "fast-1"
    [line] = [record for record in caplog.records if record.name == "app.access"]
    assert line.getMessage() == "GET /stock/{symbol} 200"
    assert line.__dict__["path"] == "/stock/IBM"
