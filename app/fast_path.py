"""The hit fast path: a repeat of a request the stock routes answered from a fresh cache hit
is answered from its rendered bytes (app/hits.py) without FastAPI's routing, validation and
dependency resolution, which cost more than the rest of a hit.

It sits inside RequestContextMiddleware, so request id, access log and metrics are the
route's (it names the route for them). What the route does for a hit, it does too, in the
same order: the consumer's token and rate (deps.authenticate), the service's fresh copy
(counted as a hit), then the headers and 304 of app/http_caching.py. Anything else goes on
to the route: no entry, a copy that is no longer the one rendered, a refused token (the
route answers the refusal, from the outcome left in the scope, without asking again).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.deps import AUTHENTICATED, Authenticated, authenticate, token_of
from app.errors import Throttled, Unauthorized
from app.hits import request_key
from app.http_caching import cached_answer
from app.resources import Resources

AUTHORIZATION = b"authorization"
IF_NONE_MATCH = b"if-none-match"


class HitFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        resources: Resources | None = getattr(scope["app"].state, "resources", None)
        key = request_key(scope)
        hit = None if resources is None else resources.hits.get(key)
        if resources is None or hit is None:
            await self.app(scope, receive, send)
            return
        authorization, if_none_match = "", []
        for name, value in scope["headers"]:
            if name == AUTHORIZATION and not authorization:  # the first, as the route reads
                authorization = value.decode("latin-1")
            elif name == IF_NONE_MATCH:
                if_none_match.append(value.decode("latin-1"))
        try:
            consumer = await authenticate(resources, token_of(authorization))
        except (Unauthorized, Throttled) as exc:
            scope[AUTHENTICATED] = exc  # the route answers it as it would have
            await self.app(scope, receive, send)
            return
        served = resources.service.fresh_copy(hit.function, hit.symbol, hit.value)
        if served is None:
            resources.hits.forget(key)
            scope[AUTHENTICATED] = Authenticated(consumer)
            await self.app(scope, receive, send)
            return
        status, headers, body = cached_answer(
            served,
            hit.rendered,
            hit.representation,
            private=consumer is not None,
            if_none_match=", ".join(if_none_match) if if_none_match else None,
        )
        scope["route"] = hit.route
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
