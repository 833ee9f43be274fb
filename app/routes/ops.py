from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from app.deps import ResourcesDep
from app.errors import Throttled
from app.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(resources: ResourcesDep) -> dict[str, str]:
    """The process serves: 200 whatever the breaker or the state store do (a store outage
    must not take every replica out of service); it says whether the store answers."""
    return {"status": "ok", "state_store": "up" if resources.state.up else "down"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, str] | JSONResponse:
    """Startup is complete and shutdown has not begun. An open breaker still counts as ready:
    it must not pull every replica out of the load balancer at once."""
    if getattr(request.app.state, "ready", False):
        return {"status": "ready"}
    return JSONResponse({"detail": "not ready"}, status_code=503)


@router.get("/metrics", include_in_schema=False)
async def metrics(resources: ResourcesDep) -> Response:
    with contextlib.suppress(Throttled):  # the store is down: the gauges keep their last value
        await resources.limits.status()  # refreshes the quota gauges
    # The breakers' state as shared with the other processes (a store outage: their own).
    await asyncio.gather(*(breaker.refresh() for breaker in resources.breakers))
    return Response(resources.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
