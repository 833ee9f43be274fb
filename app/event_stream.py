"""GET /circuit-breaker/events: this process's subscribers, and the task that feeds them.

One task per process, running only while someone subscribes, reads the transition log (one
document of the shared store) every POLL_SECONDS, and at once when this process has written
to it, and hands each new transition to every local subscriber: one code path for every store
(SQLite has no pub/sub), one small read per process rather than per subscriber, and a
transition made on any replica is streamed by every replica within a poll. The task also
refreshes the breakers every REFRESH_SECONDS, so that an open breaker's lazy move to half-open
is taken up, recorded and streamed without traffic, and sends a summary every
`summary_seconds`.

A subscriber's queue holds its backlog (the state and the transitions it missed) and at most
`queue_size` events more: one that does not read is then dropped (its stream ends; the client
reconnects with Last-Event-ID) instead of making the process hold ever more for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from app.breaker import CircuitBreaker, CircuitOpenError, Listener, Outcome
from app.errors import StoreUnavailable
from app.limits import UpstreamLimits
from app.transition_log import Entry, TransitionLog
from app.views import breaker_snapshot, current_quota, refreshed

logger = logging.getLogger(__name__)

QUEUE_SIZE = 100  # live events a subscriber may fall behind by before it is dropped
STATE_HISTORY = 50  # transitions the state event carries
POLL_SECONDS = 0.25
REFRESH_SECONDS = 1.0
RETRY_MILLISECONDS = 1000  # how soon a browser's EventSource reconnects after the stream ends
HEARTBEAT = ": heartbeat\n\n"


def sse(event: str, data: object, event_id: int | None = None) -> str:
    """One Server-Sent Event: its type, its id if any, and its data as one line of JSON."""
    id_line = "" if event_id is None else f"id: {event_id}\n"
    return f"event: {event}\n{id_line}data: {json.dumps(data, separators=(',', ':'))}\n\n"


def transition_event(transition: Entry) -> str:
    return sse("transition", transition, transition["id"])


class StreamMetrics(Protocol):
    """What the stream reports and reads; app.metrics.Metrics is the Prometheus one."""

    def subscribers_changed(self, count: int) -> None: ...

    def subscriber_dropped(self) -> None: ...

    def cache_lookups(self) -> tuple[float, float]:
        """Fresh hits and all lookups of the cache, counted since the process started."""
        ...


class CallCounts(Listener):
    """The breakers' listener that counts, for the summary, the calls they admitted that
    finished, the failures among them, and the calls they refused."""

    def __init__(self) -> None:
        self.calls = self.failures = self.rejections = 0

    def call_finished(self, breaker: CircuitBreaker, outcome: Outcome, duration: float) -> None:
        self.calls += 1
        if outcome is Outcome.FAILURE:
            self.failures += 1

    def call_rejected(self, breaker: CircuitBreaker, error: CircuitOpenError) -> None:
        self.rejections += 1

    def take(self) -> tuple[int, int, int]:
        """The counts since the last take, which starts them again."""
        counts = self.calls, self.failures, self.rejections
        self.calls = self.failures = self.rejections = 0
        return counts


class Subscriber:
    """One stream's queue of encoded events; None ends the stream."""

    def __init__(self, backlog: list[str], queue_size: int) -> None:
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(len(backlog) + queue_size)
        for event in backlog:
            self.queue.put_nowait(event)
        self.last_id = 0  # the last transition it was given

    def end(self) -> None:
        """End the stream after what it has read: what it has not is let go at once."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class EventHub:
    def __init__(
        self,
        breakers: tuple[CircuitBreaker, ...],
        log: TransitionLog,
        limits: UpstreamLimits,
        counts: CallCounts,
        metrics: StreamMetrics,
        written: asyncio.Event,
        *,
        summary_seconds: float,
        heartbeat_seconds: float,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self._breakers = breakers
        self._log = log
        self._limits = limits
        self._counts = counts
        self._metrics = metrics
        self._written = written  # set when this process has written to the log
        self.summary_seconds = summary_seconds
        self._heartbeat_seconds = heartbeat_seconds
        self._queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self._feeder: asyncio.Task[None] | None = None
        self._closed = False
        self._cache_seen = (0.0, 0.0)

    async def stream(self, last_event_id: int | None) -> AsyncGenerator[str, None]:
        """The events for one subscriber: `retry`, the state, the transitions after
        `last_event_id` still in the history, then the live ones, summaries and heartbeats."""
        subscriber = await self.subscribe(last_event_id)
        try:
            yield f"retry: {RETRY_MILLISECONDS}\n\n"
            while True:
                try:
                    async with asyncio.timeout(self._heartbeat_seconds):
                        event = await subscriber.queue.get()
                except TimeoutError:
                    yield HEARTBEAT
                    continue
                if event is None:
                    return
                yield event
        finally:
            self.unsubscribe(subscriber)

    async def subscribe(self, last_event_id: int | None) -> Subscriber:
        if self._closed:
            subscriber = Subscriber([], self._queue_size)
            subscriber.end()
            return subscriber
        await refreshed(self._breakers)
        try:
            history = await self._log.read()
        except StoreUnavailable:
            history = []
        state = {
            "breakers": self._snapshots(),
            "quota": await self._quota(),
            "history": history[-STATE_HISTORY:],
        }
        missed = [] if last_event_id is None else [t for t in history if t["id"] > last_event_id]
        subscriber = Subscriber(
            [sse("state", state), *map(transition_event, missed)], self._queue_size
        )
        subscriber.last_id = history[-1]["id"] if history else 0
        self.subscribers.add(subscriber)
        self._metrics.subscribers_changed(len(self.subscribers))
        if self._feeder is None or self._feeder.done():
            self._feeder = asyncio.create_task(self._feed())
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)
        self._metrics.subscribers_changed(len(self.subscribers))

    def close(self) -> None:
        """End every stream, and any opened from now on: the service is shutting down."""
        self._closed = True
        for subscriber in self.subscribers:
            subscriber.end()
        self.subscribers.clear()
        self._metrics.subscribers_changed(0)

    async def aclose(self) -> None:
        self.close()
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder

    def publish(self, transitions: list[Entry]) -> None:
        """Give each subscriber the transitions it has not had, in order."""
        for subscriber in list(self.subscribers):
            for transition in transitions:
                if transition["id"] > subscriber.last_id:
                    subscriber.last_id = transition["id"]
                    self._offer(subscriber, transition_event(transition))

    def _offer(self, subscriber: Subscriber, event: str) -> None:
        try:
            subscriber.queue.put_nowait(event)
        except asyncio.QueueFull:
            logger.info("event stream subscriber dropped: %d events unread", self._queue_size)
            subscriber.end()
            self.unsubscribe(subscriber)
            self._metrics.subscriber_dropped()

    async def _feed(self) -> None:
        """While anyone subscribes: refresh, read the log, fan out; a summary now and then."""
        loop = asyncio.get_running_loop()
        self._counts.take()  # the first summary covers its own interval only
        self._cache_seen = self._metrics.cache_lookups()
        next_refresh, next_summary = loop.time(), loop.time() + self.summary_seconds
        while self.subscribers:
            try:
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + REFRESH_SECONDS
                    await refreshed(self._breakers)
                with contextlib.suppress(StoreUnavailable):
                    self.publish(await self._log.read())
                if loop.time() >= next_summary:
                    next_summary = loop.time() + self.summary_seconds
                    summary = sse("summary", await self._summary())
                    for subscriber in list(self.subscribers):
                        self._offer(subscriber, summary)
            except Exception:
                logger.exception("event stream: feeding the subscribers failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._written.wait()
            self._written.clear()

    async def _summary(self) -> dict[str, Any]:
        calls, failures, rejections = self._counts.take()
        hits, lookups = self._metrics.cache_lookups()
        new_hits, new_lookups = hits - self._cache_seen[0], lookups - self._cache_seen[1]
        self._cache_seen = hits, lookups
        return {
            "interval_seconds": self.summary_seconds,
            "calls": calls,
            "failures": failures,
            "rejections": rejections,
            "quota": await self._quota(),
            "cache_hit_ratio": round(new_hits / new_lookups, 4) if new_lookups else None,
            "breakers": self._snapshots(),
        }

    def _snapshots(self) -> list[dict[str, Any]]:
        return [breaker_snapshot(b.snapshot()).model_dump(mode="json") for b in self._breakers]

    async def _quota(self) -> dict[str, Any] | None:
        quota = await current_quota(self._limits)
        return None if quota is None else quota.model_dump(mode="json")
