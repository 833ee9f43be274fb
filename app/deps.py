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


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_breakers(resources: ResourcesDep) -> tuple[CircuitBreaker, ...]:
    return resources.breakers


BreakersDep = Annotated[tuple[CircuitBreaker, ...], Depends(get_breakers)]

_bearer = HTTPBearer(auto_error=False)


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
