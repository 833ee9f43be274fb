"""AlphaVantageClient.raw, the gateway's pass-through call, against respx-mocked answers: data
byte for byte, every message or other non-data answer raised as the other methods raise it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import respx
from pydantic import SecretStr

from app.alphavantage import AlphaVantageClient
from app.errors import BadUpstreamResponse, RateLimited, UnknownSymbol, UpstreamRefused
from app.models import RawAnswer

URL = "https://www.alphavantage.co/query"
KEY = "client-test-key"
NEWS = {"function": "NEWS_SENTIMENT", "tickers": "IBM"}


@pytest.fixture
async def av() -> AsyncIterator[AlphaVantageClient]:
    async with httpx.AsyncClient() as http:
        yield AlphaVantageClient(http, api_key=SecretStr(KEY), base_url=URL, timeout=0.5)


@respx.mock
@pytest.mark.parametrize("body", [b'{"feed": [], "items": "0"}', b"[1, 2]", '{"é": "ü"}'.encode()])
async def test_json_data_comes_back_byte_for_byte(av: AlphaVantageClient, body: bytes) -> None:
    route = respx.get(URL).mock(
        return_value=httpx.Response(200, content=body, headers={"content-type": "text/plain"})
    )
    assert await av.raw(NEWS) == RawAnswer(body=body.decode(), media_type="application/json")
    assert dict(route.calls.last.request.url.params) == {**NEWS, "apikey": KEY}


@respx.mock
async def test_csv_only_when_asked_for(av: AlphaVantageClient) -> None:
    csv = b"timestamp,open\r\n2024-06-14 16:00:00,1.0000\r\n"
    respx.get(URL).mock(return_value=httpx.Response(200, content=csv))
    raw = await av.raw({**NEWS, "datatype": "csv"})
    assert raw == RawAnswer(body=csv.decode(), media_type="application/x-download")
    with pytest.raises(BadUpstreamResponse, match="not JSON"):
        await av.raw(NEWS)


@respx.mock
@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"Error Message": "Invalid API call."}, UnknownSymbol),
        ({"Information": "... 25 requests per day ...", "feed": []}, RateLimited),
        ({"Information": "This is a premium endpoint."}, UpstreamRefused),
        ({"Note": "Our standard API call frequency is 5 calls per minute"}, RateLimited),
        ({}, BadUpstreamResponse),
    ],
)
async def test_a_message_is_raised_never_passed_on(
    av: AlphaVantageClient, body: dict[str, object], error: type[Exception]
) -> None:
    respx.get(URL).mock(return_value=httpx.Response(200, json=body))
    with pytest.raises(error):
        await av.raw({**NEWS, "datatype": "csv"})  # messages come as JSON whatever was asked


@respx.mock
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b"\xff\xfe,x"),
        httpx.Response(200, html="<html><body>Down for maintenance</body></html>"),
    ],
    ids=["not-utf-8", "html"],
)
async def test_no_data_is_no_answer(av: AlphaVantageClient, response: httpx.Response) -> None:
    respx.get(URL).mock(return_value=response)
    with pytest.raises(BadUpstreamResponse):
        await av.raw({**NEWS, "datatype": "csv"})
