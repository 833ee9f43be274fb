from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from app.breaker import CircuitBreaker, State
from app.deps import ADMIN_ONLY, BreakersDep
from app.models import BreakerStatus, ErrorBody
from app.views import breaker_snapshot, refreshed

router = APIRouter(tags=["circuit breaker"])

ADMIN_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong admin bearer token"},
    404: {
        "model": ErrorBody,
        "description": "ADMIN_TOKEN is not set (admin endpoints are off), or no such breaker",
    },
}
SEVERITY = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}

BreakerName = Annotated[str | None, Query(description="Only this breaker (default: every breaker)")]


def breaker_status(breakers: tuple[CircuitBreaker, ...]) -> BreakerStatus:
    snapshots = [b.snapshot() for b in breakers]
    worst = max(snapshots, key=lambda s: (SEVERITY[s.state], s.retry_after))
    return BreakerStatus(
        **breaker_snapshot(worst).model_dump(),
        breakers=[breaker_snapshot(s) for s in snapshots],
    )


def selected(breakers: tuple[CircuitBreaker, ...], name: str | None) -> list[CircuitBreaker]:
    chosen = [b for b in breakers if name is None or b.name == name]
    if not chosen:
        known = ", ".join(b.name for b in breakers)
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no breaker {name!r} (there is {known})")
    return chosen


@router.get("/circuit-breaker", response_model=BreakerStatus)
async def breaker_state(breakers: BreakersDep) -> BreakerStatus:
    """The most severe breaker's state at the top level; every breaker in `breakers`."""
    return breaker_status(await refreshed(breakers))


@router.post(
    "/circuit-breaker/open",
    response_model=BreakerStatus,
    dependencies=[ADMIN_ONLY],
    responses=ADMIN_ERRORS,
)
async def force_open(breakers: BreakersDep, breaker: BreakerName = None) -> BreakerStatus:
    """Open the breakers (or the one named) and keep them open until reset (admin), in every
    process sharing their state."""
    for chosen in selected(breakers, breaker):
        chosen.force_open()
    return breaker_status(await refreshed(breakers))


@router.post(
    "/circuit-breaker/reset",
    response_model=BreakerStatus,
    dependencies=[ADMIN_ONLY],
    responses=ADMIN_ERRORS,
)
async def reset(breakers: BreakersDep, breaker: BreakerName = None) -> BreakerStatus:
    """Close the breakers (or the one named) and clear their counters (admin), in every
    process sharing their state."""
    for chosen in selected(breakers, breaker):
        chosen.reset()
    return breaker_status(await refreshed(breakers))
