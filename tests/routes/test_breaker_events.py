"""GET /circuit-breaker/events and GET /circuit-breaker/history over real sockets, against
real service processes and the simulator (tests/servers.py): the stream as a client reads it,
its reconnect with Last-Event-ID, its heartbeat and its end at SIGTERM, and two replicas
sharing a store (SQLite, and a real redis-server): a trip on one streamed by the other, one
history on both, kept across a restart. (tests/test_event_stream.py tests the hub in-process.)"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from tests.helpers import (
    SimulatorControl,
    error_detail,
    event_stream,
    transition_history,
    trip,
)
from tests.servers import STOP_TIMEOUT_SECONDS, ServerPool, async_http_client

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer events-admin"}
SETTINGS = {
    "ALPHAVANTAGE_API_KEY": "EVENTS-KEY",
    "ADMIN_TOKEN": "events-admin",
    "BREAKER_TIMEOUT_SECONDS": "1",
    "EVENTS_HEARTBEAT_SECONDS": "0.5",
    "SHUTDOWN_DRAIN_SECONDS": "0",
}


def moves(transitions: list[Any]) -> list[tuple[str, str, str]]:
    return [(t["from"], t["to"], t["reason"]) for t in transitions]


async def test_a_client_streams_the_state_then_the_transitions_and_reconnects(
    servers: ServerPool,
) -> None:
    simulator = servers.start_simulator()
    service = servers.start_service(simulator, SETTINGS)
    async with (
        async_http_client(service.url) as api,
        async_http_client(simulator.url) as control,
    ):
        async with event_stream(api) as stream:
            assert stream.headers["cache-control"] == "no-cache"
            state = await stream.next()
            assert state.event == "state"
            assert state.data["breakers"][0]["state"] == "closed"
            await trip(api, SimulatorControl(control))
            opened = await stream.next("transition")
            assert opened.id == opened.data["id"] == 1
            assert opened.data["retry_after"] == 1.0
            # No request comes: the stream's own refresh sees the open timeout pass.
            half_open = await stream.next("transition")
        assert moves([opened.data, half_open.data]) == [
            ("closed", "open", "failure_threshold"),
            ("open", "half_open", "timeout_elapsed"),
        ]

        # Missed while disconnected, and in the history (written just after the answer):
        assert (await api.post("/circuit-breaker/reset", headers=ADMIN)).status_code == 200
        for _ in range(100):
            if len(await transition_history(api)) == 3:
                break
            await asyncio.sleep(0.05)
        async with event_stream(api, last_event_id=half_open.id) as stream:
            state = await stream.next("state")
            missed = await stream.next()
            assert missed.event == "transition"  # before anything live
            assert missed.id == 3
            assert moves([missed.data]) == [("half_open", "closed", "reset")]

        history = await transition_history(api)
        assert history == state.data["history"] == [opened.data, half_open.data, missed.data]
        assert await transition_history(api, limit=1) == history[-1:]
        for limit in (0, 201):
            error_detail(await api.get(f"/circuit-breaker/history?limit={limit}"), 422)


async def test_a_stream_sends_heartbeats_and_ends_when_the_service_stops(
    servers: ServerPool,
) -> None:
    simulator = servers.start_simulator()
    service = servers.start_service(
        simulator, SETTINGS | {"EVENTS_SUMMARY_SECONDS": "3600", "SHUTDOWN_DRAIN_SECONDS": "1"}
    )
    async with async_http_client(service.url) as api, event_stream(api) as stream:
        await stream.next("state")
        assert await stream.next_comment() == ": heartbeat"
        service.process.send_signal(signal.SIGTERM)
        assert await stream.ended()  # at the start of the drain, not after it
        exit_code = await asyncio.to_thread(service.process.wait, STOP_TIMEOUT_SECONDS)
    assert exit_code in (0, -signal.SIGTERM)


async def test_replicas_stream_each_others_transitions_and_share_one_history(
    servers: ServerPool, shared_state_url: str
) -> None:
    simulator = servers.start_simulator()
    settings = SETTINGS | {"STATE_URL": shared_state_url}
    first, second = (servers.start_service(simulator, settings) for _ in range(2))
    async with (
        async_http_client(first.url) as here,
        async_http_client(second.url) as there,
        async_http_client(simulator.url) as control,
        event_stream(there) as stream,
    ):
        await stream.next("state")
        await trip(here, SimulatorControl(control))
        assert (await here.post("/circuit-breaker/reset", headers=ADMIN)).status_code == 200
        streamed = [(await stream.next("transition")).data for _ in range(2)]
        assert moves(streamed) == [
            ("closed", "open", "failure_threshold"),
            ("open", "closed", "reset"),
        ]
        assert await transition_history(here) == await transition_history(there) == streamed

    second.stop()
    restarted = servers.start_service(simulator, settings)
    async with async_http_client(restarted.url) as api:
        assert await transition_history(api) == streamed
