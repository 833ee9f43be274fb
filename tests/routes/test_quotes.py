"""GET /quotes (app/routes/quotes.py): many symbols in one answer, each through the cache,
single flight, limits and breaker as GET /stock/{symbol}/quote; with a premium key, the misses
in one REALTIME_BULK_QUOTES call. Against the in-process simulator."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from app.main import create_app
from app.resources import Resources
from app.simulator import FaultMode
from tests.conftest import ADMIN, make_settings, serve
from tests.helpers import (
    UPSTREAM_CALLS,
    SimulatorControl,
    breaker_status,
    error_detail,
    retry_after,
    scrape,
    trip,
    upstream_status,
)
from tests.routes.test_stock import QUOTE_FIELDS

BULK = "REALTIME_BULK_QUOTES"
RESULT_FIELDS = {"symbol", "status", "quote", "detail", "retry_after"}


async def quotes(api: httpx.AsyncClient, symbols: str, **headers: str) -> list[dict[str, Any]]:
    """GET /quotes for `symbols`, a 200: its per-symbol results, checked for shape."""
    response = await api.get("/quotes", params={"symbols": symbols}, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"quotes", "failed"}
    results: list[dict[str, Any]] = body["quotes"]
    for result in results:
        assert set(result) == RESULT_FIELDS
        if result["status"] == 200:
            assert set(result["quote"]) == QUOTE_FIELDS
            assert result["quote"]["symbol"] == result["symbol"]
            assert result["detail"] is None
        else:
            assert result["quote"] is None
            assert result["detail"]
    assert body["failed"] == sum(result["status"] != 200 for result in results)
    return results


def sources(results: list[dict[str, Any]]) -> dict[str, str | int]:
    """Each symbol's source, or its status when it failed."""
    return {r["symbol"]: r["quote"]["source"] if r["quote"] else r["status"] for r in results}


def app_with(simulator: Starlette, **settings: object) -> FastAPI:
    return create_app(
        make_settings(**settings),
        upstream_transport=httpx.ASGITransport(app=simulator),
        configure_logs=False,
    )


