"""JSON and CSV answers, rendered once per cached value and reused while that value lives.

Validating and serialising a 30-day answer costs more than everything else a cache hit does,
so the bytes are kept, with their entity tag: keyed by what was asked (symbol, days, source)
and valid only for the very value they were rendered from, so a refreshed series is never
answered with old bytes.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from app.av_format import csv_body
from app.models import (
    DailyPrices,
    DailySeries,
    Quote,
    QuoteAnswer,
    QuoteResult,
    SearchAnswer,
    Source,
    SymbolMatches,
)

# Enough for every hot answer. Each entry keeps its value alive, so the bound also caps what
# the memo holds beyond the cache.
RENDERED_ANSWERS = 1024

Format = Literal["json", "csv"]
JSON = "application/json"
CSV = "text/csv; charset=utf-8"
DAILY_CSV_HEADER = ("date", "open", "high", "low", "close", "volume")
QUOTE_CSV_HEADER = (*Quote.model_fields, "source")
# GET /quotes: a row a symbol, its quote's columns empty when it failed.
QUOTES_CSV_HEADER = ("symbol", "status", "detail", "retry_after", *QUOTE_CSV_HEADER[1:])


def negotiate(accept: str | None) -> Format:
    """CSV when Accept ranks text/csv above application/json (q-values, `type/*` and `*/*`
    as RFC 9110 says; the most specific range that matches decides); JSON otherwise: a tie,
    `*/*`, no Accept, or one that takes neither (the default answers rather than a 406).
    Two candidates only, so a few lines rather than a library."""
    best: dict[str, tuple[int, float]] = {}  # candidate: (specificity, q) of its best range
    for part in (accept or "").split(","):
        media, *params = (piece.strip() for piece in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        for candidate in ("application/json", "text/csv"):
            kind = candidate.split("/")[0]
            specificity = {candidate: 3, f"{kind}/*": 2, "*/*": 1}.get(media, 0)
            if specificity > best.get(candidate, (0, 0.0))[0]:
                best[candidate] = (specificity, q)
    csv_q, json_q = (best.get(c, (0, 0.0))[1] for c in ("text/csv", "application/json"))
    return "csv" if csv_q > json_q else "json"


def csv_rows(header: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    """RFC 4180 CSV (CRLF line ends), numbers as Python writes them: what pandas reads."""
    return csv_body(header, ([str(value) for value in row] for row in rows))


def quotes_csv(results: Iterable[QuoteResult]) -> bytes:
    """GET /quotes as CSV (a fresh mix of values each time: nothing to memoise)."""
    empty = ("",) * (len(QUOTES_CSV_HEADER) - 4)
    return csv_rows(
        QUOTES_CSV_HEADER,
        (
            (
                r.symbol,
                r.status,
                r.detail or "",
                "" if r.retry_after is None else r.retry_after,
                *(list(dict(r.quote).values())[1:] if r.quote else empty),
            )
            for r in results
        ),
    )


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    etag: str  # a strong entity tag of `body`, quoted: '"<16 characters>"'


def entity_tag(body: bytes) -> str:
    """A strong entity tag for `body`: 96 bits of BLAKE2b, which no two bodies share by
    chance, in 16 URL-safe characters."""
    digest = hashlib.blake2b(body, digest_size=12).digest()
    return f'"{base64.urlsafe_b64encode(digest).decode()}"'


class Renderer:
    def __init__(self, max_entries: int = RENDERED_ANSWERS) -> None:
        self._max_entries = max_entries
        self._rendered: OrderedDict[Hashable, tuple[object, Rendered]] = OrderedDict()

    def daily(self, series: DailySeries, days: int, source: Source) -> Rendered:
        return self._memo(
            ("daily", series.symbol, days, source),
            series,
            lambda: DailyPrices(
                symbol=series.symbol,
                last_refreshed=series.last_refreshed,
                time_zone=series.time_zone,
                source=source,
                prices=[bar._asdict() for bar in series.prices[:days]],
            ).model_dump_json(),
        )

    def daily_csv(self, series: DailySeries, days: int) -> Rendered:
        return self._memo(
            ("daily.csv", series.symbol, days),
            series,
            lambda: csv_rows(DAILY_CSV_HEADER, series.prices[:days]),
        )

    def quote_csv(self, quote: Quote, source: Source) -> Rendered:
        return self._memo(
            ("quote.csv", quote.symbol, source),
            quote,
            lambda: csv_rows(QUOTE_CSV_HEADER, [(*dict(quote).values(), source)]),
        )

    def search(self, found: SymbolMatches, source: Source) -> Rendered:
        return self._memo(
            ("search", found.keywords, source),
            found,
            lambda: SearchAnswer(
                keywords=found.keywords, source=source, matches=found.matches
            ).model_dump_json(),
        )

    def quote(self, quote: Quote, source: Source) -> Rendered:
        return self._memo(
            ("quote", quote.symbol, source),
            quote,
            lambda: QuoteAnswer(**dict(quote), source=source).model_dump_json(),
        )

    def _memo(self, key: Hashable, value: object, render: Callable[[], str | bytes]) -> Rendered:
        entry = self._rendered.get(key)
        if entry is not None and entry[0] is value:
            self._rendered.move_to_end(key)
            return entry[1]
        text = render()
        body = text.encode() if isinstance(text, str) else text
        rendered = Rendered(body, entity_tag(body))
        self._rendered[key] = (value, rendered)
        self._rendered.move_to_end(key)
        while len(self._rendered) > self._max_entries:
            self._rendered.popitem(last=False)
        return rendered
