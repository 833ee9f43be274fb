"""GET /query (app/routes/gateway.py, app/gateway.py): Alpha Vantage's API answered through the
service, in Alpha Vantage's own shapes, against the in-process simulator."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from app.main import create_app
from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import ADMIN, API_KEY, make_settings, serve
from tests.helpers import HTTP_REQUESTS, SimulatorControl, retry_after, scrape

DAILY_META = {
    "1. Information": "Daily Prices (open, high, low, close) and Volumes",
    "4. Output Size": "Compact",
    "5. Time Zone": "US/Eastern",
}
BAR_KEYS = ["1. open", "2. high", "3. low", "4. close", "5. volume"]
QUOTE_KEYS = [
    "01. symbol",
    "02. open",
    "03. high",
    "04. low",
    "05. price",
    "06. volume",
    "07. latest trading day",
    "08. previous close",
    "09. change",
    "10. change percent",
]
PRICE = re.compile(r"^\d+\.\d{4}$")
SIGNED = re.compile(r"^-?\d+\.\d{4}$")
DOCS = "https://www.alphavantage.co/documentation/"
INTRADAY = {"function": "TIME_SERIES_INTRADAY", "symbol": "IBM", "interval": "5min"}


def query(**params: str) -> str:
    """A /query URL, with a consumer's token as existing clients send it."""
    return str(httpx.URL("/query", params={**params, "apikey": "consumer-token"}))


