"""The service's models rendered in Alpha Vantage's own shapes, for GET /query (app/gateway.py).

As the real API sends them: JSON pretty-printed with a 4-space indent and no final newline,
every number a string (prices with 4 decimals), and CSV with CRLF line endings.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from typing import Any

from app.alphavantage import MATCH_KEYS
from app.models import DailySeries, Quote, SymbolMatch, SymbolMatches

DAILY_INFORMATION = "Daily Prices (open, high, low, close) and Volumes"
DAILY_CSV_HEADER = ("timestamp", "open", "high", "low", "close", "volume")
# The CSV form names the quote's columns differently from the JSON keys.
SEARCH_CSV_HEADER = tuple(key.split(". ", 1)[1] for key in MATCH_KEYS.values())
QUOTE_CSV_HEADER = (
    "symbol",
    "open",
    "high",
    "low",
    "price",
    "volume",
    "latestDay",
    "previousClose",
    "change",
    "changePercent",
)


def price(value: float) -> str:
    return f"{value:.4f}"


def json_body(document: dict[str, Any]) -> bytes:
    return json.dumps(document, indent=4).encode()


def csv_body(header: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def daily_json(series: DailySeries) -> bytes:
    return json_body(
        {
            "Meta Data": {
                "1. Information": DAILY_INFORMATION,
                "2. Symbol": series.symbol,
                "3. Last Refreshed": series.last_refreshed,
                "4. Output Size": "Compact",
                "5. Time Zone": series.time_zone,
            },
            "Time Series (Daily)": {
                bar.date.isoformat(): {
                    "1. open": price(bar.open),
                    "2. high": price(bar.high),
                    "3. low": price(bar.low),
                    "4. close": price(bar.close),
                    "5. volume": str(bar.volume),
                }
                for bar in series.prices
            },
        }
    )


def daily_csv(series: DailySeries) -> bytes:
    return csv_body(
        DAILY_CSV_HEADER,
        (
            (
                bar.date.isoformat(),
                price(bar.open),
                price(bar.high),
                price(bar.low),
                price(bar.close),
                str(bar.volume),
            )
            for bar in series.prices
        ),
    )


def quote_values(quote: Quote) -> tuple[str, ...]:
    """The quote's fields as strings, in Alpha Vantage's order (JSON keys 01 to 10)."""
    return (
        quote.symbol,
        price(quote.open),
        price(quote.high),
        price(quote.low),
        price(quote.price),
        str(quote.volume),
        quote.latest_trading_day.isoformat(),
        price(quote.previous_close),
        price(quote.change),
        f"{quote.change_percent:.4f}%",
    )


QUOTE_JSON_KEYS = (
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
)


def quote_json(quote: Quote) -> bytes:
    return json_body({"Global Quote": dict(zip(QUOTE_JSON_KEYS, quote_values(quote), strict=True))})


def quote_csv(quote: Quote) -> bytes:
    return csv_body(QUOTE_CSV_HEADER, [quote_values(quote)])


def match_values(match: SymbolMatch) -> tuple[str, ...]:
    """A match's fields as strings, in Alpha Vantage's order (JSON keys 1 to 9)."""
    return tuple(
        f"{match.match_score:.4f}" if name == "match_score" else str(getattr(match, name))
        for name in MATCH_KEYS
    )


def search_json(found: SymbolMatches) -> bytes:
    keys = MATCH_KEYS.values()
    return json_body(
        {"bestMatches": [dict(zip(keys, match_values(m), strict=True)) for m in found.matches]}
    )


def search_csv(found: SymbolMatches) -> bytes:
    return csv_body(SEARCH_CSV_HEADER, (match_values(m) for m in found.matches))
