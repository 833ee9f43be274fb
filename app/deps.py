"""FastAPI dependencies: the shared objects the lifespan built, and the admin check."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.breaker import CircuitBreaker
from app.metrics import Metrics
from app.service import StockService
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class Resources:
    """Everything the lifespan builds; one set per running app."""

    settings: Settings
    http: httpx.AsyncClient
    breaker: CircuitBreaker
    metrics: Metrics
    service: StockService


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


def get_service(request: Request) -> StockService:
    return get_resources(request).service


def get_breaker(request: Request) -> CircuitBreaker:
    return get_resources(request).breaker


_bearer = HTTPBearer(auto_error=False)


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    token = get_resources(request).settings.admin_token
    if token is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    presented = credentials.credentials if credentials else ""
    if not hmac.compare_digest(presented.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid admin bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


ServiceDep = Annotated[StockService, Depends(get_service)]
BreakerDep = Annotated[CircuitBreaker, Depends(get_breaker)]
ResourcesDep = Annotated[Resources, Depends(get_resources)]
AdminDep = Depends(require_admin)
