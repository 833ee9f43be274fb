"""The Alpha Vantage client against respx-mocked answers in the real API's shapes."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.alphavantage import AlphaVantageClient
from app.errors import (
    BadUpstreamResponse,
    RateLimited,
    UnknownSymbol,
    UpstreamError,
    UpstreamFailure,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)

URL = "https://www.alphavantage.co/query"
KEY = "client-test-key"

DAILY: dict[str, Any] = {
    "Meta Data": {
        "1. Information": "Daily Prices (open, high, low, close) and Volumes",
        "2. Symbol": "IBM",
        "3. Last Refreshed": "2023-11-28",
        "4. Output Size": "Compact",
        "5. Time Zone": "US/Eastern",
    },
    "Time Series (Daily)": {
        "2023-11-27": {
            "1. open": "154.9900",
            "2. high": "156.1350",
            "3. low": "154.7500",
            "4. close": "155.5700",
            "5. volume": "4053093",
        },
        "2023-11-28": {
            "1. open": "155.4400",
            "2. high": "155.7450",
            "3. low": "154.8600",
            "4. close": "155.6500",
            "5. volume": "2666182",
        },
    },
}
QUOTE = {
    "Global Quote": {
        "01. symbol": "MSFT",
        "02. open": "112.6300",
        "03. high": "113.1700",
        "04. low": "110.6400",
        "05. price": "112.1300",
        "06. volume": "29062853",
        "07. latest trading day": "2018-10-05",
        "08. previous close": "112.7900",
        "09. change": "-0.6600",
        "10. change percent": "-0.5852%",
    }
}
# Alpha Vantage's messages, in the wordings real answers have shown over the years. Every
# one comes with HTTP 200; the key that holds it says nothing about what it means.
INVALID_CALL = {
    "Error Message": "Invalid API call. Please retry or visit the documentation "
    "(https://www.alphavantage.co/documentation/) for TIME_SERIES_DAILY."
}
INVALID_CALL_QUOTE = {
    "Error Message": "Invalid API call. Please retry or visit the documentation "
    "(https://www.alphavantage.co/documentation/) for GLOBAL_QUOTE."
}
CLAIM_KEY = (
    "the parameter apikey is invalid or missing. Please claim your free API key on "
    "(https://www.alphavantage.co/support/#api-key)."
)
BAD_KEY_2019 = {
    "Error Message": f"{CLAIM_KEY} It should take less than 20 seconds, and is free permanently."
}
BAD_KEY_2021 = {"Error Message": f"{CLAIM_KEY} It should take less than 20 seconds."}
BAD_KEY = {"Error Message": CLAIM_KEY}
REMOVE_DAILY_LIMITS = (
    "Please subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to "
    "instantly remove all daily rate limits."
)
DAILY_LIMIT = {
    "Information": "Thank you for using Alpha Vantage! Our standard API rate limit is 25 "
    f"requests per day. {REMOVE_DAILY_LIMITS}"
}
DAILY_LIMIT_NAMING_THE_KEY = {
    "Information": f"We have detected your API key as {KEY} and our standard API rate limit is "
    f"25 requests per day. {REMOVE_DAILY_LIMITS}"
}
# Since December 2025. It names the daily limit only in passing: it is about the second.
BURST_LIMIT = {
    "Information": "Thank you for using Alpha Vantage! Please consider spreading out your free "
    "API requests more sparingly (1 request per second). You may subscribe to any of the premium "
    "plans at https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests "
    "per day), raise the per-second burst limit, and instantly unlock all premium endpoints"
}
# 2018 to 2023: names both limits; the minute was the one that bit.
MINUTE_LIMIT = {
    "Note": "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per "
    "minute and 500 calls per day. Please visit https://www.alphavantage.co/premium/ if you "
    "would like to target a higher API call frequency."
}
CALL_FREQUENCY = {"Information": "Please consider optimizing your API call frequency"}
PREMIUM_ENDPOINT = (
    "Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of "
    "the premium plans at https://www.alphavantage.co/premium/ to instantly unlock all premium "
    "endpoints"
)
PREMIUM = {"Information": PREMIUM_ENDPOINT}
PREMIUM_2026 = {"Information": f"{PREMIUM_ENDPOINT}."}
PREMIUM_AVC = {
    "Information": "Thank you for using Alpha Vantage! This is a premium endpoint and there are "
    "multiple ways to unlock premium endpoints: (1) become a holder of Alpha Vantage Coin (AVC), "
    "an Ethereum-based cryptocurrency that provides various utility & governance functions "
    "within the Alpha Vantage ecosystem (AVC mining guide: "
    "https://www.alphatournament.com/avc_mining_guide/) to unlock all premium endpoints, (2) "
    "subscribe to any of the premium plans at https://www.alphavantage.co/premium/ to instantly "
    "unlock all premium endpoints"
}
FULL_IS_PREMIUM = {
    "Information": "Thank you for using Alpha Vantage! The outputsize=full parameter value is a "
    "premium feature for the TIME_SERIES_DAILY endpoint. You may subscribe to any of the "
    "premium plans at https://www.alphavantage.co/premium/ to instantly unlock all premium "
    "features"
}
DEMO_KEY = (
    "The **demo** API key is for demo purposes only. Please claim your free API key at "
    "(https://www.alphavantage.co/support/#api-key) to explore our full API offerings. It takes "
    "fewer than 20 seconds"
)
DEMO = {"Information": f"{DEMO_KEY}."}
DEMO_2020 = {"Information": f"{DEMO_KEY}, and we are committed to making it free forever."}


@pytest.fixture
async def av() -> AsyncIterator[AlphaVantageClient]:
    async with httpx.AsyncClient() as http:
        yield AlphaVantageClient(http, api_key=SecretStr(KEY), base_url=URL, timeout=0.5)


def answer(body: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json=body)


# -- successes ------------------------------------------------------------------------------


@respx.mock
async def test_daily_parses_and_sorts_newest_first(av: AlphaVantageClient) -> None:
    route = respx.get(URL).mock(return_value=answer(DAILY))
    series = await av.daily("IBM")
    assert series.symbol == "IBM"
    assert series.last_refreshed == "2023-11-28"
    assert series.time_zone == "US/Eastern"
    assert [p.date for p in series.prices] == [dt.date(2023, 11, 28), dt.date(2023, 11, 27)]
    newest = series.prices[0]
    assert (newest.open, newest.high, newest.low, newest.close) == (
        155.44,
        155.745,
        154.86,
        155.65,
    )
    assert newest.volume == 2666182
    params = route.calls.last.request.url.params
    assert dict(params) == {
        "function": "TIME_SERIES_DAILY",
        "symbol": "IBM",
        "outputsize": "compact",
        "apikey": KEY,
    }


@respx.mock
async def test_quote_parses_change_percent_as_a_number(av: AlphaVantageClient) -> None:
    route = respx.get(URL).mock(return_value=answer(QUOTE))
    quote = await av.quote("MSFT")
    assert quote.symbol == "MSFT"
    assert quote.price == 112.13
    assert quote.change == -0.66
    assert quote.change_percent == -0.5852
    assert quote.volume == 29062853
    assert quote.latest_trading_day == dt.date(2018, 10, 5)
    assert route.calls.last.request.url.params["function"] == "GLOBAL_QUOTE"


@respx.mock
async def test_a_non_us_listing_parses_like_any_other(av: AlphaVantageClient) -> None:
    """IWDA.AS (Amsterdam), as GLOBAL_QUOTE answered it on 2019-08-30."""
    body = {
        "Global Quote": {
            "01. symbol": "IWDA.AS",
            "02. open": "51.5100",
            "03. high": "51.9200",
            "04. low": "51.5100",
            "05. price": "51.7600",
            "06. volume": "93222",
            "07. latest trading day": "2019-08-30",
            "08. previous close": "51.4350",
            "09. change": "0.3250",
            "10. change percent": "0.6319%",
        }
    }
    respx.get(URL).mock(return_value=httpx.Response(200, text=json.dumps(body, indent=4)))
    quote = await av.quote("IWDA.AS")
    assert (quote.symbol, quote.price, quote.previous_close) == ("IWDA.AS", 51.76, 51.435)
    assert quote.change_percent == 0.6319
    assert quote.latest_trading_day == dt.date(2019, 8, 30)


def tesco_match(symbol: str, name: str, region: str, score: str) -> dict[str, str]:
    """A SYMBOL_SEARCH match as the real API answered `keywords=tesco` (2025)."""
    market = {
        "United Kingdom": ("08:00", "16:30", "UTC+01", "GBX"),
        "United States": ("09:30", "16:00", "UTC-04", "USD"),
    }[region]
    keys = ("5. marketOpen", "6. marketClose", "7. timezone", "8. currency")
    return {
        "1. symbol": symbol,
        "2. name": name,
        "3. type": "Equity",
        "4. region": region,
        **dict(zip(keys, market, strict=True)),
        "9. matchScore": score,
    }


@respx.mock
async def test_symbol_search_parses_every_match_best_first(av: AlphaVantageClient) -> None:
    body = {
        "bestMatches": [
            tesco_match("TSCO.LON", "Tesco PLC", "United Kingdom", "0.7273"),
            tesco_match("TSCDF", "Tesco plc", "United States", "0.7143"),
        ]
    }
    route = respx.get(URL).mock(return_value=httpx.Response(200, text=json.dumps(body, indent=4)))
    found = await av.search("tesco")
    assert found.keywords == "tesco"
    assert [m.symbol for m in found.matches] == ["TSCO.LON", "TSCDF"]
    first = found.matches[0]
    assert (first.region, first.market_open, first.market_close) == (
        "United Kingdom",
        "08:00",
        "16:30",
    )
    assert (first.timezone, first.currency, first.match_score) == ("UTC+01", "GBX", 0.7273)
    assert dict(route.calls.last.request.url.params) == {
        "function": "SYMBOL_SEARCH",
        "keywords": "tesco",
        "apikey": KEY,
    }


@respx.mock
async def test_symbol_search_without_matches_is_an_answer(av: AlphaVantageClient) -> None:
    respx.get(URL).mock(return_value=answer({"bestMatches": []}))
    assert (await av.search("nothing like it")).matches == ()


@respx.mock
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"bestMatches": [{"1. symbol": "TSCO.LON"}]}, BadUpstreamResponse),
        ({"bestMatches": "none"}, BadUpstreamResponse),
        ({}, BadUpstreamResponse),
        (
            {"Information": "... our standard API rate limit is 25 requests per day ..."},
            RateLimited,
        ),
    ],
    ids=["match-without-fields", "not-a-list", "empty", "daily-limit"],
)
async def test_symbol_search_failures_are_classified(
    av: AlphaVantageClient, body: dict[str, Any], error: type[UpstreamError]
) -> None:
    respx.get(URL).mock(return_value=answer(body))
    with pytest.raises(error):
        await av.search("tesco")


@respx.mock
async def test_symbol_travels_encoded_as_a_query_parameter(av: AlphaVantageClient) -> None:
    route = respx.get(URL).mock(return_value=answer(DAILY))
    await av.daily("BRK.B&function=X")
    request = route.calls.last.request
    assert request.url.params.get_list("function") == ["TIME_SERIES_DAILY"]
    assert request.url.params["symbol"] == "BRK.B&function=X"
    assert request.url.path == "/query"


@respx.mock
async def test_older_timestamp_form_of_last_refreshed_is_kept(av: AlphaVantageClient) -> None:
    body = {
        **DAILY,
        "Meta Data": {**DAILY["Meta Data"], "3. Last Refreshed": "2019-02-20 13:53:08"},
    }
    respx.get(URL).mock(return_value=answer(body))
    assert (await av.daily("IBM")).last_refreshed == "2019-02-20 13:53:08"


# -- the classification table ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "body", "error", "detail_words"),
    [
        ("daily", INVALID_CALL, UnknownSymbol, "unknown symbol"),
        ("quote", INVALID_CALL_QUOTE, UnknownSymbol, "unknown symbol"),
        ("quote", {"Global Quote": {}}, UnknownSymbol, "unknown symbol"),
        ("daily", DAILY_LIMIT, RateLimited, "per day"),
        ("quote", DAILY_LIMIT_NAMING_THE_KEY, RateLimited, "per day"),
        ("quote", BURST_LIMIT, RateLimited, "per second"),
        ("daily", MINUTE_LIMIT, RateLimited, "per minute"),
        ("daily", CALL_FREQUENCY, RateLimited, "per minute"),
        ("daily", BAD_KEY, UpstreamRefused, "api key"),
        ("daily", BAD_KEY_2021, UpstreamRefused, "api key"),
        ("quote", BAD_KEY_2019, UpstreamRefused, "api key"),
        ("daily", PREMIUM, UpstreamRefused, "premium"),
        ("daily", PREMIUM_2026, UpstreamRefused, "premium"),
        ("daily", PREMIUM_AVC, UpstreamRefused, "premium"),
        ("daily", FULL_IS_PREMIUM, UpstreamRefused, "premium"),
        ("quote", DEMO, UpstreamRefused, "demo"),
        ("daily", DEMO_2020, UpstreamRefused, "demo"),
        ("daily", {}, BadUpstreamResponse, "empty"),
        ("quote", {}, BadUpstreamResponse, "empty"),
        ("daily", {"Meta Data": {}}, BadUpstreamResponse, "expected data"),
        ("daily", {"Something": "else"}, BadUpstreamResponse, "expected data"),
        ("quote", {"Information": "Something new happened."}, BadUpstreamResponse, "message"),
    ],
)
@respx.mock
async def test_answers_are_classified_by_what_they_say(
    av: AlphaVantageClient,
    function: str,
    body: dict[str, Any],
    error: type[UpstreamError],
    detail_words: str,
) -> None:
    # Sent as the API sends it: pretty-printed with a 4-space indent, no final newline.
    respx.get(URL).mock(return_value=httpx.Response(200, text=json.dumps(body, indent=4)))
    with pytest.raises(error) as info:
        await getattr(av, function)("IBM")
    assert type(info.value) is error
    assert detail_words in info.value.detail.lower()
    assert KEY not in info.value.detail


@pytest.mark.parametrize(
    ("body", "period", "retry_after"),
    [
        (DAILY_LIMIT, "day", 3600),
        (DAILY_LIMIT_NAMING_THE_KEY, "day", 3600),
        # Each mentions the daily limit in passing; neither is about the day.
        (BURST_LIMIT, "second", 1),
        (MINUTE_LIMIT, "minute", 60),
        (CALL_FREQUENCY, "minute", 60),
    ],
)
@respx.mock
async def test_rate_limits_name_the_period_they_are_about(
    av: AlphaVantageClient, body: dict[str, str], period: str, retry_after: int
) -> None:
    respx.get(URL).mock(return_value=answer(body))
    with pytest.raises(RateLimited) as info:
        await av.daily("IBM")
    assert info.value.period == period
    assert info.value.retry_after == retry_after


def in_seconds(seconds: int) -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, 60),  # none sent: a minute
        ("30", 30),
        ("0", 1),  # "now" would only be refused again
        ("86400", 3600),  # bounded
        ("soon", 60),
        (in_seconds(7200), 3600),
        (in_seconds(-60), 1),
    ],
)
@respx.mock
async def test_http_429_is_a_rate_limit_with_the_upstreams_retry_after_bounded(
    av: AlphaVantageClient, retry_after: str | None, expected: int
) -> None:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    respx.get(URL).mock(return_value=httpx.Response(429, text="Too Many", headers=headers))
    with pytest.raises(RateLimited) as info:
        await av.quote("IBM")
    assert info.value.period is None
    assert info.value.retry_after == expected


def test_only_the_upstreams_own_failures_are_failures() -> None:
    """UpstreamFailure is what moves the breaker: a rate limit is a throttle, not an outage."""
    for neutral in (UnknownSymbol, RateLimited):
        assert not issubclass(neutral, UpstreamFailure)
    for failure in (UpstreamRefused, BadUpstreamResponse, UpstreamUnavailable, UpstreamTimeout):
        assert issubclass(failure, UpstreamFailure)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(503, html="<html><body>Service Unavailable</body></html>"),
        httpx.Response(500, text="oops"),
        httpx.Response(404, json={}),
        httpx.Response(200, html="<html>maintenance</html>"),
        httpx.Response(200, text='{"Meta Data": {"1. Information": "Dai'),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(
            200,
            json={
                **DAILY,
                "Time Series (Daily)": {"2023-11-28": {"1. open": "x"}},
            },
        ),
        httpx.Response(200, json={"Global Quote": {"01. symbol": "MSFT"}}),
    ],
    ids=[
        "503-html",
        "500",
        "404",
        "200-html",
        "truncated-json",
        "json-array",
        "bad-bar",
        "partial-quote",
    ],
)
@respx.mock
async def test_bad_answers_are_bad_upstream_responses(
    av: AlphaVantageClient, response: httpx.Response
) -> None:
    respx.get(URL).mock(return_value=response)
    function = av.quote if "Global Quote" in response.text else av.daily
    with pytest.raises(BadUpstreamResponse):
        await function("IBM")


@pytest.mark.parametrize(
    "exception",
    [httpx.ConnectError("refused"), httpx.ReadError("reset"), httpx.RemoteProtocolError("cut")],
)
@respx.mock
async def test_network_errors_are_unavailable(av: AlphaVantageClient, exception: Exception) -> None:
    respx.get(URL).mock(side_effect=exception)
    with pytest.raises(UpstreamUnavailable):
        await av.daily("IBM")


@respx.mock
async def test_httpx_timeouts_are_upstream_timeouts(av: AlphaVantageClient) -> None:
    respx.get(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(UpstreamTimeout):
        await av.daily("IBM")


async def test_total_timeout_covers_a_slow_trickle() -> None:
    """UPSTREAM_TIMEOUT_SECONDS bounds the whole call, not just each read."""

    async def trickle(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return answer(DAILY)

    async with httpx.AsyncClient(transport=httpx.MockTransport(trickle)) as http:
        client = AlphaVantageClient(http, api_key=SecretStr(KEY), base_url=URL, timeout=0.05)
        with pytest.raises(UpstreamTimeout) as info:
            await client.daily("IBM")
    assert "0.05" in info.value.detail


# -- oversized bodies ------------------------------------------------------------------------


async def test_a_body_declared_over_the_limit_is_refused_unread() -> None:
    body = b"x" * 2000
    streamed = False

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal streamed
        streamed = True
        yield body

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-length": str(len(body))}, content=chunks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AlphaVantageClient(
            http, api_key=SecretStr(KEY), base_url=URL, timeout=1, max_body_bytes=1000
        )
        with pytest.raises(BadUpstreamResponse, match="over 1000 bytes"):
            await client.daily("IBM")
    assert not streamed


async def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while True:
            sent += 1
            yield b"{" * 512

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=endless())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AlphaVantageClient(
            http, api_key=SecretStr(KEY), base_url=URL, timeout=1, max_body_bytes=4096
        )
        with pytest.raises(BadUpstreamResponse, match="over 4096 bytes"):
            await client.daily("IBM")
    assert sent <= 9  # read no further than the limit


@respx.mock
async def test_an_ordinary_body_is_read_whole(av: AlphaVantageClient) -> None:
    respx.get(URL).mock(return_value=answer(DAILY))
    assert (await av.daily("IBM")).symbol == "IBM"


async def test_calls_beyond_max_concurrency_wait_outside_the_pool() -> None:
    in_flight = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return answer(DAILY)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AlphaVantageClient(
            http, api_key=SecretStr(KEY), base_url=URL, timeout=5, max_concurrency=2
        )
        results = await asyncio.gather(*(client.daily("IBM") for _ in range(10)))
    assert len(results) == 10
    assert peak == 2


# -- REALTIME_BULK_QUOTES -----------------------------------------------------------------------


def bulk_entry(symbol: str, **values: str) -> dict[str, str]:
    """One `data` entry as a premium key gets it: numbers as unpadded strings, a timestamp to
    the millisecond, change_percent without "%", and the extended-hours fields."""
    return {
        "symbol": symbol,
        "timestamp": "2024-10-30 19:59:57.895",
        "open": "209.53",
        "high": "211.12",
        "low": "204.26",
        "close": "205.04",
        "volume": "6956624",
        "previous_close": "210.43",
        "change": "-5.39",
        "change_percent": "-2.5614",
        "extended_hours_quote": "204.9",
        "extended_hours_change": "-0.14",
        "extended_hours_change_percent": "-0.06828",
        **values,
    }


def bulk(*entries: dict[str, str]) -> dict[str, Any]:
    return {"endpoint": "Realtime Bulk Quotes", "message": "success", "data": list(entries)}


@respx.mock
async def test_bulk_quotes_parse_into_quotes_by_symbol(av: AlphaVantageClient) -> None:
    route = respx.get(URL).mock(
        return_value=answer(bulk(bulk_entry("IBM"), bulk_entry("msft", close="412.3")))
    )
    quotes = await av.bulk_quotes(["IBM", "MSFT", "ZZZ"])
    assert route.calls.last.request.url.params["function"] == "REALTIME_BULK_QUOTES"
    assert route.calls.last.request.url.params["symbol"] == "IBM,MSFT,ZZZ"
    assert set(quotes) == {"IBM", "MSFT"}  # left out: a symbol it does not know
    ibm = quotes["IBM"]
    assert (ibm.symbol, ibm.price, ibm.open, ibm.high, ibm.low) == (
        "IBM",
        205.04,
        209.53,
        211.12,
        204.26,
    )
    assert ibm.volume == 6956624
    assert ibm.latest_trading_day == dt.date(2024, 10, 30)
    assert (ibm.previous_close, ibm.change, ibm.change_percent) == (210.43, -5.39, -2.5614)
    assert quotes["MSFT"].price == 412.3  # close is the price; extended hours are ignored


@respx.mock
async def test_bulk_quotes_derive_an_empty_change_from_the_closes(av: AlphaVantageClient) -> None:
    entry = bulk_entry("IBM", close="110.0", previous_close="100.0", change="", change_percent="")
    respx.get(URL).mock(return_value=answer(bulk(entry)))
    quote = (await av.bulk_quotes(["IBM"]))["IBM"]
    assert quote.change == pytest.approx(10.0)
    assert quote.change_percent == pytest.approx(10.0)


@respx.mock
async def test_bulk_quotes_take_a_percent_sign_too(av: AlphaVantageClient) -> None:
    respx.get(URL).mock(return_value=answer(bulk(bulk_entry("IBM", change_percent="-2.5614%"))))
    assert (await av.bulk_quotes(["IBM"]))["IBM"].change_percent == -2.5614


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (PREMIUM, UpstreamRefused),  # what a free key gets
        (DAILY_LIMIT, RateLimited),
        (BAD_KEY, UpstreamRefused),
        ({}, BadUpstreamResponse),
        ({"data": "IBM"}, BadUpstreamResponse),
        (bulk({"symbol": "IBM", "close": "1.0"}), BadUpstreamResponse),
        (bulk(bulk_entry("IBM", close="n/a")), BadUpstreamResponse),
        (bulk(bulk_entry("IBM", timestamp="")), BadUpstreamResponse),
        ({"data": ["IBM"]}, BadUpstreamResponse),
    ],
    ids=[
        "premium",
        "daily-limit",
        "bad-key",
        "empty",
        "data-not-a-list",
        "entry-without-fields",
        "price-not-a-number",
        "no-timestamp",
        "entry-not-an-object",
    ],
)
@respx.mock
async def test_bulk_quote_failures_are_classified(
    av: AlphaVantageClient, body: dict[str, Any], error: type[UpstreamError]
) -> None:
    respx.get(URL).mock(return_value=answer(body))
    with pytest.raises(error):
        await av.bulk_quotes(["IBM", "MSFT"])


@pytest.mark.parametrize("count", [0, 101])
async def test_bulk_quotes_take_1_to_100_symbols(av: AlphaVantageClient, count: int) -> None:
    with pytest.raises(ValueError, match="1 to 100 symbols"):
        await av.bulk_quotes([f"S{n}" for n in range(count)])
