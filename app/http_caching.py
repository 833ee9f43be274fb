"""HTTP caching of the stock answers, as the standards say: an entity tag and conditional
requests (RFC 9110), Cache-Control and Age (RFC 9111), and Cache-Status (RFC 9211).

One function, `cached_answer`, decides a 200's or a 304's headers for both ways an answer
leaves the service (the route, and the hit fast path of app/fast_path.py), so they cannot
drift apart. Errors are never stored (`NO_STORE`, added by app/middleware.py).
"""

from __future__ import annotations

import functools
import math
import re
import time
from email.utils import formatdate

from starlette.requests import Request
from starlette.responses import Response

from app.rendering import Rendered
from app.service import Served

# This cache's name in Cache-Status: a list member names the cache it speaks for.
CACHE_NAME = "stock-service"
NO_STORE = b"no-store"
# An entity tag in a list, weak or not (RFC 9110 8.8.3): weak comparison ignores the W/.
_ENTITY_TAG = re.compile(r'(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")')

Headers = list[tuple[bytes, bytes]]


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match fails for the representation tagged `etag`, so that a GET
    gets 304 (RFC 9110 13.1.2): it is `*`, or one of its tags is `etag` by weak comparison.
    Entries that are not entity tags are ignored."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    return etag in _ENTITY_TAG.findall(if_none_match)


def cache_control(served: Served[object], private: bool) -> str:
    """`private` once consumers exist (each answer went to an authenticated caller), else
    `public`. max-age is the answer's whole freshness lifetime: with Age beside it, a cache
    downstream computes what is left (RFC 9111 4.2.3). A stale copy is no longer fresh, and
    a cache that keeps it must ask again before reusing it."""
    scope = "private" if private else "public"
    if served.source == "stale":
        return f"{scope}, max-age=0, must-revalidate"
    return f"{scope}, max-age={int(served.ttl)}"


def cache_status(served: Served[object]) -> str:
    """RFC 9211: a hit (fresh, or stale with a negative ttl and why it stands in), or a
    request forwarded upstream whose answer was stored. ttl is the freshness left."""
    ttl = math.floor(served.ttl - served.age)
    if served.source == "upstream":
        return f"{CACHE_NAME}; fwd=miss; stored; ttl={ttl}"
    if served.source == "stale":
        return f"{CACHE_NAME}; hit; ttl={ttl}; detail={served.stale_because or 'error'}"
    return f"{CACHE_NAME}; hit; ttl={ttl}"


def cached_answer(
    served: Served[object],
    rendered: Rendered,
    representation: Headers,
    *,
    private: bool,
    if_none_match: str | None,
    now: float | None = None,
) -> tuple[int, Headers, bytes]:
    """The status, headers and body of a GET's answer: 304 without a body when
    If-None-Match names the rendered body's tag, else 200 with it. `representation`: the
    200's Content-Type and the like; its Vary goes on a 304 too (RFC 9110 15.4.5).
    `now`: the wall clock."""
    headers: Headers = [
        (b"etag", rendered.etag.encode()),
        (b"cache-control", cache_control(served, private).encode()),
        (b"age", str(int(served.age)).encode()),
        (b"cache-status", cache_status(served).encode()),
    ]
    if none_match(if_none_match, rendered.etag):
        return 304, [*headers, *((n, v) for n, v in representation if n == b"vary")], b""
    fetched_at = (time.time() if now is None else now) - served.age
    return (
        200,
        [
            (b"content-length", str(len(rendered.body)).encode()),
            *representation,
            *headers,
            (b"last-modified", http_date(int(fetched_at))),
        ],
        rendered.body,
    )


def cached_response(
    request: Request,
    served: Served[object],
    rendered: Rendered,
    representation: Headers,
    *,
    private: bool,
) -> Response:
    """cached_answer() as a route's Response, the If-None-Match read from `request`."""
    status, headers, body = cached_answer(
        served,
        rendered,
        representation,
        private=private,
        if_none_match=", ".join(request.headers.getlist("if-none-match")) or None,
    )
    response = Response(body, status)
    response.raw_headers = headers
    return response


@functools.lru_cache(maxsize=1024)
def http_date(seconds: int) -> bytes:
    """An HTTP-date; kept, since a hot answer asks for the same second again and again."""
    return formatdate(seconds, usegmt=True).encode()
