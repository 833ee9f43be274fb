"""GET /quotes: many symbols' quotes in one answer, each as GET /stock/{symbol}/quote would
answer it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from app.alphavantage import BULK_MAX_SYMBOLS
from app.deps import authenticate, bearer_token, get_resources
from app.error_handlers import error_answer
from app.models import QuoteAnswer, QuoteResult, QuotesAnswer
from app.rendering import JSON, negotiate, quotes_csv
from app.routes.stock import (
    CSV_CONTENT,
    ERRORS,
    VARY,
    FormatParam,
    csv_response,
)
from app.service import QuoteOutcome, Served
from app.symbols import SYMBOL_MAX_LENGTH, SYMBOL_RULE, is_symbol

router = APIRouter(tags=["stock"])
MAX_SYMBOLS = BULK_MAX_SYMBOLS  # what one bulk call takes
SHOWN_BAD_SYMBOLS = 5  # a detail names this many at most, each cut to the longest valid length

Symbols = Annotated[
    str,
    Query(
        description=f"1 to {MAX_SYMBOLS} symbols, comma-separated: IBM,MSFT,TSCO.LON "
        "(case-insensitive; repeats count once)",
    ),
]


def parse_symbols(symbols: str) -> list[str]:
    """The distinct upper-case symbols of `symbols`, in their order; 422 naming the bad ones."""
    names = [name.strip() for name in symbols.split(",") if name.strip()]
    bad = [n for n in names if not is_symbol(n)]
    if bad:
        shown = ", ".join(repr(name[: SYMBOL_MAX_LENGTH + 1]) for name in bad[:SHOWN_BAD_SYMBOLS])
        more = f" and {len(bad) - SHOWN_BAD_SYMBOLS} more" if len(bad) > SHOWN_BAD_SYMBOLS else ""
        raise HTTPException(422, f"symbols: {shown}{more}: each {SYMBOL_RULE}")
    distinct = list(dict.fromkeys(name.upper() for name in names))
    if not 1 <= len(distinct) <= MAX_SYMBOLS:
        raise HTTPException(
            422, f"symbols: give 1 to {MAX_SYMBOLS} symbols, comma-separated (got {len(distinct)})"
        )
    return distinct


def result(symbol: str, outcome: QuoteOutcome) -> QuoteResult:
    if isinstance(outcome, Served):
        quote, source = outcome.value, outcome.source
        return QuoteResult(
            symbol=symbol, status=200, quote=QuoteAnswer(**dict(quote), source=source)
        )
    error = error_answer(outcome, symbol)
    return QuoteResult(
        symbol=symbol, status=error.status, detail=error.detail, retry_after=error.retry_after
    )


@router.get("/quotes", response_model=QuotesAnswer, responses={**ERRORS, **CSV_CONTENT})
async def quotes(symbols: Symbols, request: Request, format: FormatParam = None) -> Response:
    """200 with every symbol's quote or error (a partial answer says which failed and why).
    When every symbol failed with one status, that status and its error answer instead, as
    for a single symbol: a client retrying on 503 or 429 needs no look inside. CSV as
    /stock's: a row a symbol, its quote's columns empty when it failed."""
    wanted = parse_symbols(symbols)
    resources = await get_resources(request)
    consumer = await authenticate(resources, bearer_token(request))
    outcomes = await resources.service.quotes(wanted, consumer)
    results = [result(symbol, outcome) for symbol, outcome in outcomes.items()]
    failed = [r for r in results if r.status != 200]
    if failed and len(failed) == len(results) and len({r.status for r in failed}) == 1:
        retry_after = max((r.retry_after or 0 for r in failed), default=0)
        details = sorted({r.detail or "" for r in failed})
        detail = details[0] if len(details) == 1 else f"every symbol failed: {'; '.join(details)}"
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        raise HTTPException(failed[0].status, detail, headers=headers)
    # A mix of copies of every age and failures, with no tag to revalidate: never reused.
    if (format or negotiate(request.headers.get("accept"))) == "csv":
        response = csv_response(quotes_csv(results), "quotes.csv")
        response.raw_headers.append((b"cache-control", b"no-store"))
        return response
    body = QuotesAnswer(quotes=results, failed=len(failed)).model_dump_json()
    return Response(body, media_type=JSON, headers={**VARY, "Cache-Control": "no-store"})
