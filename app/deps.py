"""FastAPI dependencies: the shared objects the lifespan built, and the admin check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.breaker import CircuitBreaker
from app.resources import Resources

# Dependencies are `async def` on purpose: FastAPI runs a plain `def` one in a worker thread,
# which costs more than the whole rest of a cached answer.


def resources_of(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


async def get_resources(request: Request) -> Resources:
    return resources_of(request)


async def get_breakers(request: Request) -> tuple[CircuitBreaker, ...]:
    return resources_of(request).breakers


_bearer = HTTPBearer(auto_error=False)


async def require_admin(
    resources: Annotated[Resources, Depends(get_resources)],
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


BreakersDep = Annotated[tuple[CircuitBreaker, ...], Depends(get_breakers)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
AdminDep = Depends(require_admin)
