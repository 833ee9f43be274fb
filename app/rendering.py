"""JSON answers, rendered once per cached value and reused while that value lives.

Validating and serialising a 30-day answer costs more than everything else a cache hit does,
so the bytes are kept, with their entity tag: keyed by what was asked (symbol, days, source)
and valid only for the very value they were rendered from, so a refreshed series is never
answered with old bytes.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from app.models import DailyPrices, DailySeries, Quote, QuoteAnswer, Source

# Enough for every hot answer. Each entry keeps its value alive, so the bound also caps what
# the memo holds beyond the cache.
RENDERED_ANSWERS = 1024


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

    def quote(self, quote: Quote, source: Source) -> Rendered:
        return self._memo(
            ("quote", quote.symbol, source),
            quote,
            lambda: QuoteAnswer(**dict(quote), source=source).model_dump_json(),
        )

    def _memo(self, key: Hashable, value: object, render: Callable[[], str]) -> Rendered:
        entry = self._rendered.get(key)
        if entry is not None and entry[0] is value:
            self._rendered.move_to_end(key)
            return entry[1]
        body = render().encode()
        rendered = Rendered(body, entity_tag(body))
        self._rendered[key] = (value, rendered)
        self._rendered.move_to_end(key)
        while len(self._rendered) > self._max_entries:
            self._rendered.popitem(last=False)
        return rendered