@pytest.fixture
async def premium(simulator: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The service with ALPHAVANTAGE_PLAN=premium, against the test's simulator (`sim`)."""
    async with serve(app_with(simulator, alphavantage_plan="premium")) as api:
        yield api


# -- what it answers -------------------------------------------------------------------------


async def test_every_symbol_in_the_order_asked_each_as_its_quote_endpoint_answers(
    api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    single = (await api.get("/stock/MSFT/quote")).json()
    results = await quotes(api, "ibm, MSFT,tsco.lon,Ibm,msft")
    assert [r["symbol"] for r in results] == ["IBM", "MSFT", "TSCO.LON"]  # repeats count once
    assert sources(results) == {"IBM": "upstream", "MSFT": "cache", "TSCO.LON": "upstream"}
    assert results[1]["quote"] == {**single, "source": "cache"}
    assert await sim.calls() == {"GLOBAL_QUOTE": 3}  # a free key: one call a miss, no bulk
    assert (await api.get("/stock/IBM/quote")).json()["source"] == "cache"


async def test_a_partial_answer_is_a_200_that_says_which_failed_and_why(
    api: httpx.AsyncClient,
) -> None:
    results = await quotes(api, "IBM,ZZNOPE")
    assert results[0]["status"] == 200
    assert results[1] == {
        "symbol": "ZZNOPE",
        "status": 404,
        "quote": None,
        "detail": "unknown symbol: ZZNOPE",
        "retry_after": None,
    }


async def test_symbols_held_back_by_the_quota_say_when_to_come_back(
    simulator: Starlette, sim: SimulatorControl
) -> None:
    async with serve(app_with(simulator, upstream_daily_quota=2)) as api:
        results = await quotes(api, "AAA,BBB,CCC")
    assert [r["status"] for r in results] == [200, 200, 503]
    assert "daily quota" in results[2]["detail"]
    assert results[2]["retry_after"] >= 1
    assert await sim.total_calls() == 2


async def test_when_every_symbol_fails_alike_the_answer_is_that_error(
    api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    assert error_detail(await api.get("/quotes?symbols=ZZA"), 404) == "unknown symbol: ZZA"
    both = error_detail(await api.get("/quotes?symbols=ZZA,ZZB"), 404)
    assert both == "every symbol failed: unknown symbol: ZZA; unknown symbol: ZZB"
    await trip(api, sim)
    response = await api.get("/quotes", params={"symbols": "AAA,BBB"})
    assert "circuit breaker is open" in error_detail(response, 503)
    assert retry_after(response) >= 1


async def test_stale_copies_answer_while_upstream_fails(
    api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    await quotes(api, "IBM")
    await api.post("/circuit-breaker/open", headers=ADMIN)
    results = await quotes(api, "IBM,MSFT")
    assert sources(results) == {"IBM": "cache", "MSFT": 503}  # IBM is still fresh
    assert "circuit breaker" in results[1]["detail"]


# -- what it refuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbols", "words"),
    [
        ("", "give 1 to 100 symbols"),
        (" , ,", "give 1 to 100 symbols"),
        (",".join(f"S{n}" for n in range(101)), "give 1 to 100 symbols, comma-separated (got 101)"),
        ("IBM,A..B,^GSPC", "'A..B', '^GSPC': each must be 1 to 20 letters or digits"),
        ("IBM,A_B", "'A_B': each must be"),
        ("A" * 21, "'AAAAAAAAAAAAAAAAAAAAA': each must be"),
        (",".join(["-"] * 7), "'-', '-', '-', '-', '-' and 2 more: each must be"),
    ],
    ids=["empty", "commas", "101", "malformed", "underscore", "too-long", "many-bad"],
)
async def test_bad_symbols_are_422_naming_them_without_an_upstream_call(
    api: httpx.AsyncClient, sim: SimulatorControl, symbols: str, words: str
) -> None:
    detail = error_detail(await api.get("/quotes", params={"symbols": symbols}), 422)
    assert detail.startswith("symbols: ")
    assert words in detail
    assert await sim.total_calls() == 0


async def test_100_distinct_symbols_are_allowed_and_repeats_do_not_count(
    api: httpx.AsyncClient,
) -> None:
    symbols = [f"S{n}" for n in range(100)]
    results = await quotes(api, ",".join(symbols + [s.lower() for s in symbols]))
    assert [r["symbol"] for r in results] == symbols


async def test_without_symbols_it_is_422(api: httpx.AsyncClient) -> None:
    assert error_detail(await api.get("/quotes"), 422).startswith("symbols: ")


async def test_consumers_need_their_token_and_pay_per_upstream_call(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    resources: Resources = app.state.resources
    token = await resources.consumers.add("alice", 2, None)
    assert (await api.get("/quotes?symbols=IBM")).status_code == 401
    results = await quotes(api, "AAA,BBB,CCC", Authorization=f"Bearer {token}")
    assert [r["status"] for r in results].count(200) == 2
    assert [r["status"] for r in results].count(429) == 1  # its own budget, not the key's
    usage = (await api.get("/usage", headers={"Authorization": f"Bearer {token}"})).json()
    assert usage["used"] == 2


# -- a premium key: one REALTIME_BULK_QUOTES call for the misses -----------------------------


async def test_premium_misses_share_one_bulk_call_and_land_in_the_cache(
    premium: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    free = (await premium.get("/stock/IBM/quote")).json()  # a lone miss: GLOBAL_QUOTE
    results = await quotes(premium, "IBM,MSFT,AAPL,ZZNOPE,TSCO.LON")
    assert sources(results) == {
        "IBM": "cache",
        "MSFT": "upstream",
        "AAPL": "upstream",
        "ZZNOPE": 404,  # left out of the bulk answer
        "TSCO.LON": "upstream",  # not a US listing: a GLOBAL_QUOTE of its own
    }
    assert await sim.calls() == {"GLOBAL_QUOTE": 2, BULK: 1}
    # Stored as GLOBAL_QUOTE's answers are: the quote endpoint now hits them.
    for symbol in ("MSFT", "AAPL", "TSCO.LON"):
        single = (await premium.get(f"/stock/{symbol}/quote")).json()
        bulk = next(r["quote"] for r in results if r["symbol"] == symbol)
        assert single == {**bulk, "source": "cache"}
    assert await sim.calls() == {"GLOBAL_QUOTE": 2, BULK: 1}
    # ... and they are the figures GLOBAL_QUOTE gives.
    assert {k: v for k, v in free.items() if k != "source"} == {
        k: v for k, v in results[0]["quote"].items() if k != "source"
    }
    scraped = await scrape(premium)
    assert scraped.value(UPSTREAM_CALLS, function=BULK, outcome="success") == 1


async def test_premium_bulk_call_counts_once_against_the_quota_and_the_budget(
    simulator: Starlette, sim: SimulatorControl
) -> None:
    app = app_with(simulator, alphavantage_plan="premium", upstream_daily_quota=2)
    async with serve(app) as api:
        resources: Resources = app.state.resources
        token = await resources.consumers.add("alice", 1, None)
        results = await quotes(
            api, ",".join(f"S{n}" for n in range(50)), Authorization=f"Bearer {token}"
        )
        assert {r["status"] for r in results} == {200}
        assert (await upstream_status(api))["quota"]["used"] == 1
        usage = await api.get("/usage", headers={"Authorization": f"Bearer {token}"})
        assert usage.json()["used"] == 1
    assert await sim.calls() == {BULK: 1}


async def test_a_quote_asked_for_during_the_bulk_call_joins_it(
    premium: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    await sim.set_fault(FaultMode.SLOW, delay_seconds=0.2)
    batch, single = await asyncio.gather(
        quotes(premium, "AAA,BBB,CCC"), premium.get("/stock/BBB/quote")
    )
    assert single.status_code == 200
    assert await sim.calls() == {BULK: 1}
    assert single.json() == {**batch[1]["quote"], "source": single.json()["source"]}


async def test_premium_refused_for_a_free_key_is_a_502_and_one_breaker_failure(
    premium: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    await sim.set_fault(FaultMode.PREMIUM, function=BULK)
    symbols = ",".join(f"S{n}" for n in range(20))  # more than a bulkhead's worth
    response = await premium.get("/quotes", params={"symbols": symbols})
    assert "requires a premium plan for REALTIME_BULK_QUOTES" in error_detail(response, 502)
    assert (await breaker_status(premium))["failure_count"] == 1
    assert await sim.calls() == {BULK: 1}


async def test_as_csv_a_row_a_symbol(api: httpx.AsyncClient) -> None:
    as_json = await quotes(api, "IBM,ZZNOPE")
    response = await api.get("/quotes", params={"symbols": "IBM,ZZNOPE", "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'inline; filename="quotes.csv"'
    ibm, unknown = csv.DictReader(io.StringIO(response.text))
    assert list(ibm) == [
        "symbol",
        "status",
        "detail",
        "retry_after",
        *sorted(QUOTE_FIELDS - {"symbol"}, key=list(as_json[0]["quote"]).index),
    ]
    assert (ibm["symbol"], ibm["status"], ibm["detail"], ibm["source"]) == (
        "IBM",
        "200",
        "",
        "cache",
    )
    assert float(ibm["price"]) == as_json[0]["quote"]["price"]
    assert (unknown["status"], unknown["detail"], unknown["price"]) == (
        "404",
        "unknown symbol: ZZNOPE",
        "",
    )
    accepted = await api.get("/quotes?symbols=IBM", headers={"Accept": "text/csv"})
    assert accepted.text.startswith("symbol,status,detail,retry_after,price,")


async def test_premium_a_consumer_past_its_budget_gets_its_429_for_new_symbols(
    simulator: Starlette, sim: SimulatorControl
) -> None:
    app = app_with(simulator, alphavantage_plan="premium")
    async with serve(app) as api:
        resources: Resources = app.state.resources
        alice = {"Authorization": f"Bearer {await resources.consumers.add('alice', 1, None)}"}
        assert {r["status"] for r in await quotes(api, "AAA,BBB", **alice)} == {200}
        results = await quotes(api, "AAA,CCC,DDD", **alice)
        assert sources(results) == {"AAA": "cache", "CCC": 429, "DDD": 429}  # hits stay free
        spent = await api.get("/quotes", params={"symbols": "CCC,DDD"}, headers=alice)
        assert "spent its 1 upstream calls" in error_detail(spent, 429)
        assert retry_after(spent) >= 1
    assert await sim.calls() == {BULK: 1}
