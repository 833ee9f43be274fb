"""The breakers' transitions, kept in the shared store so that every replica, and the next
run, shows the same history: the last HISTORY_LIMIT of them in one document, each numbered
by the store. Every process that takes up a shared change reports it (app.breaker's
Listener.transitioned); the store's atomic change keeps it once, by breaker and generation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from app.breaker import CircuitBreaker, Listener, Transition
from app.errors import StoreUnavailable

logger = logging.getLogger(__name__)

R = TypeVar("R")
Document = dict[str, Any] | None
Entry = dict[str, Any]  # a transition as the stream and GET /circuit-breaker/history show it
HISTORY_LIMIT = 200


class LogStore(Protocol):
    """What the log needs of a store (app/state has them)."""

    async def update(
        self,
        key: str,
        change: Callable[[Document, float], tuple[Document, R]],
        keep_for: float | None = None,
    ) -> R: ...


def entry(breaker: str, transition: Transition) -> Entry:
    """A transition as the wire shows it, without its id (the store gives that)."""
    at = dt.datetime.fromtimestamp(transition.at, dt.UTC)
    return {
        "breaker": breaker,
        "from": transition.old.value,
        "to": transition.new.value,
        "reason": transition.reason,
        "generation": transition.generation,
        "retry_after": round(transition.retry_after, 3),
        "at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


class TransitionLog:
    """The history document under `key`: `{"next_id": N, "transitions": [oldest ... newest]}`."""

    def __init__(self, store: LogStore, key: str) -> None:
        self._store = store
        self._key = key

    async def append(self, entries: Sequence[Entry]) -> None:
        """Number and keep each entry whose (breaker, generation) the history does not hold."""

        def change(document: Document, now: float) -> tuple[Document, None]:
            kept: list[Entry] = [] if document is None else document["transitions"]
            next_id: int = 1 if document is None else document["next_id"]
            seen = {(e["breaker"], e["generation"]) for e in kept}
            added = []
            for new in entries:
                if (new["breaker"], new["generation"]) not in seen:
                    seen.add((new["breaker"], new["generation"]))
                    added.append({"id": next_id, **new})
                    next_id += 1
            if not added:
                return document, None
            return {"next_id": next_id, "transitions": [*kept, *added][-HISTORY_LIMIT:]}, None

        await self._store.update(self._key, change)

    async def read(self) -> list[Entry]:
        """The history, oldest first. Raises StoreUnavailable when the store does not answer."""

        def change(document: Document, now: float) -> tuple[Document, list[Entry]]:
            return document, [] if document is None else document["transitions"]

        return await self._store.update(self._key, change)


class TransitionRecorder(Listener):
    """The breakers' listener that writes their transitions to the log, in the order heard,
    from one task at a time (a store write cannot happen inside the breaker's callback), and
    calls `on_written` after each write (this process's stream then reads the log at once).
    One the store refuses is left out: any other process that takes up the change reports it.
    """

    def __init__(self, log: TransitionLog, on_written: Callable[[], None] = lambda: None) -> None:
        self._log = log
        self._on_written = on_written
        self._pending: list[Entry] = []
        self._writer: asyncio.Task[None] | None = None

    def transitioned(self, breaker: CircuitBreaker, transition: Transition) -> None:
        self._pending.append(entry(breaker.name, transition))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._pending:
            entries, self._pending = self._pending, []
            try:
                await self._log.append(entries)
            except StoreUnavailable as exc:
                logger.warning("%d breaker transition(s) not recorded: %s", len(entries), exc)
            except Exception:  # a later flush must not raise it again (a 500 on every read)
                logger.exception("%d breaker transition(s) not recorded", len(entries))
            else:
                self._on_written()

    async def flush(self) -> None:
        """Finish the writes under way (each bounded by the store's timeout)."""
        if self._writer is not None:
            # Shielded: a reader that goes away must not cancel the writes others wait for.
            await asyncio.shield(self._writer)
