from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from app.deps import authenticate, bearer_token, get_resources
from app.models import DailyPrices, ErrorBody, QuoteAnswer
from app.rendering import CSV, JSON, Format, negotiate

router = APIRouter(tags=["stock"])

# Letters and digits in groups joined by single dots or dashes: IBM, BRK.B, RDS-A, 600104.SHH.
SYMBOL_PATTERN = r"^[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*$"
SYMBOL_RULE = "must be 1 to 20 letters or digits, in groups joined by single '.' or '-'"

Symbol = Annotated[
    str,
    Path(
        min_length=1,
        max_length=20,
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
# about 20 us, a fifth of a whole cache hit (make stress-test).
@router.get("/stock/{symbol}", response_model=DailyPrices, responses={**ERRORS, **CSV_CONTENT})
async def daily_prices(
    symbol: Symbol, request: Request, days: Days = 30, format: FormatParam = None
) -> Response:
    resources = await get_resources(request)
    consumer = await authenticate(resources, bearer_token(request))
    series, source = await resources.service.daily(symbol.upper(), consumer)
    if (format or negotiate(request.headers.get("accept"))) == "csv":
        body = resources.renderer.daily_csv(series, days)
        return csv_response(body, f"{series.symbol}.csv")
    body = resources.renderer.daily(series, days, source)
    return Response(body, media_type=JSON, headers=VARY)


@router.get(
    "/stock/{symbol}/quote", response_model=QuoteAnswer, responses={**ERRORS, **CSV_CONTENT}
)
async def quote(symbol: Symbol, request: Request, format: FormatParam = None) -> Response:
    resources = await get_resources(request)
    consumer = await authenticate(resources, bearer_token(request))
    value, source = await resources.service.quote(symbol.upper(), consumer)
    if (format or negotiate(request.headers.get("accept"))) == "csv":
        return csv_response(
            resources.renderer.quote_csv(value, source), f"{value.symbol}-quote.csv"
        )
    return Response(resources.renderer.quote(value, source), media_type=JSON, headers=VARY)


def csv_response(body: bytes, filename: str) -> Response:
    # inline: shown where a browser can, saved under this name where it cannot (curl -OJ).
    # Symbols are letters, digits, '.' and '-': nothing in the name needs escaping.
    disposition = f'inline; filename="{filename}"'
    headers = {"Content-Disposition": disposition, **VARY}
    return Response(body, media_type=CSV, headers=headers)
