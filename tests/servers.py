"""Real servers for the integration tests: subprocesses on 127.0.0.1 on random free ports.

`ServerPool` starts the Alpha Vantage simulator (`python -m app.simulator`), the service exactly
as production runs it (`python -m uvicorn app.main:app`) and the `make run` launcher
(`python -m app`, with one worker or more). Each runs in a session of its own with stdout and
stderr captured to files, and `ServerPool.close()` stops every one of them, and whatever
children they left behind.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from app.settings import SIMULATOR_DEFAULTS, Settings
from tests.helpers import SimulatorControl, check_every_response

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 15.0
STOP_TIMEOUT_SECONDS = 10.0
PORT_ATTEMPTS = 3  # another process may take a free port before the server binds it

# Every variable the service reads (pydantic-settings matches them case-insensitively).
SETTINGS_VARIABLES = frozenset(name.upper() for name in Settings.model_fields)
# A proxy from the environment would carry the servers' 127.0.0.1 traffic elsewhere.
PROXY_VARIABLES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"})

Command = Callable[[int], Sequence[str]]


class ServerStartError(RuntimeError):
    """A server exited, or did not answer, before it was ready."""


def debian_tool(command: str, package: str) -> str:
    """The path of `command`; a missing one fails the test, never skips it, naming the Debian
    package that brings it (the Makefile's DEBIAN_TOOLS, which `make test` installs)."""
    executable = shutil.which(command)
    if executable is None:
        pytest.fail(
            f"{command} is missing: install Debian's {package} package "
            f"(`apt-get install {package}`; `make test` does it when run as root)",
            pytrace=False,
        )
    return executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_connections(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_until_port_closed(port: int, timeout: float) -> bool:
    """True once nothing accepts connections on `port`; False if something still does after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while accepts_connections(port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def server_environment(variables: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without the service's settings or proxies, plus `variables`.

    PYTHONPATH puts this checkout first, so the servers run the code under test wherever their
    working directory is.
    """
    excluded = SETTINGS_VARIABLES | PROXY_VARIABLES
    env = {name: value for name, value in os.environ.items() if name.upper() not in excluded}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the capture files as they are written
    env.update(variables)
    return env


def http_client(base_url: str, timeout: float = 10.0) -> httpx.Client:
    """A client that ignores proxy settings, so its traffic stays on 127.0.0.1."""
    return httpx.Client(base_url=base_url, timeout=timeout, trust_env=False)


def async_http_client(base_url: str, timeout: float = 10.0) -> httpx.AsyncClient:
    """A client that ignores proxy settings, so its traffic stays on 127.0.0.1."""
    return httpx.AsyncClient(base_url=base_url, timeout=timeout, trust_env=False)


@dataclass
class ServerProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def output_tail(self, lines: int = 30) -> str:
        stdout = "\n".join(self.stdout().splitlines()[-lines:])
        stderr = "\n".join(self.stderr().splitlines()[-lines:])
        return f"--- {self.name} stdout ---\n{stdout}\n--- {self.name} stderr ---\n{stderr}"

    def stop(self, stop_signal: signal.Signals = signal.SIGTERM) -> int:
        """Send `stop_signal` to the process (not to its children) and wait for it to exit;
        SIGKILL it if it takes longer than STOP_TIMEOUT_SECONDS. Returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(stop_signal)
        try:
            return self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill_leftovers(self) -> None:
        """SIGKILL what remains of the process's session: children it failed to stop."""
        # The server was started with start_new_session=True, so its pid is its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def wait_until_ready(
    server: ServerProcess, path: str, timeout: float = STARTUP_TIMEOUT_SECONDS
) -> None:
    """Poll `GET path` until it answers 200; raise ServerStartError if the process exits first
    or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    with http_client(server.url, timeout=1.0) as client:
        while True:
            status = server.process.poll()
            if status is not None:
                raise ServerStartError(
                    f"{server.name} exited with status {status} before GET {path} answered\n"
                    + server.output_tail()
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get(path).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise ServerStartError(
                    f"{server.name} did not answer GET {path} within {timeout:g} s\n"
                    + server.output_tail()
                )
            time.sleep(0.05)


class ServerPool:
    """Starts servers and stops all of them at close(), even when a test has failed."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self._servers: list[ServerProcess] = []
        self._state_files = itertools.count(1)

    def start_simulator(self) -> ServerProcess:
        def command(port: int) -> list[str]:
            return [sys.executable, "-m", "app.simulator", "--host", HOST, "--port", str(port)]

        return self._start("simulator", command, {}, ready_path="/_faults", cwd=self._log_dir)

    def start_service(self, simulator: ServerProcess, settings: Mapping[str, str]) -> ServerProcess:
        """`uvicorn app.main:app` configured by `settings` (environment variables) against
        `simulator`. Its working directory is a scratch one, so no `.env` file interferes."""

        def command(port: int) -> list[str]:
            return [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                HOST,
                "--port",
                str(port),
            ]

        variables = {
            "ALPHAVANTAGE_BASE_URL": f"{simulator.url}/query",
            **SIMULATOR_DEFAULTS,  # as `python -m app` has it; a test may turn them on
            # TTLs that do not hang on when the suite runs (market hours): a test that is
            # about market freshness or a watchlist turns it on.
            "CACHE_FRESHNESS": "fixed",
            # The default store, in a file of its own: services share state only when a
            # test names the same STATE_URL for them.
            "STATE_URL": self._state_url(),
            **settings,
        }
        return self._start("service", command, variables, ready_path="/healthz", cwd=self._log_dir)

    def start_launcher(
        self, simulator_port: int, settings: Mapping[str, str], *, workers: int = 1
    ) -> ServerProcess:
        """`python -m app --workers N` as `make run` starts it: from the checkout's root
        directory, but with its state in a file of its own (unless `settings` name one), so a
        test leaves nothing in the checkout. Ready once one worker answers."""

        def command(port: int) -> list[str]:
            return [
                sys.executable,
                "-m",
                "app",
                "--host",
                HOST,
                "--port",
                str(port),
                "--simulator-port",
                str(simulator_port),
                "--workers",
                str(workers),
            ]

        variables = {"STATE_URL": self._state_url(), **settings}
        return self._start("launcher", command, variables, ready_path="/healthz", cwd=ROOT)

    def _state_url(self) -> str:
        return f"sqlite:///{self._log_dir}/state-{next(self._state_files)}.db"

    def close(self) -> None:
        servers, self._servers = self._servers, []
        for server in reversed(servers):
            try:
                server.stop()
            finally:
                server.kill_leftovers()

    def _start(
        self,
        name: str,
        command: Command,
        variables: Mapping[str, str],
        *,
        ready_path: str,
        cwd: Path,
    ) -> ServerProcess:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            server = self._spawn(name, free_port(), command, variables, cwd)
            try:
                wait_until_ready(server, ready_path)
            except ServerStartError:
                lost_the_port = "address already in use" in server.stderr().lower()
                if not lost_the_port or attempt == PORT_ATTEMPTS:
                    raise
            else:
                return server
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(
        self,
        name: str,
        port: int,
        command: Command,
        variables: Mapping[str, str],
        cwd: Path,
    ) -> ServerProcess:
        stdout_path = self._log_dir / f"{name}-{port}.stdout.log"
        stderr_path = self._log_dir / f"{name}-{port}.stderr.log"
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            # The child keeps its own copies of the two file descriptors.
            process = subprocess.Popen(
                list(command(port)),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                env=server_environment(variables),
                cwd=cwd,
                start_new_session=True,  # its own process group, for kill_leftovers()
            )
        server = ServerProcess(name, port, process, stdout_path, stderr_path)
        self._servers.append(server)
        return server


# -- a simulator and a service, as the integration tests use them ---------------------------


@dataclass(frozen=True)
class Stack:
    simulator: ServerProcess
    service: ServerProcess


class StartStack(Protocol):
    def __call__(self, **settings: str) -> Stack: ...


@asynccontextmanager
async def connect(
    stack: Stack, secrets: Collection[str] = ()
) -> AsyncIterator[tuple[httpx.AsyncClient, SimulatorControl]]:
    """A client of the service and a control of the simulator, both closed on exit. The client
    fails the test at any answer that shows one of `secrets` or a traceback."""
    async with (
        async_http_client(stack.service.url) as api,
        async_http_client(stack.simulator.url) as sim,
    ):
        check_every_response(api, secrets)
        yield api, SimulatorControl(sim)


@dataclass(frozen=True)
class Timed:
    response: httpx.Response
    seconds: float


async def timed_get(api: httpx.AsyncClient, path: str) -> Timed:
    """GET `path`, and how long the answer took, client side."""
    started = time.perf_counter()
    response = await api.get(path)
    return Timed(response, time.perf_counter() - started)


# -- consumers, as an operator creates them ------------------------------------------------


def consumers_cli(state_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m app consumers ARGS` on `state_url`, with no API key in its environment."""
    return subprocess.run(
        [sys.executable, "-m", "app", "consumers", *args],
        env=server_environment({"STATE_URL": state_url}),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def add_consumer(state_url: str, cwd: Path, name: str, *limits: str) -> str:
    """Create consumer `name`; its token, which `add` prints alone on stdout."""
    done = consumers_cli(state_url, cwd, "add", name, *limits)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert len(token) >= 43
    assert done.stdout == token + "\n"  # the token alone, once
    assert token not in done.stderr
    return token
