from __future__ import annotations

import datetime as dt

from fastapi import APIRouter

from app.breaker import Snapshot
from app.deps import AdminDep, BreakerDep
from app.models import BreakerStatus, ErrorBody

router = APIRouter(tags=["circuit breaker"])

ADMIN_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong admin bearer token"},
    404: {"model": ErrorBody, "description": "ADMIN_TOKEN is not set: admin endpoints are off"},
}


def _utc(timestamp: float | None) -> dt.datetime | None:
    return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, dt.UTC)


def breaker_status(snapshot: Snapshot) -> BreakerStatus:
    return BreakerStatus(
        name=snapshot.name,
        state=snapshot.state.value,
        failure_count=snapshot.failure_count,
        success_count=snapshot.success_count,
        failure_threshold=snapshot.failure_threshold,
        success_threshold=snapshot.success_threshold,
        timeout_seconds=snapshot.timeout,
        half_open_max_calls=snapshot.half_open_max_calls,
        last_failure_time=_utc(snapshot.last_failure_time),
        opened_at=_utc(snapshot.opened_at),
        retry_after_seconds=round(snapshot.retry_after, 3),
        forced_open=snapshot.forced_open,
    )


@router.get("/circuit-breaker", response_model=BreakerStatus)
async def status(breaker: BreakerDep) -> BreakerStatus:
    return breaker_status(breaker.snapshot())


@router.post(
    "/circuit-breaker/open",
    response_model=BreakerStatus,
    dependencies=[AdminDep],
    responses=ADMIN_ERRORS,
)
async def force_open(breaker: BreakerDep) -> BreakerStatus:
    """Open the breaker and keep it open until reset (admin)."""
    breaker.force_open()
    return breaker_status(breaker.snapshot())


@router.post(
    "/circuit-breaker/reset",
    response_model=BreakerStatus,
    dependencies=[AdminDep],
    responses=ADMIN_ERRORS,
)
async def reset(breaker: BreakerDep) -> BreakerStatus:
    """Close the breaker and clear its counters (admin)."""
    breaker.reset()
    return breaker_status(breaker.snapshot())
