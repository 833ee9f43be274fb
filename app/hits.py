"""The answers the hit fast path (app/fast_path.py) may repeat: the rendered bytes of each
request the stock routes answered from a fresh cache hit, keyed by the exact request.

An entry names the cached value its bytes were rendered from, and is served only while the
service's cache still holds that very value, fresh (StockService.fresh_copy): a refresh, an
expiry or an eviction ends it, so the table never answers what the route would not.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import Scope

from app.rendering import Rendered

# Hot answers, as for the rendered bytes (app/rendering.py); each keeps its value alive.
HIT_ENTRIES = 1024
ACCEPT = b"accept"

# The exact request: path, query string, and Accept (which may choose another rendering).
RequestKey = tuple[str, bytes, bytes | None]


def request_key(scope: Scope) -> RequestKey:
    accept = None
    for name, value in scope["headers"]:
        if name == ACCEPT:
            accept = value
            break
    return scope["path"], scope["query_string"], accept


@dataclass(frozen=True, slots=True)
class FastHit:
    function: str  # the service's cache key: function and symbol
    symbol: str
    value: object  # the cached value `rendered` was rendered from
    rendered: Rendered
    representation: list[tuple[bytes, bytes]]  # Content-Type, Vary, ...
    route: object  # the matched route, whose template labels the request's metrics


class HitTable:
    """At most `max_entries` entries, the least recently used going first."""

    def __init__(self, max_entries: int = HIT_ENTRIES) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[RequestKey, FastHit] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: RequestKey) -> FastHit | None:
        hit = self._entries.get(key)
        if hit is not None:
            self._entries.move_to_end(key)
        return hit

    def remember(self, key: RequestKey, hit: FastHit) -> None:
        self._entries[key] = hit
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: RequestKey) -> None:
        self._entries.pop(key, None)
