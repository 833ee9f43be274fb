"""GET /stock/{symbol} and GET /stock/{symbol}/quote (app/routes/stock.py): what they answer,
and which symbols and days they take, against the in-process simulator."""

from __future__ import annotations

import csv
import datetime as dt
import io
from urllib.parse import quote

import httpx
import pytest

from app.main import create_app
from tests.conftest import make_settings, serve
from tests.helpers import ENDPOINTS, SimulatorControl, assert_prices, error_detail, is_number

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
