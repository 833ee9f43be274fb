"""A bounded TTL cache that keeps expired entries for degraded serving, and single-flight calls."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Hit(Generic[V]):
    value: V
    fresh: bool  # younger than the TTL; otherwise only fit to serve while upstream fails
    age: float  # seconds since it was fetched
    ttl: float  # seconds it is fresh for from its fetch: fresh for ttl - age more


class TTLCache(Generic[K, V]):
    """Entries are fresh for `ttl` seconds (or the TTL given to their `put`) and kept `stale`
    seconds longer; the least recently used entry goes first once there are `max_entries`."""

    def __init__(
        self,
        *,
        ttl: float,
        stale: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._stale = stale
        self._max_entries = max_entries
        self._clock = clock
        # (value, stored at, its TTL)
        self._entries: OrderedDict[K, tuple[V, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> Hit[V] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, stored_at, ttl = entry
        age = self._clock() - stored_at
        if age >= ttl + self._stale:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return Hit(value, age < ttl, age, ttl)

    def put(self, key: K, value: V, age: float = 0.0, ttl: float | None = None) -> Hit[V]:
        """Keep `value`, fetched `age` seconds ago (elsewhere, when it comes from the shared
        tier): it is fresh for what is left of its TTL, not a whole one. `ttl` overrides the
        cache's own for this entry (pass-through functions each have theirs). Returns the
        entry as a `get` now would."""
        fresh_for = self._ttl if ttl is None else ttl
        self._entries[key] = (value, self._clock() - age, fresh_for)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return Hit(value, age < fresh_for, age, fresh_for)


class SingleFlight(Generic[K, V]):
    """Concurrent `run`s with the same key share one call.

    The call runs in its own task, and callers wait on it through `asyncio.shield`: a caller
    that goes away (a client disconnect) does not cancel the call the others are waiting for.
    """

    def __init__(self) -> None:
        self._flights: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def __contains__(self, key: K) -> bool:
        """Whether a call for `key` is under way: a `run` for it now joins that call."""
        return key in self._flights

    async def run(self, key: K, fn: Callable[[], Awaitable[V]]) -> V:
        return await asyncio.shield(self.flight(key, fn))

    def flight(self, key: K, fn: Callable[[], Awaitable[V]]) -> asyncio.Task[V]:
        """The call under way for `key`, started now with `fn` if there is none: without an
        await, so that many keys' flights can be set up in one step."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.ensure_future(fn())
            self._flights[key] = task
            task.add_done_callback(lambda done: self._land(key, done))
        return task

    def _land(self, key: K, task: asyncio.Task[V]) -> None:
        if self._flights.get(key) is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved, so a flight nobody awaits any more is not reported

    async def aclose(self) -> None:
        """Cancel the calls still in flight (at shutdown)."""
        tasks = list(self._flights.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