def av_json(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    """Alpha Vantage's JSON form: `status`, application/json, a 4-space indent, no final
    newline."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert not response.text.endswith("\n")
    body: dict[str, Any] = response.json()
    if len(body) == 1 and isinstance(next(iter(body.values())), dict):
        assert response.text.startswith('{\n    "')
    return body


def error_message(response: httpx.Response) -> str:
    body = av_json(response)
    assert list(body) == ["Error Message"]
    message: str = body["Error Message"]
    return message


def information(response: httpx.Response, status: int) -> str:
    body = av_json(response, status)
    assert list(body) == ["Information"]
    message: str = body["Information"]
    return message


# -- the data --------------------------------------------------------------------------------


class TestDaily:
    async def test_answers_alpha_vantages_compact_series(self, api: httpx.AsyncClient) -> None:
        body = av_json(await api.get(query(function="TIME_SERIES_DAILY", symbol="ibm")))
        assert list(body) == ["Meta Data", "Time Series (Daily)"]
        meta, series = body["Meta Data"], body["Time Series (Daily)"]
        assert list(meta) == [
            "1. Information",
            "2. Symbol",
            "3. Last Refreshed",
            "4. Output Size",
            "5. Time Zone",
        ]
        assert meta.items() >= DAILY_META.items()
        assert meta["2. Symbol"] == "IBM"
        assert len(series) == 100
        dates = list(series)
        assert dates == sorted(dates, reverse=True)
        assert meta["3. Last Refreshed"] == dates[0]
        for bar in series.values():
            assert list(bar) == BAR_KEYS
            assert all(PRICE.match(bar[key]) for key in BAR_KEYS[:4])
            assert bar["5. volume"].isdigit()

    async def test_shares_the_stock_routes_cache(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        prices = (await api.get("/stock/IBM?days=1")).json()["prices"][0]
        body = av_json(await api.get(query(function="TIME_SERIES_DAILY", symbol="IBM")))
        bar = body["Time Series (Daily)"][prices["date"]]
        assert float(bar["4. close"]) == prices["close"]
        assert int(bar["5. volume"]) == prices["volume"]
        assert await sim.calls() == {"TIME_SERIES_DAILY": 1}

    async def test_outputsize_full_is_premium_as_alpha_vantage_says(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        url = query(function="TIME_SERIES_DAILY", symbol="IBM", outputsize="full")
        assert "premium" in information(await api.get(url), 200)
        assert await sim.total_calls() == 0


class TestQuote:
    async def test_answers_alpha_vantages_global_quote(self, api: httpx.AsyncClient) -> None:
        body = av_json(await api.get(query(function="GLOBAL_QUOTE", symbol="msft")))
        assert list(body) == ["Global Quote"]
        quote = body["Global Quote"]
        assert list(quote) == QUOTE_KEYS
        assert quote["01. symbol"] == "MSFT"
        for key in ("02. open", "03. high", "04. low", "05. price", "08. previous close"):
            assert PRICE.match(quote[key]), quote[key]
        assert quote["06. volume"].isdigit()
        assert re.match(r"^\d{4}-\d{2}-\d{2}$", quote["07. latest trading day"])
        assert SIGNED.match(quote["09. change"])
        assert re.match(r"^-?\d+\.\d{4}%$", quote["10. change percent"])

    async def test_agrees_with_the_quote_route(self, api: httpx.AsyncClient) -> None:
        ours = (await api.get("/stock/IBM/quote")).json()
        quote = av_json(await api.get(query(function="GLOBAL_QUOTE", symbol="IBM")))
        assert float(quote["Global Quote"]["05. price"]) == ours["price"]


class TestCsv:
    async def test_daily_series_as_alpha_vantages_download(self, api: httpx.AsyncClient) -> None:
        url = query(function="TIME_SERIES_DAILY", symbol="IBM", datatype="csv")
        response = await api.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-download"
        assert response.headers["content-disposition"] == "attachment; filename=daily_IBM.csv"
        lines = response.text.split("\r\n")
        assert lines[0] == "timestamp,open,high,low,close,volume"
        assert lines[-1] == ""  # every line ends in CRLF
        assert len(lines) == 102
        day, *prices, volume = lines[1].split(",")
        assert re.match(r"^\d{4}-\d{2}-\d{2}$", day)
        assert all(PRICE.match(value) for value in prices)
        assert volume.isdigit()

    async def test_quote_with_the_csv_column_names(self, api: httpx.AsyncClient) -> None:
        response = await api.get(query(function="GLOBAL_QUOTE", symbol="IBM", datatype="csv"))
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-download"
        header, row, end = response.text.split("\r\n")
        assert header == (
            "symbol,open,high,low,price,volume,latestDay,previousClose,change,changePercent"
        )
        assert row.startswith("IBM,")
        assert row.endswith("%")
        assert end == ""

    async def test_errors_stay_json(self, api: httpx.AsyncClient) -> None:
        url = query(function="TIME_SERIES_DAILY", symbol="ZZNONE", datatype="csv")
        assert "Invalid API call" in error_message(await api.get(url))


class TestHttpCaching:
    @pytest.mark.parametrize(
        "params",
        [
            {"function": "TIME_SERIES_DAILY", "symbol": "IBM"},
            {"function": "GLOBAL_QUOTE", "symbol": "IBM", "datatype": "csv"},
            {"function": "SYMBOL_SEARCH", "keywords": "tesco"},
            INTRADAY,
        ],
    )
    async def test_data_carries_the_stock_routes_caching_headers(
        self, api: httpx.AsyncClient, params: dict[str, str]
    ) -> None:
        # Each function's own TTL: the numbers are not this test's business.
        miss = await api.get(query(**params))
        assert re.fullmatch(
            r"stock-service; fwd=miss; stored; ttl=\d+", miss.headers["cache-status"]
        )
        hit = await api.get(query(**params))
        assert re.fullmatch(r"stock-service; hit; ttl=\d+", hit.headers["cache-status"])
        assert re.fullmatch(r"public, max-age=\d+", hit.headers["cache-control"])
        assert hit.headers["age"] == "0"
        assert hit.headers["etag"] == miss.headers["etag"]  # the same bytes: no source here
        assert "last-modified" in hit.headers
        again = await api.get(query(**params), headers={"If-None-Match": hit.headers["etag"]})
        assert (again.status_code, again.content) == (304, b"")
        assert "content-disposition" not in again.headers

    async def test_messages_are_never_stored(self, api: httpx.AsyncClient) -> None:
        unknown = await api.get(query(function="TIME_SERIES_DAILY", symbol="ZZNONE"))
        assert "Invalid API call" in error_message(unknown)
        assert unknown.headers["cache-control"] == "no-store"
        assert "etag" not in unknown.headers


class TestSymbolSearch:
    async def test_answers_alpha_vantages_best_matches(self, api: httpx.AsyncClient) -> None:
        body = av_json(await api.get(query(function="SYMBOL_SEARCH", keywords="tesco")))
        assert list(body) == ["bestMatches"]
        first = body["bestMatches"][0]
        assert first == {
            "1. symbol": "TSCO.LON",
            "2. name": "Tesco PLC",
            "3. type": "Equity",
            "4. region": "United Kingdom",
            "5. marketOpen": "08:00",
            "6. marketClose": "16:30",
            "7. timezone": "UTC+01",
            "8. currency": "GBX",
            "9. matchScore": first["9. matchScore"],
        }
        assert PRICE.match(first["9. matchScore"])

    async def test_nothing_found_is_an_empty_list(self, api: httpx.AsyncClient) -> None:
        body = av_json(await api.get(query(function="SYMBOL_SEARCH", keywords="zzz")))
        assert body == {"bestMatches": []}

    async def test_keywords_are_cached_whatever_their_case_and_spacing(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        for keywords in ("tesco plc", "  Tesco   PLC ", "TESCO PLC"):
            av_json(await api.get(query(function="SYMBOL_SEARCH", keywords=keywords)))
        assert await sim.calls() == {"SYMBOL_SEARCH": 1}

    async def test_csv_with_alpha_vantages_columns(self, api: httpx.AsyncClient) -> None:
        url = query(function="SYMBOL_SEARCH", keywords="tesco", datatype="csv")
        response = await api.get(url)
        assert response.headers["content-type"] == "application/x-download"
        lines = response.text.split("\r\n")
        assert lines[0] == (
            "symbol,name,type,region,marketOpen,marketClose,timezone,currency,matchScore"
        )
        assert lines[1].startswith("TSCO.LON,Tesco PLC,Equity,United Kingdom,08:00,16:30,")

    @pytest.mark.parametrize("keywords", [None, " ", "x" * 65, "tesco\x00"])
    async def test_bad_keywords_never_reach_upstream(
        self, api: httpx.AsyncClient, sim: SimulatorControl, keywords: str | None
    ) -> None:
        params = {"function": "SYMBOL_SEARCH"}
        if keywords is not None:
            params["keywords"] = keywords
        assert error_message(await api.get(query(**params))) == (
            f"Invalid API call. Please retry or visit the documentation ({DOCS}) for SYMBOL_SEARCH."
        )
        assert await sim.total_calls() == 0


# -- bad calls -------------------------------------------------------------------------------


class TestBadCalls:
    @pytest.mark.parametrize("function", ["TIME_SERIES_DAILY", "GLOBAL_QUOTE"])
    async def test_unknown_symbol_is_alpha_vantages_error_message(
        self, api: httpx.AsyncClient, function: str
    ) -> None:
        message = error_message(await api.get(query(function=function, symbol="ZZNONE")))
        assert message == (
            f"Invalid API call. Please retry or visit the documentation ({DOCS}) for {function}."
        )

    @pytest.mark.parametrize(
        "params",
        [
            {},
            {"function": "TIME-SERIES-WEEKLY", "symbol": "IBM"},
            {"function": "time_series_daily", "symbol": "IBM"},
        ],
        ids=["missing", "malformed", "lower-case"],
    )
    async def test_unknown_function_does_not_exist(
        self, api: httpx.AsyncClient, sim: SimulatorControl, params: dict[str, str]
    ) -> None:
        message = error_message(await api.get(query(**params)))
        assert message == f"This API function ({params.get('function', '')}) does not exist."
        assert await sim.total_calls() == 0

    @pytest.mark.parametrize(
        "params",
        [
            {"function": "GLOBAL_QUOTE"},
            {"function": "GLOBAL_QUOTE", "symbol": "^GSPC"},
            {"function": "GLOBAL_QUOTE", "symbol": "A/B"},
            {"function": "GLOBAL_QUOTE", "symbol": "X" * 21},
            {"function": "GLOBAL_QUOTE", "symbol": "IBM", "datatype": "xml"},
            {"function": "TIME_SERIES_DAILY", "symbol": "IBM", "outputsize": "huge"},
        ],
        ids=["no-symbol", "index", "slash", "too-long", "datatype", "outputsize"],
    )
    async def test_malformed_call_never_reaches_upstream(
        self, api: httpx.AsyncClient, sim: SimulatorControl, params: dict[str, str]
    ) -> None:
        assert error_message(await api.get(query(**params))).startswith("Invalid API call.")
        assert await sim.total_calls() == 0


class TestGatewayFunctions:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(gateway_functions=" global_quote ")

    async def test_narrows_what_is_answered(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        daily = await api.get(query(function="TIME_SERIES_DAILY", symbol="IBM"))
        assert error_message(daily) == "This API function (TIME_SERIES_DAILY) does not exist."
        intraday = await api.get(query(**INTRADAY))
        assert error_message(intraday) == "This API function (TIME_SERIES_INTRADAY) does not exist."
        assert await sim.total_calls() == 0
        assert "Global Quote" in av_json(await api.get(query(function="GLOBAL_QUOTE", symbol="A")))


class TestPassthroughByName:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(gateway_functions="time_series_intraday")

    async def test_a_listed_function_is_passed_through_and_no_other(
        self, api: httpx.AsyncClient
    ) -> None:
        assert "Time Series (5min)" in av_json(await api.get(query(**INTRADAY)))
        quote = await api.get(query(function="GLOBAL_QUOTE", symbol="IBM"))
        assert error_message(quote) == "This API function (GLOBAL_QUOTE) does not exist."
        weekly = await api.get(query(function="TIME_SERIES_WEEKLY", symbol="IBM"))
        assert error_message(weekly) == "This API function (TIME_SERIES_WEEKLY) does not exist."


# -- other functions, passed through ---------------------------------------------------------


async def upstream_answer(simulator: Starlette, **params: str) -> httpx.Response:
    """What the simulator answers `params` when asked directly."""
    transport = httpx.ASGITransport(app=simulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as direct:
        return await direct.get("/query", params={**params, "apikey": API_KEY})


class TestPassthrough:
    @pytest.mark.parametrize("datatype", ["json", "csv"])
    async def test_answers_alpha_vantages_body_byte_for_byte(
        self, api: httpx.AsyncClient, simulator: Starlette, datatype: str
    ) -> None:
        response = await api.get(query(**INTRADAY, datatype=datatype))
        direct = await upstream_answer(simulator, **INTRADAY, datatype=datatype)
        assert response.status_code == 200
        assert response.content == direct.content
        assert response.headers["content-type"] == direct.headers["content-type"]
        expected = "application/json" if datatype == "json" else "application/x-download"
        assert response.headers["content-type"] == expected

    async def test_cached_by_its_parameters_whatever_their_order_and_apikey(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        first = await api.get(
            "/query?function=TIME_SERIES_INTRADAY&symbol=IBM&interval=5min&apikey=one"
        )
        again = await api.get(
            "/query?apikey=two&interval=5min&symbol=IBM&function=TIME_SERIES_INTRADAY"
        )
        assert again.content == first.content
        assert await sim.calls() == {"TIME_SERIES_INTRADAY": 1}
        other = await api.get(query(**{**INTRADAY, "interval": "60min"}))
        assert "Time Series (60min)" in av_json(other)
        assert await sim.calls() == {"TIME_SERIES_INTRADAY": 2}

    async def test_an_upstream_error_message_is_the_gateways_own(
        self, api: httpx.AsyncClient, simulator: Starlette
    ) -> None:
        params = {**INTRADAY, "symbol": "ZZNONE"}
        response = await api.get(query(**params))
        assert error_message(response) == (
            f"Invalid API call. Please retry or visit the documentation ({DOCS}) for "
            "TIME_SERIES_INTRADAY."
        )
        # The gateway's rendering (indented), not Alpha Vantage's body passed on.
        assert response.text.startswith('{\n    "Error Message"')
        assert response.content != (await upstream_answer(simulator, **params)).content

    async def test_a_function_alpha_vantage_does_not_know(self, api: httpx.AsyncClient) -> None:
        response = await api.get(query(function="TIME_SERIES_WEEKLY", symbol="IBM"))
        assert error_message(response) == (
            f"Invalid API call. Please retry or visit the documentation ({DOCS}) for "
            "TIME_SERIES_WEEKLY."
        )

    async def test_alpha_vantages_other_messages_are_never_passed_on(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.INVALID_KEY)
        message = information(await api.get(query(**INTRADAY)), 502)
        assert message.startswith("The stock service could not get an answer")
        await sim.set_fault(FaultMode.RATE_LIMITED)
        response = await api.get(query(**{**INTRADAY, "interval": "1min"}))
        assert "limit: alphavantage" in information(response, 429)
        assert "Thank you" not in response.text
        retry_after(response)

    async def test_an_html_page_is_no_csv(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.HTML)
        response = await api.get(query(**INTRADAY, datatype="csv"))
        assert "not JSON" in information(response, 502)

    async def test_an_oversized_query_never_reaches_upstream(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        response = await api.get(query(**INTRADAY, padding="x" * 2100))
        assert error_message(response).startswith("Invalid API call.")
        assert await sim.total_calls() == 0


class TestPassthroughTtl:
    @pytest.fixture
    def settings(self) -> Settings:
        # Fresh for no time at all: every call is a miss, and the copy kept is a stale one.
        return make_settings(gateway_passthrough_ttls="time_series_intraday=0")

    async def test_a_function_with_its_own_ttl_and_its_stale_copy(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        first = await api.get(query(**INTRADAY))
        await api.get(query(**INTRADAY))
        assert await sim.calls() == {"TIME_SERIES_INTRADAY": 2}
        for _ in range(2):  # the other functions keep CACHE_TTL_SECONDS
            await api.get(query(function="GLOBAL_QUOTE", symbol="IBM"))
        assert (await sim.calls())["GLOBAL_QUOTE"] == 1
        await sim.set_fault(FaultMode.DOWN)
        stale = await api.get(query(**INTRADAY))  # Alpha Vantage fails: the stale copy answers
        assert stale.content == first.content


class TestPassthroughHeldBack:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(upstream_daily_quota=1)

    async def test_a_spent_quota_is_an_information_with_429(self, api: httpx.AsyncClient) -> None:
        av_json(await api.get(query(**INTRADAY)))
        response = await api.get(query(**{**INTRADAY, "interval": "60min"}))
        assert "limit: quota" in information(response, 429)
        retry_after(response)


# -- calls held back -------------------------------------------------------------------------


class TestHeldBack:
    @pytest.fixture
    def settings(self) -> Settings:
        return make_settings(upstream_daily_quota=1)

    async def test_spent_quota_is_an_information_with_429(self, api: httpx.AsyncClient) -> None:
        av_json(await api.get(query(function="GLOBAL_QUOTE", symbol="IBM")))
        response = await api.get(query(function="GLOBAL_QUOTE", symbol="MSFT"))
        message = information(response, 429)
        assert "limit: quota" in message
        assert f"come back in {retry_after(response)} seconds" in message

    async def test_open_breaker_is_an_information_with_503(self, api: httpx.AsyncClient) -> None:
        assert (await api.post("/circuit-breaker/open", headers=ADMIN)).status_code == 200
        response = await api.get(query(function="TIME_SERIES_DAILY", symbol="IBM"))
        message = information(response, 503)
        assert "limit: breaker" in message
        assert f"come back in {retry_after(response)} seconds" in message

    @pytest.mark.parametrize(
        "fault", [FaultMode.RATE_LIMITED, FaultMode.BURST_LIMITED, FaultMode.MINUTE_LIMITED]
    )
    async def test_alpha_vantages_own_limit_is_named_never_quoted(
        self, api: httpx.AsyncClient, sim: SimulatorControl, fault: FaultMode
    ) -> None:
        await sim.set_fault(fault)
        response = await api.get(query(function="GLOBAL_QUOTE", symbol="IBM"))
        message = information(response, 429)
        assert "limit: alphavantage" in message
        assert "Thank you for using Alpha Vantage" not in message
        assert API_KEY not in response.text  # the daily-limit text quotes the key
        retry_after(response)

    async def test_upstream_failure_is_an_information_with_502(
        self, api: httpx.AsyncClient, sim: SimulatorControl
    ) -> None:
        await sim.set_fault(FaultMode.INVALID_KEY)
        message = information(await api.get(query(function="GLOBAL_QUOTE", symbol="IBM")), 502)
        assert "could not get an answer" in message


# -- what reaches Alpha Vantage --------------------------------------------------------------


class Recording(httpx.AsyncBaseTransport):
    """The simulator's transport, keeping every request sent through it."""

    def __init__(self, simulator: Starlette) -> None:
        self.inner = httpx.ASGITransport(app=simulator)
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return await self.inner.handle_async_request(request)


@pytest.fixture
async def recorded(
    settings: Settings, simulator: Starlette
) -> AsyncIterator[tuple[httpx.AsyncClient, Recording]]:
    transport = Recording(simulator)
    app = create_app(settings, upstream_transport=transport, configure_logs=False)
    async with serve(app) as client:
        yield client, transport


async def test_sends_the_services_key_never_the_callers(
    recorded: tuple[httpx.AsyncClient, Recording],
) -> None:
    client, transport = recorded
    url = "/query?function=GLOBAL_QUOTE&symbol=IBM&apikey=consumer-token&extra=1"
    av_json(await client.get(url))
    [sent] = transport.requests
    assert dict(sent.url.params) == {"function": "GLOBAL_QUOTE", "symbol": "IBM", "apikey": API_KEY}


async def test_passes_through_the_services_key_never_the_callers(
    recorded: tuple[httpx.AsyncClient, Recording],
) -> None:
    client, transport = recorded
    url = str(httpx.URL("/query", params={**INTRADAY, "apikey": "consumer-token", "extra": "1"}))
    av_json(await client.get(url))
    [sent] = transport.requests
    assert dict(sent.url.params) == {**INTRADAY, "extra": "1", "apikey": API_KEY}


async def test_counted_under_its_route(api: httpx.AsyncClient) -> None:
    await api.get(query(function="GLOBAL_QUOTE", symbol="IBM"))
    metrics = await scrape(api)
    assert metrics.value(HTTP_REQUESTS, route="/query", method="GET", status="200") == 1.0
