"""The real redis-server of tests/redis_server.py: it starts, dies, comes back and hangs on cue."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.redis_server import PASSWORD, RedisServer, redis_server_executable
from tests.servers import HOST, free_port

pytestmark = pytest.mark.integration


@asynccontextmanager
async def connect(url: str, socket_timeout: float = 0.5) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of `url` that fails within `socket_timeout` and never retries, closed on exit."""
    client = redis.asyncio.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        yield client
    finally:
        await client.aclose()


async def test_starts_and_answers_set_and_get(redis_server: RedisServer) -> None:
    assert redis_server.running
    assert redis_server.url == f"redis://{HOST}:{redis_server.port}/0"
    async with connect(redis_server.url) as client:
        assert await client.set("greeting", "hello")
        assert await client.get("greeting") == b"hello"
        assert await client.config_get("save") == {"save": ""}  # nothing written to disk


async def test_kill_makes_commands_fail_fast(redis_server: RedisServer) -> None:
    async with connect(redis_server.url) as client:
        await client.set("key", "value")  # a connection in the pool, to a live server
        redis_server.kill()
        assert not redis_server.running

        started = time.perf_counter()
        with pytest.raises(redis.ConnectionError):
            await client.get("key")
        assert time.perf_counter() - started < 0.25  # refused at once, not a 0.5 s timeout


async def test_restart_comes_back_empty_on_the_same_port(redis_server: RedisServer) -> None:
    port, url = redis_server.port, redis_server.url
    async with connect(url) as client:
        await client.set("key", "value")
        redis_server.kill()
        with pytest.raises(redis.ConnectionError):
            await client.get("key")

        redis_server.restart()
        assert (redis_server.port, redis_server.url) == (port, url)
        # The same client reconnects, to a server that kept nothing.
        assert await client.get("key") is None
        assert await client.set("key", "again")
        assert await client.get("key") == b"again"


async def test_restart_of_a_running_server_stops_it_first(redis_server: RedisServer) -> None:
    port = redis_server.port
    redis_server.restart()
    assert redis_server.running
    assert redis_server.port == port
    async with connect(redis_server.url) as client:
        assert await client.ping()


async def test_password_variant_refuses_unauthenticated_commands(
    redis_server_with_password: RedisServer,
) -> None:
    server = redis_server_with_password
    assert server.url == f"redis://:{PASSWORD}@{HOST}:{server.port}/0"
    async with connect(server.url) as client:
        assert await client.set("key", "value")

    async with connect(f"redis://{HOST}:{server.port}/0") as anonymous:
        with pytest.raises(redis.AuthenticationError):  # NOAUTH, or HELLO's own refusal
            await anonymous.get("key")
    async with connect(f"redis://:wrong@{HOST}:{server.port}/0") as impostor:
        with pytest.raises(redis.AuthenticationError):
            await impostor.get("key")


async def test_pause_holds_commands_for_about_the_paused_time(redis_server: RedisServer) -> None:
    async with connect(redis_server.url, socket_timeout=5.0) as client:
        await client.set("key", "value")
        redis_server.pause(1.0)
        started = time.perf_counter()
        assert await client.get("key") == b"value"
        elapsed = time.perf_counter() - started
    # A benchmark's tolerance: the pause starts before the GET and ends on the server's clock.
    assert 0.7 <= elapsed < 2.5, f"GET took {elapsed:.3f} s through a 1 s pause"


async def test_pause_longer_than_the_socket_timeout_fails_the_command(
    redis_server: RedisServer,
) -> None:
    async with connect(redis_server.url, socket_timeout=0.25) as client:
        await client.set("key", "value")
        redis_server.pause(2.0)
        started = time.perf_counter()
        with pytest.raises(redis.TimeoutError):
            await client.get("key")
        assert time.perf_counter() - started < 1.5


def test_a_port_taken_before_the_server_binds_it_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.create_server((HOST, 0)) as taken:
        taken_port = taken.getsockname()[1]
        ports = iter([taken_port, free_port()])
        monkeypatch.setattr("tests.redis_server.free_port", lambda: next(ports))
        server = RedisServer(tmp_path)
        try:
            server.start()
            assert server.running
            assert server.port not in (None, taken_port)
        finally:
            server.close()


def test_a_missing_redis_server_fails_with_an_install_hint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install redis-server"):
        redis_server_executable()
