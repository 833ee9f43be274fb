from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from app.errors import StoreUnavailable
from app.limits import State

R = TypeVar("R")


class RedisState:
    """State in Redis (7+, or Valkey), shared by replicas on many hosts.

    Each update is an optimistic transaction: WATCH the key, read it and the server's clock
    (TIME: one clock for every host), decide, then MULTI/EXEC the write, again if another
    client changed the key in between. Values that must never go (the quota ledger) carry no
    expiry, so a `volatile-*` maxmemory policy never evicts them; use one of those, or
    `noeviction`, not `allkeys-*`.

    redis-py is told not to retry and to give up on a socket after `timeout`: its own
    defaults would keep a caller for seconds (redis-py 8: ten retries of up to 5 s each when
    built from a host and port), and a slow store must never hold a request up.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self._timeout = timeout
        self._client = Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    async def update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None = None,
    ) -> R:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._update(key, change, keep_for)
        except (TimeoutError, RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis: {type(exc).__name__}") from None

    async def _update(
        self,
        key: str,
        change: Callable[[State, float], tuple[State, R]],
        keep_for: float | None,
    ) -> R:
        async with self._client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    seconds, microseconds = await pipe.time()
                    old = None if raw is None else json.loads(raw)
                    value, result = change(old, seconds + microseconds / 1e6)
                    if value is old:
                        return result  # nothing to write; leaving the block unwatches
                    pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
                    if value is None or keep_for == 0:
                        pipe.delete(key)
                    elif keep_for is None:
                        pipe.set(key, json.dumps(value))
                    else:
                        pipe.set(key, json.dumps(value), px=max(1, round(keep_for * 1000)))
                    await pipe.execute()
                    return result
                except WatchError:
                    continue  # another client wrote the key first: read it again

    async def aclose(self) -> None:
        await self._client.aclose()
