from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from app.errors import StoreBusy, StoreUnavailable
from app.limits import State

logger = logging.getLogger("app.state")
R = TypeVar("R")


class StoreEvents(Protocol):
    """What an observed store reports; app.metrics.Metrics is the Prometheus one."""

    def store_operation(self, seconds: float, ok: bool) -> None: ...


class Backend(Protocol):
    """A store itself: memory, SQLite or Redis."""

    url: str

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R: ...

    async def aclose(self) -> None: ...


RETRY_SECONDS = 1.0  # while the store is down, how often an operation tries it again


class ObservedState:
    """A store, each operation timed and reported, and whether it answered the last one:
    the service keeps serving while its store is down, and says so.

    Once an operation fails, the others fail at once for RETRY_SECONDS instead of each
    waiting out the timeout: a miss makes several operations, and a paused store would
    otherwise cost a request several timeouts."""

    def __init__(
        self,
        store: Backend,
        events: StoreEvents,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.url = store.url
        self.up = True
        self._events = events
        self._clock = clock
        self._retry_at = -math.inf

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R:
        if not self.up and self._clock() < self._retry_at:
            raise StoreUnavailable("the state store is down (tried again every second)")
        started = time.perf_counter()
        try:
            result = await self.store.update(key, change, keep_for)
        except StoreBusy:
            self._events.store_operation(time.perf_counter() - started, ok=False)
            raise
        except StoreUnavailable as exc:
            self._events.store_operation(time.perf_counter() - started, ok=False)
            if self.up:
                logger.warning("state store down: %s", exc)
            self.up = False
            self._retry_at = self._clock() + RETRY_SECONDS
            raise
        self._events.store_operation(time.perf_counter() - started, ok=True)
        if not self.up:
            logger.info("state store back")
        self.up = True
        return result

    async def aclose(self) -> None:
        await self.store.aclose()
