from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from app.alphavantage import classify_message
from app.errors import RateLimited, UpstreamRefused
from app.simulator import FaultMode, create_simulator

SATURDAY = dt.date(2024, 6, 15)
DAILY = {"function": "TIME_SERIES_DAILY", "symbol": "IBM", "apikey": "test"}
QUOTE = {"function": "GLOBAL_QUOTE", "symbol": "IBM", "apikey": "test"}
NUMBER = re.compile(r"^\d+\.\d{4}$")


def sim_client(today: dt.date = SATURDAY) -> httpx.AsyncClient:
    app = create_simulator(today=lambda: today)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with sim_client() as c:
        yield c


async def get_json(client: httpx.AsyncClient, **params: str) -> Any:
    response = await client.get("/query", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    return response.json()


async def set_fault(client: httpx.AsyncClient, mode: str, **extra: object) -> httpx.Response:
    return await client.post("/_faults", json={"mode": mode, **extra})


async def test_daily_shape(client: httpx.AsyncClient) -> None:
    body = await get_json(client, **DAILY)
    meta = body["Meta Data"]
    assert meta["2. Symbol"] == "IBM"
    assert meta["3. Last Refreshed"] == "2024-06-14"  # the Friday before SATURDAY
    assert meta["4. Output Size"] == "Compact"
    assert meta["5. Time Zone"] == "US/Eastern"
    series = body["Time Series (Daily)"]
    assert len(series) == 100
    dates = [dt.date.fromisoformat(d) for d in series]
    assert dates == sorted(dates, reverse=True)
    assert dates[0] == dt.date(2024, 6, 14)
    assert all(d.weekday() < 5 for d in dates)
    assert len(set(dates)) == 100
    for bar in series.values():
        assert list(bar) == ["1. open", "2. high", "3. low", "4. close", "5. volume"]
        assert all(isinstance(v, str) for v in bar.values())
        o, h, lo, c = (float(bar[k]) for k in ("1. open", "2. high", "3. low", "4. close"))
        assert all(NUMBER.match(bar[k]) for k in ("1. open", "2. high", "3. low", "4. close"))
        assert h >= max(o, c)
        assert 0 < lo <= min(o, c)
        assert 5 <= c <= 800
        assert bar["5. volume"].isdigit()
        assert 10**5 <= int(bar["5. volume"]) < 10**8


async def test_daily_is_a_random_walk_of_about_one_and_a_half_percent() -> None:
    async with sim_client() as client:
        for symbol in ("IBM", "MSFT", "BRK.B", "TSCO.LON", "600104.SHH"):
            body = await get_json(client, **(DAILY | {"symbol": symbol}))
            series = body["Time Series (Daily)"]
            closes = [float(bar["4. close"]) for bar in reversed(series.values())]
            returns = [b / a - 1 for a, b in itertools.pairwise(closes)]
            volatility = (sum(r * r for r in returns) / len(returns)) ** 0.5
            assert 0.008 < volatility < 0.025, symbol


async def test_ends_on_the_latest_weekday_by_default() -> None:
    app = create_simulator()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        body = await get_json(client, **DAILY)
    last = dt.date.fromisoformat(body["Meta Data"]["3. Last Refreshed"])
    today = dt.datetime.now(dt.UTC).date()
    assert last.weekday() < 5
    assert 0 <= (today - last).days <= 3  # 3 only on a Monday just past midnight UTC


async def test_deterministic_across_instances() -> None:
    async with sim_client() as first, sim_client() as second:
        for params in (DAILY, QUOTE):
            a = await first.get("/query", params=params)
            b = await second.get("/query", params=params)
            assert a.content == b.content
        other = await get_json(first, **(DAILY | {"symbol": "MSFT"}))
        ibm = await get_json(first, **DAILY)
        assert other["Time Series (Daily)"] != ibm["Time Series (Daily)"]


async def test_quote_matches_the_daily_series(client: httpx.AsyncClient) -> None:
    quote = (await get_json(client, **QUOTE))["Global Quote"]
    series = (await get_json(client, **DAILY))["Time Series (Daily)"]
    (day, newest), (_, previous) = list(series.items())[:2]
    assert list(quote) == [
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
    assert all(isinstance(v, str) for v in quote.values())
    assert quote["01. symbol"] == "IBM"
    assert quote["02. open"] == newest["1. open"]
    assert quote["03. high"] == newest["2. high"]
    assert quote["04. low"] == newest["3. low"]
    assert quote["05. price"] == newest["4. close"]
    assert quote["06. volume"] == newest["5. volume"]
    assert quote["07. latest trading day"] == day
    assert quote["08. previous close"] == previous["4. close"]
    price, prev = float(quote["05. price"]), float(quote["08. previous close"])
    assert float(quote["09. change"]) == pytest.approx(price - prev, abs=1e-4)
    percent = quote["10. change percent"]
    assert re.match(r"^-?\d+\.\d{4}%$", percent)
    assert float(percent[:-1]) == pytest.approx((price - prev) / prev * 100, abs=1e-4)


BULK = {"function": "REALTIME_BULK_QUOTES", "apikey": "test"}


async def test_bulk_quotes_are_the_global_quotes_in_the_bulk_shape(
    client: httpx.AsyncClient,
) -> None:
    body = await get_json(client, **BULK, symbol="ibm,MSFT,ZZTOP,IBM")
    assert (body["endpoint"], body["message"]) == ("Realtime Bulk Quotes", "success")
    assert [entry["symbol"] for entry in body["data"]] == ["IBM", "MSFT"]  # unknown: left out
    for entry in body["data"]:
        assert all(isinstance(value, str) for value in entry.values())
        quote = (await get_json(client, **(QUOTE | {"symbol": entry["symbol"]})))["Global Quote"]
        assert entry["timestamp"].startswith(quote["07. latest trading day"] + " ")
        assert float(entry["close"]) == float(quote["05. price"])
        assert float(entry["open"]) == float(quote["02. open"])
        assert float(entry["high"]) == float(quote["03. high"])
        assert float(entry["low"]) == float(quote["04. low"])
        assert entry["volume"] == quote["06. volume"]
        assert float(entry["previous_close"]) == float(quote["08. previous close"])
        assert "%" not in entry["change_percent"]
        assert float(entry["change_percent"]) == pytest.approx(
            float(quote["10. change percent"].rstrip("%")), abs=1e-4
        )


@pytest.mark.parametrize("symbols", ["", ",", ",".join(f"S{n}" for n in range(101))])
async def test_bulk_quotes_take_1_to_100_symbols(client: httpx.AsyncClient, symbols: str) -> None:
    body = await get_json(client, **BULK, symbol=symbols)
    assert body["Error Message"].endswith("for REALTIME_BULK_QUOTES.")


async def test_bulk_quotes_refused_as_for_a_free_key(client: httpx.AsyncClient) -> None:
    await set_fault(client, "premium", function="REALTIME_BULK_QUOTES")
    refused = await get_json(client, **BULK, symbol="IBM")
    assert isinstance(classify_message("REALTIME_BULK_QUOTES", refused), UpstreamRefused)
    assert "Global Quote" in await get_json(client, **QUOTE)  # other functions still answer


async def test_lowercase_symbol_is_upper_cased(client: httpx.AsyncClient) -> None:
    lower = await get_json(client, **(DAILY | {"symbol": "ibm"}))
    upper = await get_json(client, **DAILY)
    assert lower == upper
    quote = await get_json(client, **(QUOTE | {"symbol": "brk-b"}))
    assert quote["Global Quote"]["01. symbol"] == "BRK-B"


INVALID_DAILY = (
    "Invalid API call. Please retry or visit the documentation "
    "(https://www.alphavantage.co/documentation/) for TIME_SERIES_DAILY."
)


@pytest.mark.parametrize("symbol", ["ZZZZ", "zzfoo", "^GSPC", "BRK/B", "A..B", "", "A" * 21])
async def test_unknown_or_malformed_symbol(client: httpx.AsyncClient, symbol: str) -> None:
    daily = await get_json(client, **(DAILY | {"symbol": symbol}))
    assert daily == {"Error Message": INVALID_DAILY}
    quote = await get_json(client, **(QUOTE | {"symbol": symbol}))
    assert quote == {"Global Quote": {}}


async def test_symbol_search_finds_listings_by_symbol_or_name(client: httpx.AsyncClient) -> None:
    body = await get_json(client, function="SYMBOL_SEARCH", keywords="Tesco", apikey="k")
    matches = body["bestMatches"]
    assert matches[0] == {
        "1. symbol": "TSCO.LON",
        "2. name": "Tesco PLC",
        "3. type": "Equity",
        "4. region": "United Kingdom",
        "5. marketOpen": "08:00",
        "6. marketClose": "16:30",
        "7. timezone": "UTC+01",
        "8. currency": "GBX",
        "9. matchScore": matches[0]["9. matchScore"],
    }
    scores = [float(match["9. matchScore"]) for match in matches]
    assert scores == sorted(scores, reverse=True)
    ibm = await get_json(client, function="SYMBOL_SEARCH", keywords="ibm", apikey="k")
    assert ibm["bestMatches"][0]["9. matchScore"] == "1.0000"
    none = await get_json(client, function="SYMBOL_SEARCH", keywords="zzz", apikey="k")
    assert none == {"bestMatches": []}


async def test_intraday_shape(client: httpx.AsyncClient) -> None:
    params = {"function": "TIME_SERIES_INTRADAY", "symbol": "ibm", "interval": "5min"}
    body = await get_json(client, **params, apikey="k")
    assert list(body) == ["Meta Data", "Time Series (5min)"]
    assert body["Meta Data"]["2. Symbol"] == "IBM"
    assert body["Meta Data"]["3. Last Refreshed"] == "2024-06-14 16:00:00"
    series = body["Time Series (5min)"]
    assert list(series)[:2] == ["2024-06-14 16:00:00", "2024-06-14 15:55:00"]
    assert all(NUMBER.match(bar["4. close"]) for bar in series.values())
    assert await get_json(client, **params, apikey="other") == body  # deterministic


async def test_intraday_as_csv(client: httpx.AsyncClient) -> None:
    params = {"function": "TIME_SERIES_INTRADAY", "symbol": "IBM", "interval": "60min"}
    response = await client.get("/query", params={**params, "datatype": "csv", "apikey": "k"})
    assert response.headers["content-type"] == "application/x-download"
    header, first, *_, end = response.text.split("\r\n")
    assert header == "timestamp,open,high,low,close,volume"
    assert first.startswith("2024-06-14 16:00:00,")
    assert end == ""


@pytest.mark.parametrize(("symbol", "interval"), [("ZZNONE", "5min"), ("IBM", "2min")])
async def test_intraday_bad_call(client: httpx.AsyncClient, symbol: str, interval: str) -> None:
    params = {"function": "TIME_SERIES_INTRADAY", "symbol": symbol, "interval": interval}
    body = await get_json(client, **params, apikey="k", datatype="csv")  # errors stay JSON
    assert body["Error Message"].startswith("Invalid API call.")


async def test_unknown_function(client: httpx.AsyncClient) -> None:
    body = await get_json(client, function="NO_SUCH_THING", symbol="IBM", apikey="k")
    assert body["Error Message"].startswith("Invalid API call.")


@pytest.mark.parametrize("apikey", [None, ""])
async def test_missing_apikey(client: httpx.AsyncClient, apikey: str | None) -> None:
    params = {"function": "GLOBAL_QUOTE", "symbol": "IBM"}
    if apikey is not None:
        params["apikey"] = apikey
    body = await get_json(client, **params)
    message = body["Error Message"]
    assert message.startswith("the parameter apikey is invalid or missing.")
    assert message.endswith("It should take less than 20 seconds.")


async def test_outputsize_full_is_premium(client: httpx.AsyncClient) -> None:
    body = await get_json(client, **(DAILY | {"outputsize": "full"}))
    assert list(body) == ["Information"]
    assert "outputsize=full" in body["Information"]
    assert "premium" in body["Information"]
    compact = await get_json(client, **(DAILY | {"outputsize": "compact"}))
    assert len(compact["Time Series (Daily)"]) == 100


async def test_fault_state_defaults_and_changes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_faults")).json() == {
        "mode": "healthy",
        "delay_seconds": 2.0,
        "function": None,
    }
    response = await set_fault(client, "slow", delay_seconds=0.5)
    assert response.status_code == 200
    assert response.json() == {"mode": "slow", "delay_seconds": 0.5, "function": None}
    assert (await client.get("/_faults")).json() == {
        "mode": "slow",
        "delay_seconds": 0.5,
        "function": None,
    }
    assert (await set_fault(client, "healthy")).json() == {
        "mode": "healthy",
        "delay_seconds": 2.0,
        "function": None,
    }


@pytest.mark.parametrize("mode", list(FaultMode))
async def test_every_mode_can_be_set(client: httpx.AsyncClient, mode: FaultMode) -> None:
    response = await set_fault(client, mode.value)
    assert response.status_code == 200
    assert (await client.get("/_faults")).json() == {
        "mode": mode.value,
        "delay_seconds": 2.0,
        "function": None,
    }


@pytest.mark.parametrize(
    "payload",
    [
        {"mode": "exploded"},
        {},
        {"mode": ["down"]},
        {"mode": "slow", "delay_seconds": -1},
        {"mode": "down", "function": 1},
        [],
    ],
)
async def test_bad_fault_request_is_422(client: httpx.AsyncClient, payload: object) -> None:
    response = await client.post("/_faults", json=payload)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    assert (await client.get("/_faults")).json()["mode"] == "healthy"


async def test_fault_modes_are_per_instance(client: httpx.AsyncClient) -> None:
    await set_fault(client, "down")
    async with sim_client() as other:
        assert (await other.get("/query", params=QUOTE)).status_code == 200


async def test_a_fault_can_target_one_function(client: httpx.AsyncClient) -> None:
    response = await set_fault(client, "down", function="GLOBAL_QUOTE")
    assert response.json()["function"] == "GLOBAL_QUOTE"
    assert (await client.get("/query", params=QUOTE)).status_code == 503
    daily = {"function": "TIME_SERIES_DAILY", "symbol": "IBM", "apikey": "k"}
    assert (await client.get("/query", params=daily)).status_code == 200
    await set_fault(client, "down")  # without a function: every function again
    assert (await client.get("/query", params=daily)).status_code == 503


async def test_down(client: httpx.AsyncClient) -> None:
    await set_fault(client, "down")
    response = await client.get("/query", params=QUOTE)
    assert response.status_code == 503
    assert response.headers["content-type"].startswith("text/html")
    assert "<html>" in response.text


async def test_http_500(client: httpx.AsyncClient) -> None:
    await set_fault(client, "http_500")
    response = await client.get("/query", params=QUOTE)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text


async def test_slow(client: httpx.AsyncClient) -> None:
    await set_fault(client, "slow", delay_seconds=0.05)
    started = time.monotonic()
    body = await get_json(client, **QUOTE)
    assert time.monotonic() - started >= 0.05
    assert body["Global Quote"]["01. symbol"] == "IBM"


async def test_rate_limited(client: httpx.AsyncClient) -> None:
    await set_fault(client, "rate_limited")
    body = await get_json(client, **(QUOTE | {"apikey": "SECRETKEY"}))
    info = body["Information"]
    assert list(body) == ["Information"]
    assert "SECRETKEY" in info
    assert "25 requests per day" in info
    assert "premium" in info


async def test_invalid_key(client: httpx.AsyncClient) -> None:
    await set_fault(client, "invalid_key")
    body = await get_json(client, **DAILY)
    assert body["Error Message"].startswith("the parameter apikey is invalid or missing.")


async def test_premium(client: httpx.AsyncClient) -> None:
    await set_fault(client, "premium")
    body = await get_json(client, **QUOTE)
    assert body["Information"].startswith("Thank you for using Alpha Vantage! This is a premium")


@pytest.mark.parametrize("symbol", ["IBM", "ZZTOP"])
async def test_bad_json(client: httpx.AsyncClient, symbol: str) -> None:
    await set_fault(client, "bad_json")
    for params in (DAILY, QUOTE):
        response = await client.get("/query", params=params | {"symbol": symbol})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert 0 < len(response.content) <= 40
        with pytest.raises(json.JSONDecodeError):
            response.json()


async def test_drop_over_a_real_server() -> None:
    app = create_simulator()
    config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="off")
    server = uvicorn.Server(config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                assert not task.done()
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                assert (await client.post("/_faults", json={"mode": "drop"})).status_code == 200
                with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
                    await client.get("/query", params=DAILY)
                # The server survives the drop and still answers.
                await client.post("/_faults", json={"mode": "healthy"})
                assert (await client.get("/query", params=QUOTE)).status_code == 200
        finally:
            server.should_exit = True
            await task


async def test_stats_count_every_query_and_reset(client: httpx.AsyncClient) -> None:
    assert (await client.get("/_stats")).json() == {"calls": {}, "total": 0}
    await client.get("/query", params=DAILY)
    await client.get("/query", params=DAILY | {"symbol": "ZZNOPE"})
    await client.get("/query", params=QUOTE)
    for mode in ("down", "http_500", "rate_limited", "bad_json"):
        await set_fault(client, mode)
        await client.get("/query", params=QUOTE)
    await client.get("/_faults")  # not a /query call
    stats = (await client.get("/_stats")).json()
    assert stats == {"calls": {"TIME_SERIES_DAILY": 2, "GLOBAL_QUOTE": 5}, "total": 7}
    reset = await client.post("/_stats/reset")
    assert reset.status_code == 200
    assert reset.json() == {"calls": {}, "total": 0}
    assert (await client.get("/_stats")).json() == {"calls": {}, "total": 0}


async def test_http_429(client: httpx.AsyncClient) -> None:
    await set_fault(client, "http_429")
    response = await client.get("/query", params=DAILY)
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["retry-after"] == "30"
    assert response.text == "Too Many Requests"


@pytest.mark.parametrize(
    ("mode", "key", "words"),
    [
        # Word for word as Alpha Vantage sends it, the daily limit mentioned in passing.
        (
            "burst_limited",
            "Information",
            "more sparingly (1 request per second). You may subscribe to any of the premium "
            "plans at https://www.alphavantage.co/premium/ to lift the free key rate limit "
            "(25 requests per day), raise the per-second burst limit, and instantly unlock all "
            "premium endpoints",
        ),
        ("minute_limited", "Note", "5 calls per minute and 500 calls per day"),
        ("premium_full", "Information", "outputsize=full parameter value is a premium feature"),
        ("demo_key", "Information", "The **demo** API key is for demo purposes only."),
    ],
)
async def test_message_modes(client: httpx.AsyncClient, mode: str, key: str, words: str) -> None:
    await set_fault(client, mode)
    for params in (DAILY, QUOTE):
        body = await get_json(client, **params)
        assert list(body) == [key]
        assert words in body[key]


async def test_premium_full_is_the_outputsize_full_answer(client: httpx.AsyncClient) -> None:
    full = await get_json(client, **(DAILY | {"outputsize": "full"}))
    await set_fault(client, "premium_full")
    assert await get_json(client, **DAILY) == full


@pytest.mark.parametrize(
    ("mode", "error", "period"),
    [
        (FaultMode.RATE_LIMITED, RateLimited, "day"),
        (FaultMode.BURST_LIMITED, RateLimited, "second"),
        (FaultMode.MINUTE_LIMITED, RateLimited, "minute"),
        (FaultMode.INVALID_KEY, UpstreamRefused, None),
        (FaultMode.PREMIUM, UpstreamRefused, None),
        (FaultMode.PREMIUM_FULL, UpstreamRefused, None),
        (FaultMode.DEMO_KEY, UpstreamRefused, None),
    ],
)
async def test_messages_are_the_ones_the_client_recognises(
    client: httpx.AsyncClient, mode: FaultMode, error: type[Exception], period: str | None
) -> None:
    await set_fault(client, mode.value)
    body = await get_json(client, **DAILY)
    classified = classify_message("TIME_SERIES_DAILY", body)
    assert type(classified) is error
    assert getattr(classified, "period", None) == period


async def test_html(client: httpx.AsyncClient) -> None:
    await set_fault(client, "html")
    response = await client.get("/query", params=DAILY)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<html>")
    with pytest.raises(json.JSONDecodeError):
        response.json()


@pytest.mark.parametrize("params", [DAILY, QUOTE], ids=["daily", "quote"])
async def test_oversized(client: httpx.AsyncClient, params: dict[str, str]) -> None:
    healthy = await get_json(client, **params)
    await set_fault(client, "oversized")
    response = await client.get("/query", params=params)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert "content-length" not in response.headers  # streamed: only counting can catch it
    assert 6_000_000 < len(response.content) < 6_100_000
    body = response.json()
    assert body.pop("Padding") == "x" * 6_000_000
    assert body == healthy


async def test_flapping_alternates_and_restarts_when_set(client: httpx.AsyncClient) -> None:
    await set_fault(client, "flapping")
    statuses = [(await client.get("/query", params=DAILY)).status_code for _ in range(5)]
    assert statuses == [200, 500, 200, 500, 200]
    await set_fault(client, "flapping")  # setting the mode again restarts with a good answer
    first = await client.get("/query", params=QUOTE)
    assert first.status_code == 200
    assert first.json()["Global Quote"]["01. symbol"] == "IBM"
    second = await client.get("/query", params=QUOTE)
    assert second.status_code == 500
    assert second.text == "Internal Server Error"
    stats = (await client.get("/_stats")).json()
    assert stats["calls"] == {"TIME_SERIES_DAILY": 5, "GLOBAL_QUOTE": 2}
