"""One call for many keys: the members of a batch each either ask for their value or step
aside, and once every member has done one or the other, a single call fetches every key asked
for. (REALTIME_BULK_QUOTES: the quotes a /quotes request misses, in one upstream call.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Batch(Generic[K, V]):
    """`fetch(keys)` maps the keys it found to their values (a key it leaves out has none).

    Members step aside when they need no call (a copy turned up) or wait on another call
    elsewhere: waiting for them instead could wait on a call that waits on this batch. A member
    that asks after the batch's call went out gets a call of its own."""

    def __init__(
        self, members: Iterable[K], fetch: Callable[[list[K]], Awaitable[Mapping[K, V]]]
    ) -> None:
        self._undecided = set(members)
        self._asked: list[K] = []
        self._fetch = fetch
        self._call: asyncio.Task[Mapping[K, V]] | None = None
        self._started = asyncio.Event()

    async def get(self, key: K) -> Mapping[K, V]:
        """What the call that fetched `key` found (without `key` if it found nothing)."""
        if self._call is not None:
            return await self._fetch([key])  # late: the batch's call went out without it
        self._asked.append(key)
        self._decided(key)
        await self._started.wait()
        assert self._call is not None
        # Shielded: a member that goes away leaves the call to the others.
        return await asyncio.shield(self._call)

    def step_aside(self, key: K) -> None:
        """`key` asks for nothing now (the call need not wait for it); repeating it is harmless."""
        self._decided(key)

    def _decided(self, key: K) -> None:
        self._undecided.discard(key)
        if self._call is None and not self._undecided and self._asked:
            self._call = asyncio.ensure_future(self._fetch(list(dict.fromkeys(self._asked))))
            self._call.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._started.set()
