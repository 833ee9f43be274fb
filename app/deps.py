"""FastAPI dependencies: the shared objects the lifespan built, the consumer a request comes
from, and the admin check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.consumers import Consumer
from app.errors import ConsumerThrottled
from app.resources import Resources

# Dependencies are `async def` on purpose: FastAPI runs a plain `def` one in a worker thread,
# which costs more than the whole rest of a cached answer.


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


_bearer = HTTPBearer(auto_error=False)


def bearer_token(request: Request) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    return token_of(request.headers.get("authorization", ""))


def token_of(authorization: str) -> str | None:
    """The token of an Authorization header's value `Bearer <token>`, if it is one."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def authenticate(resources: Resources, token: str | None) -> Consumer | None:
    """The consumer `token` names, its request counted against its rate; None while no
    consumer is configured (the service is open). Raises Unauthorized (401), ConsumerThrottled
    (429) or, if the store has never answered this process, Throttled (503). For any route
    that serves consumers: the gateway passes its `apikey=` here."""
    consumer = await resources.consumers.authenticate(token)
    if consumer is not None:
        try:
            await resources.consumer_limits.admit_request(consumer)
        except ConsumerThrottled as exc:
            resources.metrics.count_consumer_throttled(consumer.name, exc.reason)
            raise
    return consumer


# Where the hit fast path (app/fast_path.py) leaves its `authenticate` outcome when it hands
# a request on to the route: an Authenticated, or the error it raised.
AUTHENTICATED = "stock_service.authenticated"


@dataclass(frozen=True, slots=True)
class Authenticated:
    consumer: Consumer | None


async def request_consumer(request: Request, resources: Resources) -> Consumer | None:
    """`authenticate` with the request's bearer token, once a request: the hit fast path
    may have done it already, and a consumer's request must count once against its rate."""
    outcome = request.scope.get(AUTHENTICATED)
    if isinstance(outcome, Authenticated):
        return outcome.consumer
    if isinstance(outcome, Exception):
        raise outcome
    return await authenticate(resources, bearer_token(request))


async def get_consumer(request: Request) -> Consumer | None:
    """`authenticate` with the request's bearer token."""
    return await authenticate(await get_resources(request), bearer_token(request))


ConsumerDep = Annotated[Consumer | None, Depends(get_consumer)]


async def require_admin(
    resources: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = resources.settings.admin_token
    if token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    presented = credentials.credentials if credentials else ""
    if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid admin bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


# For a route's `dependencies=[...]`: it answers nothing, it only refuses.
ADMIN_ONLY = Depends(require_admin)
