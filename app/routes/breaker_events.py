"""GET /circuit-breaker/events (Server-Sent Events) and GET /circuit-breaker/history: the
breakers' transitions as every replica recorded them (app/event_stream.py,
app/transition_log.py).

Starlette's StreamingResponse rather than sse-starlette, which runs a task group of four tasks
per connection (the stream, pings, a disconnect listener, a shutdown watcher): here the queue's
timeout makes the heartbeat, EventHub.close() ends every stream at shutdown, and a subscriber
costs one task (make bench-sse: 37 KiB); encoding an event is one line (event_stream.sse)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from app.deps import ResourcesDep
from app.errors import StoreUnavailable
from app.middleware import EVENT_STREAM
from app.models import ErrorBody, TransitionHistory
from app.transition_log import HISTORY_LIMIT

router = APIRouter(tags=["circuit breaker"])

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering


@router.get(
    "/circuit-breaker/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream"}},
)
async def breaker_events(
    request: Request,
    resources: ResourcesDep,
    last_event_id: Annotated[int | None, Header(description="The last transition id seen")] = None,
) -> StreamingResponse:
    """The breakers' state, then each transition, a summary every EVENTS_SUMMARY_SECONDS and a
    heartbeat comment after EVENTS_HEARTBEAT_SECONDS without an event (the README has the
    events)."""
    request.scope[EVENT_STREAM] = True  # its latency is the wait for it to begin
    return StreamingResponse(
        resources.events.stream(last_event_id),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


@router.get(
    "/circuit-breaker/history",
    response_model=TransitionHistory,
    responses={503: {"model": ErrorBody, "description": "The state store does not answer"}},
)
async def breaker_history(
    resources: ResourcesDep,
    limit: Annotated[int, Query(ge=1, le=HISTORY_LIMIT, description="Newest transitions")] = 50,
) -> TransitionHistory:
    """The last `limit` transitions of every breaker, oldest first, the same on every replica
    sharing the store."""
    try:
        transitions = await resources.transitions.read()
    except StoreUnavailable:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "the state store does not answer: the history is unknown for now",
            headers={"Retry-After": "5"},
        ) from None
    return TransitionHistory.model_validate({"transitions": transitions[-limit:]})
