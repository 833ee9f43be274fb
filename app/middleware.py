"""Request id, access log, HTTP metrics, `Cache-Control: no-store` on every error and the
last-resort 500, as plain ASGI middleware (cheaper than BaseHTTPMiddleware, and it never
buffers a response)."""

from __future__ import annotations

import itertools
import logging
import os
import re
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http_caching import NO_STORE
from app.logs import log_request, request_id
from app.metrics import UNMATCHED_ROUTE, Metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
CACHE_CONTROL = b"cache-control"
# A caller's request id is echoed only if it is short and plain; anything else is replaced.
_USABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Generated ids: 32 hex digits, a random per-process prefix and a counter. Unique is all a
# request id needs, and this costs a tenth of uuid4's read from the OS's random source.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count()
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes arrive every few seconds; at INFO they would drown the requests.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
ENCODED_SLASH = b"%2f"
# Set in the scope by a route whose answer is an event stream (it never ends by itself).
EVENT_STREAM = "stock_service.event_stream"
NOT_FOUND = JSONResponse({"detail": "Not Found"}, status_code=404)
INTERNAL_ERROR = JSONResponse({"detail": "internal server error"}, status_code=500)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, static_routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        # Paths served by plain routes (the docs) that carry no route template of their own.
        self.static_routes = static_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        rid = _request_id(scope)
        token = request_id.set(rid)
        header = (REQUEST_ID_HEADER, rid.encode())
        status = 0
        started = time.perf_counter()
        stream_began: float | None = None

        async def send_with_request_id(message: Message) -> None:
            nonlocal status, stream_began
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), header]
                if scope.get(EVENT_STREAM):
                    stream_began = time.perf_counter()
                if status >= 400 and not any(name == CACHE_CONTROL for name, _ in headers):
                    headers.append((CACHE_CONTROL, NO_STORE))  # an error is never reused
                message["headers"] = headers
            await send(message)

        try:
            if ENCODED_SLASH in scope.get("raw_path", b"").lower():
                # Routing decodes %2F into a path separator: /stock/IBM%2Fquote would reach
                # another route than the one the client named.
                await NOT_FOUND(scope, receive, send_with_request_id)
            else:
                await self.app(scope, receive, send_with_request_id)
        except Exception:
            logger.exception("unhandled error")
            if status:
                raise  # the answer has begun: all that is left is to drop the connection
            await INTERNAL_ERROR(scope, receive, send_with_request_id)
        finally:
            seconds = time.perf_counter() - started
            route: str = getattr(scope.get("route"), "path", None) or (
                scope["path"] if scope["path"] in self.static_routes else UNMATCHED_ROUTE
            )
            method = scope["method"] if scope["method"] in _KNOWN_METHODS else "OTHER"
            # An event stream's latency is the wait for it to begin: its whole life (minutes,
            # as long as the client stays) would swamp the route's latency histogram.
            latency = seconds if stream_began is None else stream_began - started
            self.metrics.observe_http(route, method, status or 500, latency)
            log_request(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                method,
                route,
                scope["path"],
                status or 500,
                round(seconds * 1000, 2),
            )
            request_id.reset(token)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            candidate: str = value.decode("latin-1")
            if _USABLE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return f"{_ID_PREFIX}{next(_id_counter):016x}"
