"""GET /stock/{symbol} and GET /stock/{symbol}/quote (app/routes/stock.py): what they answer,
which symbols and days they take, and their caching headers, against the in-process
simulator."""

from __future__ import annotations

import csv
import datetime as dt
import io
import time
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from app.main import create_app
from app.rendering import entity_tag
from app.resources import Resources
from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import ADMIN, FakeClock, make_settings, serve
from tests.helpers import (
    ENDPOINTS,
    SimulatorControl,
    assert_prices,
    error_detail,
    is_number,
    trip,
)

QUOTE_FIELDS = {
    "symbol",
    "price",
    "open",
    "high",
    "low",
    "volume",
    "latest_trading_day",
    "previous_close",
    "change",
    "change_percent",
    "source",
}


# -- GET /stock/{symbol} ---------------------------------------------------------------------------


class TestDailyPrices:
    async def test_answers_thirty_days_newest_first_by_default(
        self, api: httpx.AsyncClient
    ) -> None:
        response = await api.get("/stock/IBM")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == {"symbol", "last_refreshed", "time_zone", "source", "prices"}
        assert body["symbol"] == "IBM"
        assert body["source"] == "upstream"
        assert body["time_zone"] == "US/Eastern"
        assert_prices(body["prices"], 30)
        assert body["last_refreshed"] == body["prices"][0]["date"]

    @pytest.mark.parametrize(
        ("requested", "symbol"),
        [
            ("IBM", "IBM"),
            ("ibm", "IBM"),
            ("BRK.B", "BRK.B"),
            ("RDS-A", "RDS-A"),
            ("TSCO.LON", "TSCO.LON"),
            ("600104.SHH", "600104.SHH"),
            ("brk-b", "BRK-B"),
            ("Tsco.Lon", "TSCO.LON"),
            ("A", "A"),
            ("ABCDEFGHIJ.KLMNO-PQR", "ABCDEFGHIJ.KLMNO-PQR"),  # 20 characters, the maximum
        ],
    )
    @ENDPOINTS
    async def test_valid_symbol_is_upper_cased(
        self, api: httpx.AsyncClient, endpoint: str, requested: str, symbol: str
    ) -> None:
        response = await api.get(endpoint.format(requested))
        assert response.status_code == 200, response.text
        assert response.json()["symbol"] == symbol

    async def test_case_variants_share_one_cache_entry(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        assert (await api.get("/stock/brk.b")).json()["source"] == "upstream"
        assert (await api.get("/stock/BRK.B")).json()["source"] == "cache"
        assert (await api.get("/stock/Brk.B")).json()["source"] == "cache"
        assert await sim.total_calls() == 1

    @pytest.mark.parametrize(
        "symbol",
        [
            "^GSPC",
            "A..B",
            "A-",
            "-A",
            ".A",
            "A.",
            "A.-B",
            "A B",
            " IBM",
            "IBM\n",
            "A_B",
            "IBM%",
            "IBM;DROP",
            "A" * 21,
            "ÄBC",
            "\uff29\uff22\uff2d",  # fullwidth IBM
            "IBM\u0661",  # an Arabic-Indic digit one
        ],
    )
    @ENDPOINTS
    async def test_invalid_symbol_is_422_without_upstream_call(
        self, api: httpx.AsyncClient, sim: SimulatorControl, endpoint: str, symbol: str
    ) -> None:
        response = await api.get(endpoint.format(quote(symbol, safe="")))
        detail = error_detail(response, 422)
        assert detail.startswith("symbol: ")
        assert "letters or digits" in detail
        assert await sim.total_calls() == 0

    @pytest.mark.parametrize("days", [1, 2, 29, 31, 99, 100])
    async def test_days_selects_that_many_prices(self, api: httpx.AsyncClient, days: int) -> None:
        response = await api.get("/stock/IBM", params={"days": days})
        assert response.status_code == 200
        assert_prices(response.json()["prices"], days)

    @pytest.mark.parametrize("days", ["0", "101", "-1", "abc", "1.5", "", "1e2", "9" * 30])
    async def test_invalid_days_is_422_without_upstream_call(
        self, api: httpx.AsyncClient, sim: SimulatorControl, days: str
    ) -> None:
        detail = error_detail(await api.get("/stock/IBM", params={"days": days}), 422)
        assert detail.startswith("days: ")
        assert await sim.total_calls() == 0

    async def test_fewer_prices_when_upstream_has_fewer_days(self) -> None:
        bar = {
            "1. open": "10.0",
            "2. high": "12.5",
            "3. low": "9.5",
            "4. close": "11.25",
            "5. volume": "1200",
        }

        def three_days(request: httpx.Request) -> httpx.Response:
            series = {day: bar for day in ("2024-06-12", "2024-06-14", "2024-06-13")}
            meta = {
                "2. Symbol": request.url.params["symbol"],
                "3. Last Refreshed": "2024-06-14",
                "5. Time Zone": "US/Eastern",
            }
            return httpx.Response(200, json={"Meta Data": meta, "Time Series (Daily)": series})

        app = create_app(
            make_settings(),
            upstream_transport=httpx.MockTransport(three_days),
            configure_logs=False,
        )
        async with serve(app) as api:
            response = await api.get("/stock/NEW", params={"days": 10})
        assert response.status_code == 200
        prices = response.json()["prices"]
        assert_prices(prices, 3)
        assert [point["date"] for point in prices] == ["2024-06-14", "2024-06-13", "2024-06-12"]
        assert prices[0] == {
            "date": "2024-06-14",
            "open": 10.0,
            "high": 12.5,
            "low": 9.5,
            "close": 11.25,
            "volume": 1200,
        }


# -- GET /stock/{symbol}/quote ---------------------------------------------------------------------


class TestQuote:
    async def test_answers_the_latest_bar_as_a_quote(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/stock/ibm/quote")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert set(body) == QUOTE_FIELDS
        assert body["symbol"] == "IBM"
        assert body["source"] == "upstream"
        for key in ("price", "open", "high", "low", "previous_close", "change"):
            assert is_number(body[key]), key
        assert is_number(body["change_percent"])  # "-0.3886%" upstream, a number here
        assert type(body["volume"]) is int
        dt.date.fromisoformat(body["latest_trading_day"])
        assert body["low"] <= min(body["open"], body["price"])
        assert body["high"] >= max(body["open"], body["price"])
        assert body["change"] == pytest.approx(body["price"] - body["previous_close"], abs=0.01)
        percent = body["change"] / body["previous_close"] * 100
        assert body["change_percent"] == pytest.approx(percent, abs=0.01)

    async def test_quote_matches_the_newest_daily_bar(self, api: httpx.AsyncClient) -> None:
        quote_body = (await api.get("/stock/MSFT/quote")).json()
        newest, previous = (await api.get("/stock/MSFT", params={"days": 2})).json()["prices"]
        assert quote_body["latest_trading_day"] == newest["date"]
        assert quote_body["price"] == newest["close"]
        assert quote_body["open"] == newest["open"]
        assert quote_body["high"] == newest["high"]
        assert quote_body["low"] == newest["low"]
        assert quote_body["volume"] == newest["volume"]
        assert quote_body["previous_close"] == previous["close"]


# -- CSV -------------------------------------------------------------------------------------------


def read_csv(response: httpx.Response) -> list[dict[str, str]]:
    """A CSV answer's rows, as the csv module (and pandas.read_csv) reads them."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["vary"] == "Accept"
    return list(csv.DictReader(io.StringIO(response.text)))


class TestCsv:
    async def test_daily_prices_as_csv_hold_the_json_figures(self, api: httpx.AsyncClient) -> None:
        as_json = (await api.get("/stock/IBM", params={"days": 5})).json()
        response = await api.get("/stock/ibm", params={"days": 5, "format": "csv"})
        rows = read_csv(response)
        assert response.headers["content-disposition"] == 'inline; filename="IBM.csv"'
        assert response.text.startswith("date,open,high,low,close,volume\r\n")
        assert len(rows) == 5
        for row, point in zip(rows, as_json["prices"], strict=True):
            assert row["date"] == point["date"]
            assert int(row["volume"]) == point["volume"]
            for field in ("open", "high", "low", "close"):
                assert float(row[field]) == point[field]

    async def test_a_quote_as_csv_is_one_row(self, api: httpx.AsyncClient) -> None:
        as_json = (await api.get("/stock/MSFT/quote")).json()
        response = await api.get("/stock/MSFT/quote", params={"format": "csv"})
        [row] = read_csv(response)
        assert response.headers["content-disposition"] == 'inline; filename="MSFT-quote.csv"'
        assert set(row) == QUOTE_FIELDS
        assert row["source"] == "cache"
        assert row["latest_trading_day"] == as_json["latest_trading_day"]
        assert float(row["change_percent"]) == as_json["change_percent"]

    @pytest.mark.parametrize(
        ("accept", "media_type"),
        [
            ("text/csv", "text/csv"),
            ("text/csv;q=0.9, application/json;q=0.5", "text/csv"),
            ("application/json;q=0.5, text/*", "text/csv"),
            ("text/csv;q=0.5, application/json", "application/json"),
            ("application/json, text/csv", "application/json"),  # a tie: JSON
            ("*/*", "application/json"),
            ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),  # a browser
            ("application/xml", "application/json"),  # neither: JSON rather than a 406
            ("text/csv;q=0, */*", "application/json"),
            ("", "application/json"),
        ],
    )
    @ENDPOINTS
    async def test_accept_chooses_by_its_q_values(
        self, api: httpx.AsyncClient, endpoint: str, accept: str, media_type: str
    ) -> None:
        response = await api.get(endpoint.format("IBM"), headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"].split(";")[0] == media_type
        assert response.headers["vary"] == "Accept"

    @ENDPOINTS
    async def test_format_wins_over_accept(self, api: httpx.AsyncClient, endpoint: str) -> None:
        url = endpoint.format("IBM")
        as_json = await api.get(url, params={"format": "json"}, headers={"Accept": "text/csv"})
        assert as_json.headers["content-type"] == "application/json"
        csv_response = await api.get(
            url, params={"format": "csv"}, headers={"Accept": "application/json"}
        )
        read_csv(csv_response)

    @ENDPOINTS
    async def test_an_unknown_format_is_422(
        self, api: httpx.AsyncClient, sim: SimulatorControl, endpoint: str
    ) -> None:
        response = await api.get(endpoint.format("IBM"), params={"format": "xml"})
        assert error_detail(response, 422).startswith("format: ")
        assert await sim.total_calls() == 0

    async def test_errors_stay_json(self, api: httpx.AsyncClient) -> None:
        response = await api.get("/stock/ZZNOPE", params={"format": "csv"})
        assert error_detail(response, 404) == "unknown symbol: ZZNOPE"


# -- HTTP caching (app/http_caching.py) ------------------------------------------------------------


class TestHttpCaching:
    """Every 200 says how old and how fresh it is; the cache runs on a fake clock."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def app(self, settings: Settings, simulator: Starlette, clock: FakeClock) -> FastAPI:
        transport = httpx.ASGITransport(app=simulator)
        return create_app(
            settings, upstream_transport=transport, configure_logs=False, cache_clock=clock
        )

    @ENDPOINTS
    async def test_a_miss_then_a_hit_say_how_old_and_how_fresh_they_are(
        self, api: httpx.AsyncClient, clock: FakeClock, endpoint: str
    ) -> None:
        miss = await api.get(endpoint.format("IBM"))
        assert miss.headers["cache-status"] == "stock-service; fwd=miss; stored; ttl=300"
        assert miss.headers["cache-control"] == "public, max-age=300"
        assert miss.headers["age"] == "0"
        clock.advance(120.5)
        hit = await api.get(endpoint.format("IBM"))
        assert hit.headers["cache-status"] == "stock-service; hit; ttl=179"
        assert hit.headers["cache-control"] == "public, max-age=300"
        assert hit.headers["age"] == "120"
        # When it was fetched: now, less its age (the cache's clock moved, the wall's did not).
        for response, age in ((miss, 0), (hit, 120.5)):
            fetched = parsedate_to_datetime(response.headers["last-modified"]).timestamp()
            assert abs(fetched - (time.time() - age)) <= 2
        # Another body (its source), another strong tag; the tag names the bytes.
        assert miss.headers["etag"] != hit.headers["etag"]
        assert hit.headers["etag"] == entity_tag(hit.content)

    async def test_a_stale_copy_says_so_with_negative_freshness_and_why(
        self, api: httpx.AsyncClient, clock: FakeClock
    ) -> None:
        await api.get("/stock/IBM/quote")
        clock.advance(340)
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        stale = await api.get("/stock/IBM/quote")
        assert stale.json()["source"] == "stale"
        assert stale.headers["cache-status"] == "stock-service; hit; ttl=-40; detail=breaker_open"
        assert stale.headers["cache-control"] == "public, max-age=0, must-revalidate"
        assert stale.headers["age"] == "340"

    @pytest.mark.parametrize(
        ("mode", "detail"), [("down", "bad_response"), ("rate_limited", "rate_limited")]
    )
    async def test_a_stale_copy_names_the_failure_it_stands_in_for(
        self, sim: SimulatorControl, simulator: Starlette, mode: str, detail: str
    ) -> None:
        # Expired at once in both tiers, so the failed call's fallback is the shared copy.
        app = create_app(
            make_settings(cache_ttl_seconds=0),
            upstream_transport=httpx.ASGITransport(app=simulator),
            configure_logs=False,
        )
        async with serve(app) as api:
            await api.get("/stock/IBM")
            await sim.set_fault(FaultMode(mode))
            stale = await api.get("/stock/IBM")
        assert stale.json()["source"] == "stale"
        name, hit, ttl, why = stale.headers["cache-status"].split("; ")
        assert (name, hit, why) == ("stock-service", "hit", f"detail={detail}")
        assert int(ttl.removeprefix("ttl=")) < 0

    async def test_if_none_match_gets_304_with_no_body(self, api: httpx.AsyncClient) -> None:
        await api.get("/stock/IBM")
        hit = await api.get("/stock/IBM")
        for header in (hit.headers["etag"], f'W/"x", W/{hit.headers["etag"]}', "*"):
            response = await api.get("/stock/IBM?days=30", headers={"If-None-Match": header})
            assert response.status_code == 304
            assert response.content == b""
            assert "content-type" not in response.headers
            for name in ("etag", "cache-control", "age", "cache-status"):
                assert response.headers[name] == hit.headers[name], name
        changed = await api.get(
            "/stock/IBM?days=29", headers={"If-None-Match": hit.headers["etag"]}
        )
        assert changed.status_code == 200

    async def test_answers_are_private_once_consumers_exist(
        self, app: FastAPI, api: httpx.AsyncClient
    ) -> None:
        assert (await api.get("/stock/IBM")).headers["cache-control"].startswith("public, ")
        resources: Resources = app.state.resources
        token = await resources.consumers.add("alice", None, None)
        answer = await api.get("/stock/IBM", headers={"Authorization": f"Bearer {token}"})
        assert answer.headers["cache-control"] == "private, max-age=300"

    @pytest.mark.parametrize(
        ("path", "status"), [("/stock/A..B", 422), ("/stock/ZZZZ", 404), ("/nowhere", 404)]
    )
    async def test_errors_are_never_stored(
        self, api: httpx.AsyncClient, path: str, status: int
    ) -> None:
        response = await api.get(path)
        assert response.status_code == status
        assert response.headers["cache-control"] == "no-store"
        assert "etag" not in response.headers

    async def test_a_503_is_never_stored(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await trip(api, sim)
        response = await api.get("/stock/NEVER")
        error_detail(response, 503)
        assert response.headers["cache-control"] == "no-store"
