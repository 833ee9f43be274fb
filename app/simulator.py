"""A built-in Alpha Vantage simulator: a Starlette app answering in Alpha Vantage's real shapes.

Over 400 lines because about a third of it is Alpha Vantage's own message texts, kept word
for word beside the fault modes that send them.

Run it with `python -m app.simulator --host 127.0.0.1 --port 8081`.

`GET /query` serves TIME_SERIES_DAILY (compact: the latest 100 weekdays up to today, UTC;
outputsize=full answers the premium message), GLOBAL_QUOTE (the newest daily bar) and
SYMBOL_SEARCH (over a few real listings, `LISTINGS`) and, for the gateway's pass-through,
TIME_SERIES_INTRADAY (`interval` 1min to 60min, the last INTRADAY_BARS bars to 16:00 of the
newest trading day; `datatype=csv` as Alpha Vantage's download), and REALTIME_BULK_QUOTES
(`symbol=IBM,MSFT,...`, up to 100: GLOBAL_QUOTE's figures in the bulk shape, unknown symbols
left out). Every number is a string.
Prices are a random walk seeded from the symbol, so a symbol always gets the same series on a
given day.
Any non-empty apikey is accepted, as a premium key: the `premium` fault mode with
`"function": "REALTIME_BULK_QUOTES"` answers as Alpha Vantage does a free key.

Symbols are upper-cased; every well-formed symbol is known, except that "ZZ..." symbols are
unknown to the simulator: they get Alpha Vantage's unknown-symbol answers.

Faults are switched at run time with `POST /_faults {"mode": ..., "delay_seconds": ...}` (see
`FaultMode`; setting a mode restarts `flapping` at a good answer); with `"function":
"GLOBAL_QUOTE"` (or another function) only that function's calls see the fault. `GET /_stats`
counts the /query calls received per function, faulty ones included, and `POST /_stats/reset`
zeroes the counters. All state lives on the app instance.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import enum
import hashlib
import math
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.exchanges import US, exchange_of

COMPACT_DAYS = 100
BULK_MAX_SYMBOLS = 100
DEFAULT_DELAY_SECONDS = 2.0
SYMBOL_RE = re.compile(r"^[A-Z0-9]+(?:[.-][A-Z0-9]+)*$")
MAX_SYMBOL_LENGTH = 20

DOCS_URL = "https://www.alphavantage.co/documentation/"
APIKEY_ERROR = (
    "the parameter apikey is invalid or missing. Please claim your free API key on "
    "(https://www.alphavantage.co/support/#api-key). It should take less than 20 seconds."
)
PREMIUM_INFO = (
    "Thank you for using Alpha Vantage! This is a premium endpoint. You may subscribe to any of "
    "the premium plans at https://www.alphavantage.co/premium/ to instantly unlock all premium "
    "endpoints"
)
FULL_OUTPUT_INFO = (
    "Thank you for using Alpha Vantage! The outputsize=full parameter value is a premium feature "
    "for the TIME_SERIES_DAILY endpoint. You may subscribe to any of the premium plans at "
    "https://www.alphavantage.co/premium/ to instantly unlock all premium features"
)
# Word for word as Alpha Vantage sends it since December 2025, "per day" and all.
BURST_LIMIT_INFO = (
    "Thank you for using Alpha Vantage! Please consider spreading out your free API requests more "
    "sparingly (1 request per second). You may subscribe to any of the premium plans at "
    "https://www.alphavantage.co/premium/ to lift the free key rate limit (25 requests per day), "
    "raise the per-second burst limit, and instantly unlock all premium endpoints"
)
MINUTE_LIMIT_NOTE = (
    "Thank you for using Alpha Vantage! Our standard API call frequency is 5 calls per minute and "
    "500 calls per day. Please visit https://www.alphavantage.co/premium/ if you would like to "
    "target a higher API call frequency."
)
DEMO_KEY_INFO = (
    "The **demo** API key is for demo purposes only. Please claim your free API key at "
    "(https://www.alphavantage.co/support/#api-key) to explore our full API offerings. It takes "
    "fewer than 20 seconds."
)
OUTAGE_PAGE = "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
# What a captive portal or a misconfigured proxy answers with status 200.
MAINTENANCE_PAGE = "<html><body><h1>Down for maintenance</h1><p>Back soon.</p></body></html>"
HTTP_429_RETRY_AFTER = "30"
OVERSIZED_PADDING_BYTES = 6_000_000
_PADDING_CHUNK = b"x" * 65_536
INTRADAY_MINUTES = {"1min": 1, "5min": 5, "15min": 15, "30min": 30, "60min": 60}
INTRADAY_BARS = 10
CSV_MEDIA_TYPE = "application/x-download"  # how Alpha Vantage sends datatype=csv


class FaultMode(enum.StrEnum):
    HEALTHY = "healthy"
    DOWN = "down"  # 503 with an HTML page
    SLOW = "slow"  # sleeps delay_seconds, then answers normally
    RATE_LIMITED = "rate_limited"  # the daily-limit Information message
    HTTP_500 = "http_500"  # 500 with a plain-text body
    BAD_JSON = "bad_json"  # 200 application/json, truncated document
    DROP = "drop"  # connection aborted mid-body
    INVALID_KEY = "invalid_key"  # the apikey Error Message
    PREMIUM = "premium"  # the premium-endpoint Information message
    HTTP_429 = "http_429"  # 429 with a plain-text body and Retry-After (a proxy's throttle)
    BURST_LIMITED = "burst_limited"  # the one-request-per-second Information message
    MINUTE_LIMITED = "minute_limited"  # the old five-calls-per-minute Note
    PREMIUM_FULL = "premium_full"  # the outputsize=full premium Information message
    DEMO_KEY = "demo_key"  # the demo-key Information message
    HTML = "html"  # 200 with an HTML page
    OVERSIZED = "oversized"  # 200, a valid answer padded past 6 MB, streamed (no content-length)
    FLAPPING = "flapping"  # per /query call: a normal answer, then http_500, then normal, ...


_MODE_NAMES = tuple(mode.value for mode in FaultMode)


@dataclass
class SimulatorState:
    mode: FaultMode = FaultMode.HEALTHY
    delay_seconds: float = DEFAULT_DELAY_SECONDS
    function: str | None = None  # the only function the fault applies to; None: every one
    calls: Counter[str] = field(default_factory=Counter)
    flapping_calls: int = 0  # /query calls answered in FLAPPING mode since it was set


class SimulatedDropError(Exception):
    """Raised after a partial body so that the server aborts the connection."""


class _DroppedResponse(Response):
    """Announces the whole body in content-length but sends only half of it.

    uvicorn then aborts the connection and logs the error as "Exception in ASGI application".
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await send(start)
        partial = self.body[: len(self.body) // 2]
        await send({"type": "http.response.body", "body": partial, "more_body": True})
        raise SimulatedDropError("connection dropped by the Alpha Vantage simulator")


def _daily_limit(params: Mapping[str, str]) -> Response:
    info = (
        f"We have detected your API key as {params.get('apikey', '')} and our standard API rate "
        "limit is 25 requests per day. Please subscribe to any of the premium plans at "
        "https://www.alphavantage.co/premium/ to instantly remove all daily rate limits."
    )
    return JSONResponse({"Information": info})


# Modes whose answer does not depend on the data asked for.
FIXED_ANSWERS: dict[FaultMode, Callable[[Mapping[str, str]], Response]] = {
    FaultMode.DOWN: lambda _: HTMLResponse(OUTAGE_PAGE, status_code=503),
    FaultMode.HTTP_500: lambda _: PlainTextResponse("Internal Server Error", status_code=500),
    FaultMode.HTTP_429: lambda _: PlainTextResponse(
        "Too Many Requests", status_code=429, headers={"Retry-After": HTTP_429_RETRY_AFTER}
    ),
    FaultMode.RATE_LIMITED: _daily_limit,
    FaultMode.BURST_LIMITED: lambda _: JSONResponse({"Information": BURST_LIMIT_INFO}),
    FaultMode.MINUTE_LIMITED: lambda _: JSONResponse({"Note": MINUTE_LIMIT_NOTE}),
    FaultMode.INVALID_KEY: lambda _: JSONResponse({"Error Message": APIKEY_ERROR}),
    FaultMode.PREMIUM: lambda _: JSONResponse({"Information": PREMIUM_INFO}),
    FaultMode.PREMIUM_FULL: lambda _: JSONResponse({"Information": FULL_OUTPUT_INFO}),
    FaultMode.DEMO_KEY: lambda _: JSONResponse({"Information": DEMO_KEY_INFO}),
    FaultMode.HTML: lambda _: HTMLResponse(MAINTENANCE_PAGE),
}


def _oversized(document: bytes) -> StreamingResponse:
    """`document` (a JSON object) with a "Padding" string of OVERSIZED_PADDING_BYTES added, sent
    in chunks without a content-length, so only counting what arrives can catch it."""

    async def chunks() -> AsyncIterator[bytes]:
        yield document.removesuffix(b"}") + b',"Padding":"'
        for start in range(0, OVERSIZED_PADDING_BYTES, len(_PADDING_CHUNK)):
            yield _PADDING_CHUNK[: OVERSIZED_PADDING_BYTES - start]
        yield b'"}'

    return StreamingResponse(chunks(), media_type="application/json")


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _invalid_call(function: str) -> dict[str, Any]:
    target = f" for {function}" if function else ""
    message = f"Invalid API call. Please retry or visit the documentation ({DOCS_URL}){target}."
    return {"Error Message": message}


def _known(symbol: str) -> bool:
    well_formed = len(symbol) <= MAX_SYMBOL_LENGTH and SYMBOL_RE.match(symbol) is not None
    return well_formed and not symbol.startswith("ZZ")


def _daily_bars(symbol: str, today: dt.date) -> list[tuple[dt.date, dict[str, str]]]:
    """The latest COMPACT_DAYS weekday bars up to `today`, newest first."""
    days: list[dt.date] = []
    day = today
    while len(days) < COMPACT_DAYS:
        if day.weekday() < 5:
            days.append(day)
        day -= dt.timedelta(days=1)
    # Simulated market data, not cryptography.
    rng = random.Random(hashlib.sha256(symbol.encode()).digest())  # noqa: S311
    close = math.exp(rng.uniform(math.log(5), math.log(800)))
    base_volume = math.exp(rng.uniform(math.log(3e5), math.log(3e7)))
    bars: list[tuple[dt.date, dict[str, str]]] = []
    for day in reversed(days):
        step = rng.gauss(0, 0.015)
        if not 5 <= close * math.exp(step) <= 800:
            step = -step  # reflect, so the level stays in its 5..800 range
        open_ = round(close * (1 + rng.gauss(0, 0.004)), 2)
        close = round(close * math.exp(step), 2)
        # Derived from the rounded open and close, so high >= both and low <= both hold exactly.
        high = round(max(open_, close) * (1 + abs(rng.gauss(0, 0.006))), 2)
        low = round(min(open_, close) * (1 - abs(rng.gauss(0, 0.006))), 2)
        volume = min(max(int(base_volume * rng.lognormvariate(0, 0.3)), 10**5), 10**8 - 1)
        bar = {"1. open": open_, "2. high": high, "3. low": low, "4. close": close}
        formatted = {key: f"{price:.4f}" for key, price in bar.items()}
        bars.append((day, formatted | {"5. volume": str(volume)}))
    return bars[::-1]


def _time_series_daily(symbol: str, params: Mapping[str, str], today: dt.date) -> dict[str, Any]:
    if params.get("outputsize") == "full":
        return {"Information": FULL_OUTPUT_INFO}
    if not _known(symbol):
        return _invalid_call("TIME_SERIES_DAILY")
    bars = _daily_bars(symbol, today)
    meta = {
        "1. Information": "Daily Prices (open, high, low, close) and Volumes",
        "2. Symbol": symbol,
        "3. Last Refreshed": bars[0][0].isoformat(),
        "4. Output Size": "Compact",
        "5. Time Zone": "US/Eastern",
    }
    return {"Meta Data": meta, "Time Series (Daily)": {d.isoformat(): b for d, b in bars}}


def _global_quote(symbol: str, today: dt.date) -> dict[str, Any]:
    if not _known(symbol):
        return {"Global Quote": {}}
    (day, bar), (_, previous) = _daily_bars(symbol, today)[:2]
    price, prev_close = float(bar["4. close"]), float(previous["4. close"])
    change = price - prev_close
    quote = {
        "01. symbol": symbol,
        "02. open": bar["1. open"],
        "03. high": bar["2. high"],
        "04. low": bar["3. low"],
        "05. price": bar["4. close"],
        "06. volume": bar["5. volume"],
        "07. latest trading day": day.isoformat(),
        "08. previous close": previous["4. close"],
        "09. change": f"{change:.4f}",
        "10. change percent": f"{change / prev_close * 100:.4f}%",
    }
    return {"Global Quote": quote}


def _bulk_quotes(symbols: str, today: dt.date) -> dict[str, Any]:
    """REALTIME_BULK_QUOTES as a premium key gets it: one entry per known US listing (others
    left out), the newest daily bar as of the close, numbers as strings without padding."""
    wanted = list(dict.fromkeys(s.strip().upper() for s in symbols.split(",") if s.strip()))
    if not 1 <= len(wanted) <= BULK_MAX_SYMBOLS:
        return _invalid_call("REALTIME_BULK_QUOTES")
    data = []
    for symbol in (s for s in wanted if _known(s) and exchange_of(s) == US):
        quote = _global_quote(symbol, today)["Global Quote"]
        close, previous = float(quote["05. price"]), float(quote["08. previous close"])
        data.append(
            {
                "symbol": symbol,
                "timestamp": f"{quote['07. latest trading day']} 16:00:00.000",
                "open": repr(float(quote["02. open"])),
                "high": repr(float(quote["03. high"])),
                "low": repr(float(quote["04. low"])),
                "close": repr(close),
                "volume": quote["06. volume"],
                "previous_close": repr(previous),
                "change": repr(round(close - previous, 2)),
                "change_percent": f"{(close - previous) / previous * 100:.4f}",
                "extended_hours_quote": repr(close),
                "extended_hours_change": "0.0",
                "extended_hours_change_percent": "0.0",
            }
        )
    return {"endpoint": "Realtime Bulk Quotes", "message": "success", "data": data}


def _intraday_bars(symbol: str, interval: str, today: dt.date) -> list[tuple[str, dict[str, str]]]:
    """INTRADAY_BARS bars of `interval` up to 16:00 of the newest trading day, newest first:
    a walk from that day's open, seeded from the symbol and interval."""
    day, daily = _daily_bars(symbol, today)[0]
    rng = random.Random(hashlib.sha256(f"{symbol}:{interval}".encode()).digest())  # noqa: S311
    step = dt.timedelta(minutes=INTRADAY_MINUTES[interval])
    end = dt.datetime.combine(day, dt.time(16, 0))
    price = float(daily["1. open"])
    bars: list[tuple[str, dict[str, str]]] = []
    for n in reversed(range(INTRADAY_BARS)):
        open_, close = price, round(price * math.exp(rng.gauss(0, 0.002)), 2)
        high = round(max(open_, close) * (1 + abs(rng.gauss(0, 0.001))), 2)
        low = round(min(open_, close) * (1 - abs(rng.gauss(0, 0.001))), 2)
        bar = {"1. open": open_, "2. high": high, "3. low": low, "4. close": close}
        formatted = {key: f"{value:.4f}" for key, value in bar.items()}
        volume = str(rng.randint(1_000, 100_000))
        bars.append(
            ((end - n * step).strftime("%Y-%m-%d %H:%M:%S"), formatted | {"5. volume": volume})
        )
        price = close
    return bars[::-1]


def _time_series_intraday(
    symbol: str, params: Mapping[str, str], today: dt.date
) -> dict[str, Any] | str:
    """The JSON document, or the CSV text when datatype=csv (errors stay JSON, as Alpha
    Vantage's do)."""
    interval = params.get("interval", "")
    if not _known(symbol) or interval not in INTRADAY_MINUTES:
        return _invalid_call("TIME_SERIES_INTRADAY")
    bars = _intraday_bars(symbol, interval, today)
    if params.get("datatype") == "csv":
        rows = [f"{when},{','.join(bar.values())}" for when, bar in bars]
        return "\r\n".join(["timestamp,open,high,low,close,volume", *rows, ""])
    meta = {
        "1. Information": f"Intraday ({interval}) open, high, low, close prices and volume",
        "2. Symbol": symbol,
        "3. Last Refreshed": bars[0][0],
        "4. Interval": interval,
        "5. Output Size": "Compact",
        "6. Time Zone": "US/Eastern",
    }
    return {"Meta Data": meta, f"Time Series ({interval})": dict(bars)}


# Each market's region, hours, time zone and currency, as Alpha Vantage lists them.
MARKETS = {
    "US": ("United States", "09:30", "16:00", "UTC-04", "USD"),
    "LON": ("United Kingdom", "08:00", "16:30", "UTC+01", "GBX"),
    "FRK": ("Frankfurt", "08:00", "20:00", "UTC+02", "EUR"),
}
LISTINGS = (  # (symbol, name, market): what SYMBOL_SEARCH searches
    ("IBM", "International Business Machines Corp", "US"),
    ("MSFT", "Microsoft Corporation", "US"),
    ("BA", "Boeing Company", "US"),
    ("TSCO.LON", "Tesco PLC", "LON"),
    ("TSCDF", "Tesco plc", "US"),
    ("TSCDY", "Tesco plc", "US"),
    ("TCO2.FRK", "TESCO PLC ADR/1 LS-05", "FRK"),
)
MATCH_KEYS = (
    "1. symbol",
    "2. name",
    "3. type",
    "4. region",
    "5. marketOpen",
    "6. marketClose",
    "7. timezone",
    "8. currency",
)


def _symbol_search(keywords: str) -> dict[str, Any]:
    """Listings whose symbol or name contains `keywords`, best first: a score of 1 for the
    symbol itself, else the share of the name the keywords cover."""
    wanted = keywords.strip().lower()
    found: list[tuple[float, tuple[str, ...]]] = []
    for symbol, name, market in LISTINGS:
        if wanted and (wanted in symbol.lower() or wanted in name.lower()):
            score = 1.0 if wanted == symbol.lower() else len(wanted) / len(name)
            found.append((score, (symbol, name, "Equity", *MARKETS[market])))
    found.sort(key=lambda scored: -scored[0])
    return {
        "bestMatches": [
            dict(zip(MATCH_KEYS, listing, strict=True)) | {"9. matchScore": f"{score:.4f}"}
            for score, listing in found
        ]
    }


def _answer(params: Mapping[str, str], today: dt.date) -> dict[str, Any] | str:
    """The healthy answer to a /query request: a JSON document, or CSV text."""
    if not params.get("apikey"):
        return {"Error Message": APIKEY_ERROR}
    function = params.get("function", "")
    symbol = params.get("symbol", "").upper()
    if function == "TIME_SERIES_DAILY":
        return _time_series_daily(symbol, params, today)
    if function == "GLOBAL_QUOTE":
        return _global_quote(symbol, today)
    if function == "SYMBOL_SEARCH" and "keywords" in params:
        return _symbol_search(params["keywords"])
    if function == "TIME_SERIES_INTRADAY":
        return _time_series_intraday(symbol, params, today)
    if function == "REALTIME_BULK_QUOTES":
        return _bulk_quotes(params.get("symbol", ""), today)
    return _invalid_call(function)


def create_simulator(*, today: Callable[[], dt.date] = _utc_today) -> Starlette:
    """A fresh simulator with its own fault state and call counters; `today` is for tests."""
    sim = SimulatorState()

    async def query(request: Request) -> Response:
        params = request.query_params
        function = params.get("function") or "(missing)"
        sim.calls[function] += 1
        mode = sim.mode if sim.function in (None, function) else FaultMode.HEALTHY
        if mode is FaultMode.FLAPPING:
            sim.flapping_calls += 1
            mode = FaultMode.HEALTHY if sim.flapping_calls % 2 else FaultMode.HTTP_500
        fixed = FIXED_ANSWERS.get(mode)
        if fixed is not None:
            return fixed(params)
        if mode is FaultMode.SLOW:
            await asyncio.sleep(sim.delay_seconds)
        document = _answer(params, today())
        answer = (
            JSONResponse(document)
            if isinstance(document, dict)
            else Response(document, media_type=CSV_MEDIA_TYPE)
        )
        if mode is FaultMode.BAD_JSON:
            # At most half of the document, so even a tiny answer like {"Global Quote": {}} breaks.
            body = answer.body[: min(40, len(answer.body) // 2)]
            return Response(body, media_type="application/json")
        if mode is FaultMode.DROP:
            return _DroppedResponse(answer.body, media_type="application/json")
        if mode is FaultMode.OVERSIZED:
            return _oversized(bytes(answer.body))
        return answer

    def fault_state() -> JSONResponse:
        return JSONResponse(
            {"mode": sim.mode.value, "delay_seconds": sim.delay_seconds, "function": sim.function}
        )

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return fault_state()
        try:
            payload = await request.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return JSONResponse({"detail": "body must be a JSON object"}, status_code=422)
        mode = payload.get("mode")
        if mode not in _MODE_NAMES:
            detail = f"mode must be one of: {', '.join(_MODE_NAMES)}"
            return JSONResponse({"detail": detail}, status_code=422)
        delay = payload.get("delay_seconds", DEFAULT_DELAY_SECONDS)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= 3600:
            detail = "delay_seconds must be a number of seconds from 0 to 3600"
            return JSONResponse({"detail": detail}, status_code=422)
        function = payload.get("function")
        if function is not None and not isinstance(function, str):
            return JSONResponse({"detail": "function must be a string"}, status_code=422)
        sim.mode, sim.delay_seconds, sim.function = FaultMode(mode), float(delay), function
        sim.flapping_calls = 0
        return fault_state()

    async def stats(request: Request) -> Response:
        if request.url.path.endswith("/reset"):
            sim.calls.clear()
        return JSONResponse({"calls": dict(sim.calls), "total": sim.calls.total()})

    app = Starlette(
        routes=[
            Route("/query", query, methods=["GET"]),
            Route("/_faults", faults, methods=["GET", "POST"]),
            Route("/_stats", stats, methods=["GET"]),
            Route("/_stats/reset", stats, methods=["POST"]),
        ]
    )
    app.state.simulator = sim
    return app


app = create_simulator()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Alpha Vantage simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args(argv)
    # workers=1: uvicorn would otherwise read WEB_CONCURRENCY, which `python -m app` passes on.
    uvicorn.run(
        app, host=args.host, port=args.port, workers=1, access_log=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
