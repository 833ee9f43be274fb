from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from app.alphavantage import DAILY, QUOTE
from app.consumers import Consumer
from app.deps import get_resources, request_consumer
from app.hits import FastHit, request_key
from app.http_caching import Headers, cached_response
from app.models import DailyPrices, DailySeries, ErrorBody, Quote, QuoteAnswer
from app.rendering import CSV, JSON, Format, Rendered, negotiate
from app.resources import Resources
from app.service import Served
from app.symbols import SYMBOL_MAX_LENGTH, SYMBOL_PATTERN

router = APIRouter(tags=["stock"])


Symbol = Annotated[
    str,
    Path(
        min_length=1,
        max_length=SYMBOL_MAX_LENGTH,
        pattern=SYMBOL_PATTERN,
        description="Ticker, case-insensitive: IBM, BRK.B, RDS-A, TSCO.LON, 600104.SHH",
    ),
]
Days = Annotated[int, Query(ge=1, le=100, description="How many trading days, newest first")]
FormatParam = Annotated[
    Format | None,
    Query(
        alias="format",
        description="json or csv; without it, the Accept header decides (JSON by default)",
    ),
]
# The same URL answers JSON or CSV by Accept: caches must keep them apart.
VARY = {"Vary": "Accept"}
VARY_ACCEPT = (b"vary", b"Accept")
JSON_HEADERS: Headers = [(b"content-type", JSON.encode()), VARY_ACCEPT]
# Shown in the OpenAPI docs beside the JSON model.
CSV_CONTENT: dict[int | str, dict[str, object]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}}
}

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in (
        (401, "Consumers are configured and the bearer token is missing, wrong or revoked"),
        (404, "Alpha Vantage does not know the symbol"),
        (422, "Malformed symbol, days, format, symbols or keywords"),
        (
            429,
            "The consumer is over its requests a second, or over its calls a day for a miss "
            "with no cached copy (Retry-After)",
        ),
        (502, "Alpha Vantage failed or refused (bad key, premium only, bad answer)"),
        (
            503,
            "Rate-limited, held back by pacing, quota or bulkhead, or the circuit breaker is "
            "open, with no stale copy (Retry-After)",
        ),
        (504, "Alpha Vantage did not answer in time"),
    )
}


# The hot routes answer pre-rendered JSON (app/rendering.py); response_model documents the
# shape. They take the Request rather than a Depends(): resolving a dependency costs FastAPI
# about 20 us, a fifth of a whole cache hit (make stress-test). A repeat of an answer from a
# fresh hit does not reach them at all: app/fast_path.py answers it.
@router.get("/stock/{symbol}", response_model=DailyPrices, responses={**ERRORS, **CSV_CONTENT})
async def daily_prices(
    symbol: Symbol, request: Request, days: Days = 30, format: FormatParam = None
) -> Response:
    resources = await get_resources(request)
    consumer = await request_consumer(request, resources)
    served = await resources.service.daily(symbol.upper(), consumer)
    series = served.value
    if (format or negotiate(request.headers.get("accept"))) == "csv":
        rendered = resources.renderer.daily_csv(series, days)
        representation = csv_headers(f"{series.symbol}.csv")
    else:
        rendered = resources.renderer.daily(series, days, served.source)
        representation = JSON_HEADERS
    return answer(request, resources, DAILY, served, rendered, representation, consumer)


@router.get(
    "/stock/{symbol}/quote", response_model=QuoteAnswer, responses={**ERRORS, **CSV_CONTENT}
)
async def quote(symbol: Symbol, request: Request, format: FormatParam = None) -> Response:
    resources = await get_resources(request)
    consumer = await request_consumer(request, resources)
    served = await resources.service.quote(symbol.upper(), consumer)
    value = served.value
    if (format or negotiate(request.headers.get("accept"))) == "csv":
        rendered = resources.renderer.quote_csv(value, served.source)
        representation = csv_headers(f"{value.symbol}-quote.csv")
    else:
        rendered = resources.renderer.quote(value, served.source)
        representation = JSON_HEADERS
    return answer(request, resources, QUOTE, served, rendered, representation, consumer)


def csv_headers(filename: str) -> Headers:
    # inline: shown where a browser can, saved under this name where it cannot (curl -OJ).
    # Symbols are letters, digits, '.' and '-': nothing in the name needs escaping.
    return [
        (b"content-type", CSV.encode()),
        (b"content-disposition", f'inline; filename="{filename}"'.encode()),
        VARY_ACCEPT,
    ]


def csv_response(body: bytes, filename: str) -> Response:
    """A CSV answer that is not cached as a whole (GET /quotes')."""
    response = Response(body)
    response.raw_headers = [(b"content-length", str(len(body)).encode()), *csv_headers(filename)]
    return response


def answer(
    request: Request,
    resources: Resources,
    function: str,
    served: Served[DailySeries | Quote],
    rendered: Rendered,
    representation: Headers,
    consumer: Consumer | None,
) -> Response:
    """The 200 or 304 with its caching headers; an answer from a fresh hit is remembered for
    the fast path to repeat."""
    if served.source == "cache":
        hit = FastHit(
            function,
            served.value.symbol,
            served.value,
            rendered,
            representation,
            request.scope["route"],
        )
        resources.hits.remember(request_key(request.scope), hit)
    return cached_response(request, served, rendered, representation, private=consumer is not None)
