"""GET /search (app/routes/search.py): SYMBOL_SEARCH through the service, cached a day
whatever CACHE_TTL_SECONDS says, against the in-process simulator."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from app.main import create_app
from app.resources import Resources
from app.service import SEARCH_TTL
from tests.conftest import make_settings, serve
from tests.helpers import SimulatorControl, error_detail

MATCH_FIELDS = {
    "symbol",
    "name",
    "type",
    "region",
    "market_open",
    "market_close",
    "timezone",
    "currency",
    "match_score",
}


async def test_answers_the_matches_best_first(
    api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    response = await api.get("/search", params={"keywords": "Tesco"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"keywords", "source", "matches"}
    assert (body["keywords"], body["source"]) == ("tesco", "upstream")
    assert all(set(match) == MATCH_FIELDS for match in body["matches"])
    assert body["matches"][0]["symbol"] == "TSCO.LON"
    assert body["matches"][0]["currency"] == "GBX"
    scores = [match["match_score"] for match in body["matches"]]
    assert scores == sorted(scores, reverse=True)
    assert await sim.calls() == {"SYMBOL_SEARCH": 1}


async def test_nothing_found_is_an_empty_list(api: httpx.AsyncClient) -> None:
    body = (await api.get("/search", params={"keywords": "no such company"})).json()
    assert body["matches"] == []


async def test_case_and_spacing_share_one_cache_entry(
    api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    first = (await api.get("/search", params={"keywords": "tesco plc"})).json()
    again = (await api.get("/search", params={"keywords": "  Tesco   PLC "})).json()
    assert (first["source"], again["source"]) == ("upstream", "cache")
    assert again == {**first, "source": "cache"}
    assert await sim.total_calls() == 1


async def test_a_search_stays_fresh_a_day_whatever_the_cache_ttl(
    simulator: Starlette, sim: SimulatorControl
) -> None:
    app: FastAPI = create_app(
        make_settings(cache_ttl_seconds=0),  # every quote and series is stale at once
        upstream_transport=httpx.ASGITransport(app=simulator),
        configure_logs=False,
    )
    async with serve(app) as api:
        assert (await api.get("/search?keywords=ibm")).json()["source"] == "upstream"
        assert (await api.get("/search?keywords=ibm")).json()["source"] == "cache"
        assert (await api.get("/query?function=SYMBOL_SEARCH&keywords=IBM")).status_code == 200
        assert (await api.get("/stock/IBM/quote")).json()["source"] == "upstream"
        assert (await api.get("/stock/IBM/quote")).json()["source"] == "upstream"
    assert SEARCH_TTL == 86400
    assert await sim.calls() == {"SYMBOL_SEARCH": 1, "GLOBAL_QUOTE": 2}


@pytest.mark.parametrize(
    "keywords",
    ["", "   ", "a" * 65, "tes\u0007co", "IBM;DROP", "<script>", "100%", "a_b", "ibm\u0000"],
    ids=["empty", "blank", "65", "control", "semicolon", "angle", "percent", "underscore", "nul"],
)
async def test_bad_keywords_are_422_without_an_upstream_call(
    api: httpx.AsyncClient, sim: SimulatorControl, keywords: str
) -> None:
    detail = error_detail(await api.get("/search", params={"keywords": keywords}), 422)
    assert detail.startswith("keywords: must be 1 to 64 letters")
    assert await sim.total_calls() == 0


@pytest.mark.parametrize(
    "keywords", ["AT&T", "L'Oréal", "Berkshire Hathaway Inc. (Class B)", "BRK-B", "S+P 500"]
)
async def test_names_as_companies_write_them_are_searched(
    api: httpx.AsyncClient, keywords: str
) -> None:
    response = await api.get("/search", params={"keywords": keywords})
    assert response.status_code == 200, response.text
    assert response.json()["keywords"] == " ".join(keywords.split()).lower()


async def test_without_keywords_it_is_422(api: httpx.AsyncClient) -> None:
    assert error_detail(await api.get("/search"), 422).startswith("keywords: ")


async def test_consumers_need_their_token_and_pay_for_a_miss(
    app: FastAPI, api: httpx.AsyncClient
) -> None:
    resources: Resources = app.state.resources
    token = await resources.consumers.add("alice", 5, None)
    assert (await api.get("/search?keywords=ibm")).status_code == 401
    alice = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        assert (await api.get("/search?keywords=ibm", headers=alice)).status_code == 200
    assert (await api.get("/usage", headers=alice)).json()["used"] == 1  # hits are free
