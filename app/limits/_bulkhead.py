from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from app.errors import Throttled


class Bulkhead:
    """At most `max_concurrency` calls at once; the rest wait a bounded time or are refused,
    so a slow upstream can never tie up every connection and task."""

    def __init__(self, name: str, max_concurrency: int) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.name = name
        self.max_concurrency = max_concurrency
        self.in_flight = 0
        # Told in_flight's new value on every change: the metrics' gauge, which in a group of
        # workers must be written as it changes (a scrape reaches one worker, not all).
        self.on_in_flight: Callable[[int], None] | None = None
        self._slots = asyncio.Semaphore(max_concurrency)

    @asynccontextmanager
    async def slot(self, max_wait: float) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(max_wait if self._slots.locked() else None):
                await self._slots.acquire()
        except TimeoutError:
            raise Throttled(
                f"{self.max_concurrency} calls are already in flight",
                "bulkhead",
                1,
            ) from None
        self._count(1)
        try:
            yield
        finally:
            self._count(-1)
            self._slots.release()

    def _count(self, change: int) -> None:
        self.in_flight += change
        if self.on_in_flight is not None:
            self.on_in_flight(self.in_flight)
