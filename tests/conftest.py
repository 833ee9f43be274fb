from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette

from app.main import create_app
from app.settings import SIMULATOR_DEFAULTS, Settings
from app.simulator import create_simulator
from tests.helpers import SimulatorControl, check_every_response
from tests.redis_server import PASSWORD, RedisServer
from tests.servers import ServerPool, debian_tool


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def prometheus_tool(name: str) -> str:
    """The path of `prometheus` or `promtool`; a missing one fails the test, never skips it."""
    return debian_tool(name, package="prometheus")


# -- the app against the in-process simulator ----------------------------------------------

API_KEY = "test-key-5d1c0a"
ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SECRETS = (API_KEY, ADMIN_TOKEN)  # what no answer may show


def make_settings(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "alphavantage_api_key": API_KEY,
        "alphavantage_base_url": "http://simulator/query",
        "admin_token": ADMIN_TOKEN,
        "state_url": "memory://",  # in-process: nothing shared, no file left behind
        # Market freshness would make every TTL depend on when the suite runs (the wall
        # clock's sessions); tests/test_freshness.py drives it on a fake clock instead.
        "cache_freshness": "fixed",
        # As `python -m app` runs against the simulator: pacing and the daily quota off.
        **{name.lower(): value for name, value in SIMULATOR_DEFAULTS.items()},
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def simulator() -> Starlette:
    return create_simulator()


@pytest.fixture
def app(settings: Settings, simulator: Starlette) -> FastAPI:
    return create_app(
        settings, upstream_transport=httpx.ASGITransport(app=simulator), configure_logs=False
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with its lifespan entered."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


@pytest.fixture
def api(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """`client`, failing the test at any answer that shows one of SECRETS or a traceback."""
    check_every_response(client, SECRETS)
    return client


@asynccontextmanager
async def serve(
    app: FastAPI, *, raise_app_exceptions: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """`api` for an app built in a test: a checked client of `app`, its lifespan entered."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        check_every_response(client, SECRETS)
        yield client


@pytest.fixture
async def sim(simulator: Starlette) -> AsyncIterator[SimulatorControl]:
    """The in-process simulator's control, to break and heal it and count its calls."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=simulator), base_url="http://simulator"
    ) as c:
        yield SimulatorControl(c)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[ServerPool]:
    """Real servers on 127.0.0.1 (tests/servers.py), all stopped when the test ends."""
    pool = ServerPool(tmp_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on 127.0.0.1 (tests/redis_server.py) at `redis_server.url`,
    stopped when the test ends."""
    server = RedisServer(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_server_with_password(tmp_path: Path) -> Iterator[RedisServer]:
    """As `redis_server`, with `--requirepass secret`: `redis://:secret@127.0.0.1:PORT/0`."""
    server = RedisServer(tmp_path, password=PASSWORD)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "redis"])
def shared_state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A STATE_URL for the processes of a test to share: a SQLite file, or a real
    redis-server of the test's own."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared-state.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url
