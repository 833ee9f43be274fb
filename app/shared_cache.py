"""The cache tier every process with the store shares, behind each process's own TTLCache,
and the leases that make concurrent misses for one key, in any process, one upstream call.

A store that does not answer degrades this tier to nothing: reads miss, writes are dropped
and every process fetches for itself, which the shared quota ledger still bounds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from app.errors import StoreUnavailable

R = TypeVar("R")
Document = dict[str, Any] | None
POLL_SECONDS = 0.05  # how often a process waiting on another's flight looks for its result


class CacheStore(Protocol):
    """What this tier needs of a store (app/state has them): an atomic read-change-write
    whose value may expire `keep_for` seconds after it is written."""

    async def update(
        self,
        key: str,
        change: Callable[[Document, float], tuple[Document, R]],
        keep_for: float | None = None,
    ) -> R: ...


@dataclass(frozen=True, slots=True)
class SharedHit:
    value: dict[str, Any]
    age: float  # seconds since it was fetched, by the store's clock
    fresh: bool
    ttl: float  # seconds it is fresh for from its fetch


class SharedCache:
    """Values fresh for `ttl` seconds (or the TTL given to their `put`) and kept `stale`
    seconds longer, for every process.
    A lease on a key lasts `lease_seconds` at most, so a holder that dies blocks no one for
    longer than that."""

    def __init__(
        self,
        store: CacheStore,
        *,
        namespace: str,
        ttl: float,
        stale: float,
        lease_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._ttl = ttl
        self._stale = stale
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._holder = uuid.uuid4().hex  # this process, in the leases it takes

    async def get(self, key: str) -> SharedHit | None:
        def read(document: Document, now: float) -> tuple[Document, SharedHit | None]:
            if not isinstance(document, dict) or "fetched_at" not in document:
                return document, None  # nothing, or not a document of ours: a miss
            age = max(0.0, now - document["fetched_at"])
            # Documents written before TTLs were per value hold none: the tier's own applies.
            ttl = document.get("ttl", self._ttl)
            return document, SharedHit(document["value"], age, age < ttl, ttl)

        return await self._quietly(self._key("value", key), read, None)

    async def put(self, key: str, value: dict[str, Any], ttl: float | None = None) -> None:
        """Share `value`, fresh for `ttl` seconds (None: the tier's own TTL)."""
        fresh_for = self._ttl if ttl is None else ttl

        def write(document: Document, now: float) -> tuple[Document, None]:
            return {"value": value, "fetched_at": now, "ttl": fresh_for}, None

        keep_for = fresh_for + self._stale
        await self._quietly(self._key("value", key), write, None, keep_for=keep_for)

    async def lease(self, key: str) -> bool:
        """Take the key's flight lease; False if another process holds it. With the store
        down, True: each process then fetches for itself."""

        def take(document: Document, now: float) -> tuple[Document, bool]:
            if document is not None and document["holder"] != self._holder:
                return document, False
            return {"holder": self._holder}, True

        return await self._quietly(self._key("lease", key), take, True, self._lease_seconds)

    async def release(self, key: str) -> None:
        def give_back(document: Document, now: float) -> tuple[Document, None]:
            if document is None or document["holder"] != self._holder:
                return document, None
            return None, None

        await self._quietly(self._key("lease", key), give_back, None, keep_for=0)

    async def wait(self, key: str, seconds: float) -> SharedHit | None:
        """The value another process's flight lands within `seconds`; None if its lease goes
        first (that flight failed or its process died) or the time is up."""
        deadline = self._clock() + seconds
        while self._clock() < deadline:
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - self._clock())))
            hit = await self.get(key)
            if hit is not None and hit.fresh:
                return hit
            if await self._lease_gone(key):
                # The holder writes its value before it lets the lease go: look once more.
                hit = await self.get(key)
                return hit if hit is not None and hit.fresh else None
        return None

    async def _lease_gone(self, key: str) -> bool:
        def look(document: Document, now: float) -> tuple[Document, bool]:
            return document, document is None

        return await self._quietly(self._key("lease", key), look, True)

    def _key(self, kind: str, key: str) -> str:
        return f"cache:{self._namespace}:{kind}:{key}"

    async def _quietly(
        self,
        key: str,
        change: Callable[[Document, float], tuple[Document, R]],
        fallback: R,
        keep_for: float | None = None,
    ) -> R:
        try:
            return await self._store.update(key, change, keep_for)
        except StoreUnavailable:
            return fallback
