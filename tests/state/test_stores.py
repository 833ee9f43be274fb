"""Every store keeps the same promise (app.limits.SharedState): an atomic read-change-write
with the store's clock, bounded by a timeout. Memory, SQLite and a real redis-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from app.errors import StoreBusy, StoreUnavailable
from app.limits import State
from app.state import (
    MemoryState,
    ObservedState,
    RedisState,
    SqliteState,
    check_state_url,
    describe,
    open_state,
)
from tests.redis_server import RedisServer

Store = MemoryState | SqliteState | RedisState
TIMEOUT = 0.5


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if kind == "memory":
        yield "memory://"
    elif kind == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        yield server.url


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    opened = open_state(url, TIMEOUT)
    yield opened
    await opened.aclose()


def increment(state: State, now: float) -> tuple[State, int]:
    count = 1 if state is None else state["count"] + 1
    return {"count": count}, count


async def test_an_update_stores_what_change_returns_and_answers_its_result(store: Store) -> None:
    assert await store.update("k", increment) == 1
    assert await store.update("k", increment) == 2
    assert await store.update("other", increment) == 1


async def test_a_change_that_raises_stores_nothing(store: Store) -> None:
    await store.update("k", increment)

    def fail(state: State, now: float) -> tuple[State, None]:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await store.update("k", fail)
    assert await store.update("k", increment) == 2


async def test_the_clock_is_the_stores_and_reads_as_wall_time(store: Store) -> None:
    def read_clock(state: State, now: float) -> tuple[State, float]:
        return state, now

    assert abs(await store.update("k", read_clock) - time.time()) < 5


async def test_a_value_kept_for_a_while_goes_and_one_kept_for_nothing_is_gone(
    store: Store,
) -> None:
    def put(value: int) -> Callable[[State, float], tuple[State, State]]:
        return lambda state, now: ({"v": value}, state)

    await store.update("short", put(1), keep_for=0.3)
    await store.update("gone", put(1), keep_for=0)
    assert await store.update("short", put(2), keep_for=0.3) == {"v": 1}
    assert await store.update("gone", put(2), keep_for=0) is None
    await asyncio.sleep(0.4)
    assert await store.update("short", put(3), keep_for=0.3) is None


async def test_concurrent_updates_from_two_clients_lose_nothing(url: str, kind: str) -> None:
    """Two clients of one store, as two processes have: every increment counts once."""
    if kind == "memory":
        clients: list[Store] = [open_state(url, TIMEOUT)]  # one process's own
    else:
        clients = [open_state(url, 5.0), open_state(url, 5.0)]
    try:
        results = await asyncio.gather(
            *(clients[n % len(clients)].update("counter", increment) for n in range(40))
        )
    finally:
        for client in clients:
            await client.aclose()
    assert sorted(results) == list(range(1, 41))


async def test_a_dead_redis_is_unavailable_at_once_and_comes_back_by_itself(
    redis_server: RedisServer,
) -> None:
    store = RedisState(redis_server.url, TIMEOUT)
    try:
        await store.update("k", increment)
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="Redis"):
            await store.update("k", increment)
        assert time.monotonic() - started < TIMEOUT + 0.25
        redis_server.restart()  # empty, on the same port
        assert await store.update("k", increment) == 1
    finally:
        await store.aclose()


async def test_a_paused_redis_is_unavailable_after_the_timeout(
    redis_server: RedisServer,
) -> None:
    store = RedisState(redis_server.url, TIMEOUT)
    try:
        await store.update("k", increment)
        redis_server.pause(3)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.update("k", increment)
        assert time.monotonic() - started < TIMEOUT + 0.5
    finally:
        await store.aclose()


async def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory.db").mkdir()
    store = SqliteState(str(tmp_path / "a-directory.db"), TIMEOUT)
    with pytest.raises(StoreUnavailable, match="SQLite"):
        await store.update("k", increment)
    await store.aclose()


async def test_redis_with_a_password(redis_server_with_password: RedisServer) -> None:
    store = RedisState(redis_server_with_password.url, TIMEOUT)
    try:
        assert await store.update("k", increment) == 1
    finally:
        await store.aclose()
    wrong = RedisState(redis_server_with_password.url.replace(":secret@", ":wrong@"), TIMEOUT)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await wrong.update("k", increment)
        assert "wrong" not in str(caught.value)
    finally:
        await wrong.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite:///state.db",
        "sqlite:////var/lib/stock-service/state.db",
        "redis://localhost:6379/0",
        "redis://:pw@redis.internal:6380/2",
        "rediss://user:pw@redis.example.com/0",
    ],
)
def test_usable_state_urls(url: str) -> None:
    check_state_url(url)


@pytest.mark.parametrize(
    "url",
    ["", "sqlite://", "sqlite:///", "postgres://db/x", "redis://", "redis://h:port/0", "mem://"],
)
def test_unusable_state_urls_say_what_would_do(url: str) -> None:
    with pytest.raises(ValueError, match="must be memory://, sqlite:///PATH or redis://"):
        check_state_url(url)


def test_redis_options_in_the_url_are_refused() -> None:
    with pytest.raises(ValueError, match="STATE_TIMEOUT_SECONDS"):
        check_state_url("redis://h:6379/0?socket_timeout=30")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://me:s3cret@h/1", "rediss://me:***@h/1"),
        ("sqlite:///state.db", "sqlite:///state.db"),
    ],
)
def test_describe_masks_the_password(url: str, shown: str) -> None:
    assert describe(url) == shown


async def test_a_burst_queued_past_the_timeout_is_busy_not_down(tmp_path: Path) -> None:
    """Operations waiting their turn on the SQLite thread are refused as busy: the store is
    not marked down. (A busy one may have run: its result came too late.)"""

    class Events:
        def store_operation(self, seconds: float, ok: bool) -> None:
            pass

    store = ObservedState(SqliteState(str(tmp_path / "state.db"), 0.25), Events())
    try:
        outcomes = await asyncio.gather(
            *(store.update("counter", increment) for _ in range(4000)), return_exceptions=True
        )
    finally:
        await store.aclose()
    busy = [o for o in outcomes if isinstance(o, StoreBusy)]
    counted = sorted(o for o in outcomes if isinstance(o, int))
    assert busy, "4000 operations at once should outrun a 0.25 s timeout"
    assert len(busy) + len(counted) == 4000
    assert len(set(counted)) == len(counted)  # each increment counted once
    assert store.up
