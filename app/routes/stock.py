from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.deps import ServiceDep
from app.models import DailyPrices, ErrorBody, QuoteAnswer

router = APIRouter(tags=["stock"])

# Letters and digits in groups joined by single dots or dashes: IBM, BRK.B, RDS-A, 600104.SHH.
SYMBOL_PATTERN = r"^[A-Za-z0-9]+(?:[.-][A-Za-z0-9]+)*$"

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

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody, "description": description}
    for code, description in (
        (404, "Alpha Vantage does not know the symbol"),
        (422, "Malformed symbol or days"),
        (502, "Alpha Vantage failed or refused (bad key, premium only, bad answer)"),
        (503, "Rate-limited, or the circuit breaker is open with no stale copy (Retry-After)"),
        (504, "Alpha Vantage did not answer in time"),
    )
}


@router.get("/stock/{symbol}", response_model=DailyPrices, responses=ERRORS)
async def daily_prices(symbol: Symbol, service: ServiceDep, days: Days = 30) -> DailyPrices:
    series, source = await service.daily(symbol.upper())
    return DailyPrices(
        symbol=series.symbol,
        last_refreshed=series.last_refreshed,
        time_zone=series.time_zone,
        source=source,
        prices=series.prices[:days],
    )


@router.get("/stock/{symbol}/quote", response_model=QuoteAnswer, responses=ERRORS)
async def quote(symbol: Symbol, service: ServiceDep) -> QuoteAnswer:
    value, source = await service.quote(symbol.upper())
    return QuoteAnswer(**value.model_dump(), source=source)
