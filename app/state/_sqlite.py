from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from app.errors import StoreBusy, StoreUnavailable
from app.limits import State

R = TypeVar("R")

# `expires` (host clock) is NULL for what must never go: the quota ledger above all.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, expires REAL);"
    "CREATE INDEX IF NOT EXISTS state_expires ON state (expires) WHERE expires IS NOT NULL;"
)


class SqliteState:
    """State in a SQLite file, shared by every process that opens it, kept across restarts.

    Each update is one `BEGIN IMMEDIATE` transaction, which SQLite serialises across
    processes; WAL keeps readers off the writers' backs, and a committed write survives
    `kill -9` of its process. Calls run on one thread of their own, so the event loop only
    ever waits on a future, and each is bounded by `timeout` (SQLite's busy timeout too).
    The clock is the host's wall clock: every process on the host reads the same one.
    """

    def __init__(self, path: str, timeout: float) -> None:
        self.url = f"sqlite:///{path}"
        self._path = Path(path)
        self._timeout = timeout
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="state-sqlite")
        self._connection: sqlite3.Connection | None = None

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R:
        loop = asyncio.get_running_loop()
        started_at = ended_at = math.inf

        def job() -> R:
            nonlocal started_at, ended_at
            started_at = time.monotonic()
            try:
                return self._update(key, change, keep_for)
            finally:
                ended_at = time.monotonic()

        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._thread, job)
        except TimeoutError:
            ran_for = min(ended_at, time.monotonic()) - started_at
            if ran_for < self._timeout:
                # Queued behind this process's other operations, or done but not yet seen
                # by a loop this busy: a burst, not an outage. Refused all the same, so that
                # nothing waits past the timeout.
                raise StoreBusy(f"SQLite {self._path}: too many operations queued") from None
            raise StoreUnavailable(f"SQLite {self._path}: TimeoutError") from None
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"SQLite {self._path}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=False)

    # -- on the store's thread -----------------------------------------------------------

    def _update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None,
    ) -> R:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            now = time.time()
            row = db.execute(
                "SELECT value FROM state WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
            old = json.loads(row[0]) if row else None
            value, result = change(old, now)
            if value is not old:
                db.execute(
                    "INSERT INTO state (key, value, expires) VALUES (?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE"
                    " SET value = excluded.value, expires = excluded.expires",
                    (key, json.dumps(value), None if keep_for is None else now + keep_for),
                )
            if keep_for is not None:  # what expired goes as new entries come
                db.execute("DELETE FROM state WHERE expires <= ?", (now,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None)
            self._enter_wal(db)
            # NORMAL: a commit survives the process's death (kill -9), not a power cut.
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
            self._connection = db
        return self._connection

    def _enter_wal(self, db: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock without waiting on the busy
        # timeout: processes opening the file at the same moment get "database is locked".
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
