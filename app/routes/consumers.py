from __future__ import annotations

import asyncio
import datetime as dt
import time

from fastapi import APIRouter, HTTPException, status

from app.consumers import ConsumerUsage as Usage
from app.deps import ADMIN_ONLY, ConsumerDep, ResourcesDep
from app.models import ConsumerUsage, ErrorBody
from app.routes.circuit_breaker import ADMIN_ERRORS

router = APIRouter(tags=["consumers"])

USAGE_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "Missing, wrong or revoked consumer token"},
    404: {"model": ErrorBody, "description": "No consumer is configured: nobody to report on"},
    429: {"model": ErrorBody, "description": "Over the consumer's requests a second"},
    503: {"model": ErrorBody, "description": "The state store does not answer (Retry-After)"},
}


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def usage_body(usage: Usage) -> ConsumerUsage:
    consumer, quota = usage.consumer, usage.quota
    refill_in = quota.next_refill_in if quota is not None else None
    return ConsumerUsage(
        name=consumer.name,
        calls_per_day=consumer.calls_per_day,
        used=quota.used if quota is not None else None,
        remaining=quota.remaining if quota is not None else None,
        next_refill_at=None if refill_in is None else _utc(time.time() + refill_in),
        requests_per_second=consumer.requests_per_second,
        created_at=_utc(consumer.created_at),
    )


@router.get("/usage", response_model=ConsumerUsage, responses=USAGE_ERRORS)
async def own_usage(resources: ResourcesDep, consumer: ConsumerDep) -> ConsumerUsage:
    """The calling consumer's own budget: what it has spent of its upstream calls a day."""
    if consumer is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, "no consumer is configured: the service is open to all"
        )
    return usage_body(await resources.consumer_limits.usage(consumer))


@router.get(
    "/consumers",
    response_model=list[ConsumerUsage],
    dependencies=[ADMIN_ONLY],
    responses=ADMIN_ERRORS,
)
async def every_consumer(resources: ResourcesDep) -> list[ConsumerUsage]:
    """Every consumer's limits and usage, by name (admin). Never a token or its hash."""
    consumers = await resources.consumers.current()
    usages = await asyncio.gather(
        *(resources.consumer_limits.usage(consumers[name]) for name in sorted(consumers))
    )
    return [usage_body(usage) for usage in usages]
