"""An Alpha Vantage client: one HTTP call per method, answers classified into app.errors.

Alpha Vantage answers nearly every failure with HTTP 200 and a JSON message, and the same key
("Information", "Note", "Error Message") has carried rate limits, premium gates and key errors
over the years, so messages are classified by what they say, never by which key holds them.
Upstream text is never passed on: rate-limit messages quote the API key.

Over 300 lines: every function's parser shares that classification, which is the bulk of it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from app.errors import (
    BadUpstreamResponse,
    RateLimited,
    UnknownSymbol,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.models import DailySeries, Quote, RawAnswer, SymbolMatches

DAILY = "TIME_SERIES_DAILY"
QUOTE = "GLOBAL_QUOTE"
SEARCH = "SYMBOL_SEARCH"
FUNCTIONS = (DAILY, QUOTE, SEARCH)  # the ones GET /query builds answers for
# Premium only: up to BULK_MAX_SYMBOLS quotes in one call (a free key gets the premium message).
BULK_QUOTES = "REALTIME_BULK_QUOTES"
BULK_MAX_SYMBOLS = 100
JSON_MEDIA_TYPE = "application/json"
CSV_MEDIA_TYPE = "application/x-download"  # how Alpha Vantage sends datatype=csv
# Alpha Vantage's SYMBOL_SEARCH keys, by SymbolMatch field.
MATCH_KEYS = {
    "symbol": "1. symbol",
    "name": "2. name",
    "type": "3. type",
    "region": "4. region",
    "market_open": "5. marketOpen",
    "market_close": "6. marketClose",
    "timezone": "7. timezone",
    "currency": "8. currency",
    "match_score": "9. matchScore",
}

MESSAGE_KEYS = ("Error Message", "Information", "Note")
# (phrases that say what a throttle message asks for, the period of that limit, seconds to
# hold off). Shorter periods come first because throttle messages mention longer limits in
# passing: the burst answer names "25 requests per day", the old Note "500 calls per day".
RATE_LIMITS = (
    (("sparingly", "per second", "burst limit"), "second", 1),
    (("per minute", "call frequency"), "minute", 60),
    (("per day", "daily rate limit"), "day", 3600),
    (("rate limit", "api call volume"), "minute", 60),  # any other throttle wording
)
# Upstream Retry-After on an HTTP 429: used when it is sane, else the default, never over an
# hour (a header is no reason to stop for longer than Alpha Vantage's own per-day answer).
HTTP_429_DEFAULT_RETRY_AFTER = 60
HTTP_429_MAX_RETRY_AFTER = 3600


def classify_message(function: str, payload: dict[str, Any]) -> Exception:
    """The error for an answer that is not data: a message, `{}`, or an unknown shape."""
    text = " ".join(str(payload[key]) for key in MESSAGE_KEYS if key in payload).lower()
    if not text:
        if payload.get("Global Quote") == {}:
            return UnknownSymbol("unknown symbol")
        what = "an empty answer" if not payload else "an answer without the expected data"
        return BadUpstreamResponse(f"Alpha Vantage sent {what} for {function}")
    # Throttle messages also mention the key ("We have detected your API key as ...") and
    # premium plans: check them first.
    for phrases, period, retry_after in RATE_LIMITS:
        if any(phrase in text for phrase in phrases):
            return RateLimited(
                f"Alpha Vantage rate limit reached (per {period})", retry_after, period
            )
    if "premium" in text:
        return UpstreamRefused(f"Alpha Vantage requires a premium plan for {function}")
    if "demo" in text:
        return UpstreamRefused("Alpha Vantage refused the demo API key")
    if "apikey" in text or "api key" in text:
        return UpstreamRefused("Alpha Vantage rejected the API key (invalid or missing)")
    if "Error Message" in payload:
        return UnknownSymbol("unknown symbol")
    return BadUpstreamResponse(f"Alpha Vantage sent an unrecognised message for {function}")


def http_429_retry_after(header: str | None) -> int:
    """Seconds to hold off after an HTTP 429, from its Retry-After (delay-seconds or an
    HTTP date), bounded to 1 .. HTTP_429_MAX_RETRY_AFTER."""
    seconds: float = HTTP_429_DEFAULT_RETRY_AFTER
    if header:
        try:
            seconds = float(header)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
                seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
            except (TypeError, ValueError):
                pass
    if not math.isfinite(seconds):
        seconds = HTTP_429_DEFAULT_RETRY_AFTER
    return min(HTTP_429_MAX_RETRY_AFTER, max(1, math.ceil(seconds)))


def parse_daily(payload: dict[str, Any]) -> DailySeries:
    meta, series = payload.get("Meta Data"), payload.get("Time Series (Daily)")
    if not isinstance(meta, dict) or not isinstance(series, dict):
        raise classify_message(DAILY, payload)
    try:
        # One validation of the whole series in pydantic-core, which also turns the string
        # numbers into floats: a hundred PricePoint(...) calls would cost three times as much.
        return DailySeries.model_validate(
            {
                "symbol": str(meta["2. Symbol"]).upper(),
                "last_refreshed": str(meta["3. Last Refreshed"]),
                "time_zone": str(meta.get("5. Time Zone", "US/Eastern")),
                "prices": [
                    {
                        "date": day,
                        "open": bar["1. open"],
                        "high": bar["2. high"],
                        "low": bar["3. low"],
                        "close": bar["4. close"],
                        "volume": int(float(bar["5. volume"])),
                    }
                    for day, bar in sorted(series.items(), reverse=True)
                ],
            }
        )
    except (KeyError, TypeError, ValueError):
        raise BadUpstreamResponse("Alpha Vantage sent a malformed daily series") from None


def parse_quote(payload: dict[str, Any]) -> Quote:
    quote = payload.get("Global Quote")
    if not isinstance(quote, dict) or not quote:
        raise classify_message(QUOTE, payload)
    try:
        return Quote(
            symbol=str(quote["01. symbol"]).upper(),
            open=float(quote["02. open"]),
            high=float(quote["03. high"]),
            low=float(quote["04. low"]),
            price=float(quote["05. price"]),
            volume=int(float(quote["06. volume"])),
            latest_trading_day=dt.date.fromisoformat(quote["07. latest trading day"]),
            previous_close=float(quote["08. previous close"]),
            change=float(quote["09. change"]),
            change_percent=float(str(quote["10. change percent"]).rstrip("%")),
        )
    except (KeyError, TypeError, ValueError):
        raise BadUpstreamResponse("Alpha Vantage sent a malformed quote") from None


def parse_search(keywords: str, payload: dict[str, Any]) -> SymbolMatches:
    matches = payload.get("bestMatches")
    if not isinstance(matches, list):
        raise classify_message(SEARCH, payload)
    try:
        return SymbolMatches.model_validate(
            {
                "keywords": keywords,
                "matches": [
                    {field: match[key] for field, key in MATCH_KEYS.items()} for match in matches
                ],
            }
        )
    except (KeyError, TypeError, ValueError):
        raise BadUpstreamResponse("Alpha Vantage sent a malformed symbol search") from None


def parse_bulk_quotes(payload: dict[str, Any]) -> dict[str, Quote]:
    """REALTIME_BULK_QUOTES's `data` as quotes by symbol. A symbol Alpha Vantage does not know
    is left out of `data`, so it is missing here. Its numbers are not zero-padded ("255.8"),
    `change_percent` has no "%", and `change` may be empty (then derived from the closes);
    the extended-hours fields are ignored: `close` is the price, as GLOBAL_QUOTE's is."""
    data = payload.get("data")
    if not isinstance(data, list):
        raise classify_message(BULK_QUOTES, payload)
    quotes: dict[str, Quote] = {}
    try:
        for entry in data:
            close, previous = float(entry["close"]), float(entry["previous_close"])
            change = float(entry["change"]) if entry.get("change") else close - previous
            percent = str(entry.get("change_percent") or "").rstrip("%")
            quote = Quote(
                symbol=str(entry["symbol"]).upper(),
                open=float(entry["open"]),
                high=float(entry["high"]),
                low=float(entry["low"]),
                price=close,
                volume=int(float(entry["volume"])),
                # "2024-10-30 19:59:57.644", US/Eastern: the trading day is its date
                latest_trading_day=dt.date.fromisoformat(str(entry["timestamp"])[:10]),
                previous_close=previous,
                change=change,
                change_percent=float(percent) if percent else change / previous * 100,
            )
            quotes[quote.symbol] = quote
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        raise BadUpstreamResponse("Alpha Vantage sent malformed bulk quotes") from None
    return quotes


class AlphaVantageClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_key: SecretStr,
        base_url: str,
        timeout: float,
        max_body_bytes: int = 5_000_000,
        max_concurrency: int = 100,
    ) -> None:
        self._http = http
        self._api_key = api_key
        self._base_url = base_url
        self._timeout = timeout
        self._max_body_bytes = max_body_bytes
        # Callers beyond the connection pool's size wait here, never inside httpcore's pool:
        # its bookkeeping costs time in proportion to its queue on every request
        # (encode/httpcore#1035), and a request cancelled while queued there can leave a
        # slot taken for good (encode/httpcore#1093). Keep it at most the pool's size.
        self._slots = asyncio.Semaphore(max_concurrency)

    async def daily(self, symbol: str) -> DailySeries:
        """The latest 100 trading days (outputsize=compact: `full` is premium)."""
        return parse_daily(await self._get(DAILY, symbol=symbol, outputsize="compact"))

    async def quote(self, symbol: str) -> Quote:
        return parse_quote(await self._get(QUOTE, symbol=symbol))

    async def bulk_quotes(self, symbols: Sequence[str]) -> dict[str, Quote]:
        """Up to BULK_MAX_SYMBOLS quotes in one call (premium keys only); a symbol missing from
        the answer is one Alpha Vantage does not know."""
        if not 1 <= len(symbols) <= BULK_MAX_SYMBOLS:
            raise ValueError(f"1 to {BULK_MAX_SYMBOLS} symbols a call, not {len(symbols)}")
        return parse_bulk_quotes(await self._get(BULK_QUOTES, symbol=",".join(symbols)))

    async def search(self, keywords: str) -> SymbolMatches:
        return parse_search(keywords, await self._get(SEARCH, keywords=keywords))

    async def raw(self, params: Mapping[str, str]) -> RawAnswer:
        """Pass-through: `params` sent as they are, with the service's key; the answer as it
        came when it is data (JSON, or CSV when datatype=csv asks for it). A message (a JSON
        object holding "Error Message", "Information" or "Note"), `{}` or anything else
        raises as the other methods do: Alpha Vantage's texts are never passed on."""
        function = params.get("function", "")
        body, content_type = await self._send(dict(params))
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadUpstreamResponse("Alpha Vantage sent a body that is not UTF-8") from None
        try:
            payload = json.loads(text)
        except ValueError:
            # An HTML page (a proxy's, a portal's) is no CSV, whatever was asked for.
            if params.get("datatype") != "csv" or content_type.startswith("text/html"):
                raise BadUpstreamResponse("Alpha Vantage sent a body that is not JSON") from None
            return RawAnswer(body=text, media_type=CSV_MEDIA_TYPE)
        if isinstance(payload, dict) and (
            not payload or any(key in payload for key in MESSAGE_KEYS)
        ):
            raise classify_message(function, payload)
        return RawAnswer(body=text, media_type=JSON_MEDIA_TYPE)

    async def _get(self, function: str, **query: str) -> dict[str, Any]:
        # Symbols and keywords travel only as encoded query parameters, never in the URL.
        body, _ = await self._send({"function": function, **query})
        try:
            payload = json.loads(body)
        except ValueError:
            raise BadUpstreamResponse("Alpha Vantage sent a body that is not JSON") from None
        if not isinstance(payload, dict):
            raise BadUpstreamResponse("Alpha Vantage sent JSON that is not an object")
        return payload

    async def _send(self, params: dict[str, str]) -> tuple[bytes, str]:
        """The body and content type of a 200 answer to `params`, the service's key added."""
        params["apikey"] = self._api_key.get_secret_value()
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                return await self._read(params)
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamTimeout(
                f"Alpha Vantage did not answer within {self._timeout:g} s"
            ) from None
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(
                f"could not reach Alpha Vantage ({type(exc).__name__})"
            ) from None

    async def _read(self, params: dict[str, str]) -> tuple[bytes, str]:
        """The body and content type of a 200 answer, refused unread past `max_body_bytes`
        (decoded size, so a compressed bomb is cut off too)."""
        limit = self._max_body_bytes
        too_large = BadUpstreamResponse(f"Alpha Vantage sent a body over {limit} bytes")
        async with self._http.stream("GET", self._base_url, params=params) as response:
            if response.status_code == 429:
                raise RateLimited(
                    "Alpha Vantage rate limit reached (HTTP 429)",
                    http_429_retry_after(response.headers.get("retry-after")),
                    None,
                )
            if response.status_code != 200:
                raise BadUpstreamResponse(f"Alpha Vantage answered HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise too_large
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise too_large
            return bytes(body), response.headers.get("content-type", "")
