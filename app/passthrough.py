"""The gateway's pass-through (GET /query for functions other than the three it builds answers
for): the caller's parameters sent to Alpha Vantage as they are, apikey aside, and answers
cached by those parameters with a TTL per function (GATEWAY_PASSTHROUGH_TTLS).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from urllib.parse import urlencode

# Pass-through calls' cache-key tag, lane and metrics label: one label whatever the function,
# since callers choose the function and labels must stay a bounded set.
PASSTHROUGH = "passthrough"
FUNCTION_NAME = re.compile(r"[A-Z0-9_]+")
CALLERS_KEY = "apikey"  # the caller's, never sent: the client adds the service's own
# Longer queries are refused unsent: they would make store keys of any size.
MAX_QUERY_LENGTH = 2048


def upstream_params(params: Mapping[str, str]) -> dict[str, str]:
    """The caller's parameters as sent upstream: all of them but its apikey."""
    return {name: value for name, value in params.items() if name != CALLERS_KEY}


def query_length(params: Mapping[str, str]) -> int:
    return len(urlencode(upstream_params(params)))


def canonical_query(params: Mapping[str, str]) -> str:
    """One cache key for every order of the same parameters: `FUNCTION?k=v&...`, the others
    sorted and URL-encoded, apikey aside."""
    rest = sorted((k, v) for k, v in params.items() if k not in (CALLERS_KEY, "function"))
    return f"{params.get('function', '')}?{urlencode(rest)}"


def function_of(canonical: str) -> str:
    return canonical.partition("?")[0]


def parse_ttls(setting: str) -> dict[str, float]:
    """GATEWAY_PASSTHROUGH_TTLS ("NAME=seconds,..."; names in any case) as {NAME: seconds};
    ValueError saying which entry is wrong."""
    ttls: dict[str, float] = {}
    for entry in (part.strip() for part in setting.split(",")):
        if not entry:
            continue
        name, sep, seconds = (piece.strip() for piece in entry.partition("="))
        name = name.upper()
        if not sep or FUNCTION_NAME.fullmatch(name) is None:
            raise ValueError(f"{entry!r} is not FUNCTION=seconds")
        try:
            ttl = float(seconds)
        except ValueError:
            raise ValueError(f"{entry!r}: {seconds!r} is not a number of seconds") from None
        if not math.isfinite(ttl) or ttl < 0:
            raise ValueError(f"{entry!r}: seconds must be 0 or more")
        ttls[name] = ttl
    return ttls
