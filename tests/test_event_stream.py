"""The event stream's hub (app/event_stream.py) in-process, against the app's own resources
and the in-process simulator: what a subscriber receives, in which order, the replay after a
reconnect, the bound on a subscriber that never reads, and the end of every stream at
shutdown. (tests/routes/test_breaker_events.py streams over real sockets, across processes.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.event_stream import QUEUE_SIZE, EventHub
from app.settings import Settings
from app.simulator import FaultMode
from tests.conftest import ADMIN, make_settings
from tests.helpers import EventStream, SimulatorControl, scrape, trip

SUBSCRIBERS = "stock_api_event_stream_subscribers"
DROPPED = "stock_api_event_stream_dropped_subscribers_total"


@pytest.fixture
def settings() -> Settings:
    return make_settings(events_summary_seconds=0.5, breaker_timeout_seconds=1.0)


@pytest.fixture
def hub(app: FastAPI, api: httpx.AsyncClient) -> EventHub:
    events: EventHub = app.state.resources.events
    return events


async def lines(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    async for chunk in chunks:
        for line in chunk.splitlines():
            yield line


async def transitions(stream: EventStream, count: int) -> list[tuple[Any, ...]]:
    """The next `count` transitions: id (as the event's and the data's), from, to, reason."""
    moves = []
    for _ in range(count):
        event = await stream.next("transition")
        assert event.id == event.data["id"]
        moves.append((event.data["from"], event.data["to"], event.data["reason"]))
    return moves


async def test_the_state_comes_first_then_every_transition_in_order(
    hub: EventHub, api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    chunks = hub.stream(None)
    assert await anext(chunks) == "retry: 1000\n\n"
    stream = EventStream(lines(chunks))
    state = await stream.next()
    assert state.event == "state"
    assert state.id is None
    assert [b["name"] for b in state.data["breakers"]] == ["alphavantage"]
    assert state.data["breakers"][0]["state"] == "closed"
    assert state.data["quota"] is None  # off against the simulator
    assert state.data["history"] == []

    await trip(api, sim)
    await sim.set_fault(FaultMode.HEALTHY)
    # Nothing calls: the stream's own refresh sees the open timeout pass.
    assert await transitions(stream, 2) == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "timeout_elapsed"),
    ]
    for symbol in ("A", "B", "C"):
        assert (await api.get(f"/stock/{symbol}")).status_code == 200
    assert await transitions(stream, 1) == [("half_open", "closed", "probes_succeeded")]
    await chunks.aclose()
    assert hub.subscribers == set()


async def test_a_summary_counts_the_interval(
    hub: EventHub, api: httpx.AsyncClient, sim: SimulatorControl
) -> None:
    stream = EventStream(lines(hub.stream(None)))
    await stream.next("state")
    await trip(api, sim)
    assert (await api.get("/stock/ANY")).status_code == 503  # rejected
    totals = {"calls": 0, "failures": 0, "rejections": 0}
    while totals != {"calls": 5, "failures": 5, "rejections": 1}:
        summary = (await stream.next("summary")).data
        assert summary["interval_seconds"] == 0.5
        for name in totals:
            totals[name] += summary[name]
    assert summary["breakers"][0]["state"] == "open"


async def test_a_reconnect_with_last_event_id_gets_the_transitions_it_missed(
    app: FastAPI, hub: EventHub, api: httpx.AsyncClient
) -> None:
    for action in ("open", "reset", "open"):
        response = await api.post(f"/circuit-breaker/{action}", headers=ADMIN)
        assert response.status_code == 200
    await app.state.resources.recorder.flush()
    stream = EventStream(lines(hub.stream(1)))
    state = await stream.next()
    assert [t["id"] for t in state.data["history"]] == [1, 2, 3]
    assert [(await stream.next()).id for _ in range(2)] == [2, 3]  # before anything live


async def test_a_subscriber_that_never_reads_is_dropped_at_its_bound(
    hub: EventHub, api: httpx.AsyncClient
) -> None:
    reader = await hub.subscribe(None)
    idle = await hub.subscribe(None)
    backlog = idle.queue.qsize()  # the state event
    transition = {"breaker": "alphavantage", "from": "closed", "to": "open", "reason": "reset"}
    for number in range(1, QUEUE_SIZE + 1):
        hub.publish([{"id": number, **transition, "generation": number}])
        reader.queue.get_nowait()
    assert idle.queue.qsize() == backlog + QUEUE_SIZE  # full, and still subscribed
    assert hub.subscribers == {reader, idle}

    hub.publish([{"id": QUEUE_SIZE + 1, **transition, "generation": QUEUE_SIZE + 1}])
    assert hub.subscribers == {reader}
    assert idle.queue.qsize() == 1  # what it held is let go: only the end of its stream
    assert idle.queue.get_nowait() is None
    metrics = await scrape(api)
    assert metrics.value(DROPPED) == 1
    assert metrics.value(SUBSCRIBERS) == 1
    hub.unsubscribe(reader)
    assert (await scrape(api)).value(SUBSCRIBERS) == 0


async def test_shutting_down_ends_every_stream_and_any_new_one(hub: EventHub) -> None:
    stream = EventStream(lines(hub.stream(None)))
    await stream.next("state")
    hub.close()
    assert await stream.ended()
    assert await EventStream(lines(hub.stream(None))).ended()
