"""A real redis-server for the tests of Redis-backed code: a subprocess on 127.0.0.1.

`RedisServer` starts Debian's `redis-server` on a free port, with no config file and nothing
written to disk (`--save '' --appendonly no`), and waits until it answers PING. A test can then
take it away as production would see it: `kill()` (SIGKILL: the store dies mid-run),
`restart()` (back on the same port, empty), `pause(seconds)` (CLIENT PAUSE: the store hangs).
The `redis_server` and `redis_server_with_password` fixtures (tests/conftest.py) start one per
test and stop it afterwards.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.servers import (
    HOST,
    PORT_ATTEMPTS,
    STARTUP_TIMEOUT_SECONDS,
    ServerProcess,
    ServerStartError,
    debian_tool,
    free_port,
)

PASSWORD = "secret"  # the password of `redis_server_with_password`
CONTROL_TIMEOUT_SECONDS = 1.0  # for this helper's own PINGs and CLIENT PAUSEs


def redis_server_executable() -> str:
    """The path of `redis-server`; a missing one fails the test, never skips it."""
    return debian_tool("redis-server", package="redis-server")


class RedisServer:
    """One redis-server on 127.0.0.1, started by `start()`, stopped by `stop()` or `close()`.

    Its port is picked at the first start and kept by `restart()`, so a client built from
    `url` before a restart reaches the new process. Each start logs to its own files in the
    server's directory (`output_tail()` reads the current one's).
    """

    def __init__(self, parent_dir: Path, *, password: str | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="redis-", dir=parent_dir))
        self.password = password
        self.port: int | None = None
        self._executable = redis_server_executable()
        self._process: ServerProcess | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        """`redis://127.0.0.1:PORT/0`, or `redis://:PASSWORD@127.0.0.1:PORT/0`."""
        if self.port is None:
            raise RuntimeError("the server has not been started yet")
        credentials = f":{self.password}@" if self.password is not None else ""
        return f"redis://{credentials}{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.process.poll() is None

    def start(self) -> None:
        """Start on a free port (on the same port after the first start) and wait for PING."""
        if self.running:
            raise RuntimeError(f"redis-server is already running on port {self.port}")
        if self.port is not None:
            self._spawn(self.port)
            self._wait_until_ready()
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self._spawn(free_port())
            try:
                self._wait_until_ready()
            except ServerStartError:
                # Another process may take a free port before the server binds it.
                lost_the_port = "address already in use" in self.output_tail().lower()
                if not lost_the_port or attempt == PORT_ATTEMPTS:
                    raise
            else:
                self.port = self._current().port
                return

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the server takes longer than STOP_TIMEOUT_SECONDS."""
        if self._process is not None:
            self._process.stop()

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone: clients see a dead server at once."""
        if self._process is not None:
            self._process.stop(signal.SIGKILL)

    def restart(self) -> None:
        """Stop the server if it runs, and start a new one, empty, on the same port."""
        self.stop()
        self.start()

    def pause(self, seconds: float) -> None:
        """`CLIENT PAUSE`: for `seconds`, the server accepts connections but holds every
        client's commands (this helper's too). Returns at once."""
        with self._control_client() as client:
            client.execute_command("CLIENT", "PAUSE", str(round(seconds * 1000)))

    def close(self) -> None:
        """Stop the server, and SIGKILL whatever remains of its process group."""
        if self._process is not None:
            try:
                self._process.stop()
            finally:
                self._process.kill_leftovers()

    def output_tail(self, lines: int = 30) -> str:
        return self._current().output_tail(lines)

    def _current(self) -> ServerProcess:
        if self._process is None:
            raise RuntimeError("the server has not been started yet")
        return self._process

    def _spawn(self, port: int) -> None:
        self._starts += 1
        name = f"redis-server-{port}-{self._starts}"
        stdout_path = self.directory / f"{name}.stdout.log"
        stderr_path = self.directory / f"{name}.stderr.log"
        # No config file: the defaults, and these. --save '' and --appendonly no write nothing
        # to disk, so a restart starts empty; --dir keeps anything else it writes here.
        command = [
            self._executable,
            *("--port", str(port)),
            *("--bind", HOST),
            *("--save", ""),
            *("--appendonly", "no"),
            *("--dir", str(self.directory)),
        ]
        if self.password is not None:
            command += ["--requirepass", self.password]
        with stdout_path.open("wb") as stdout, stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=self.directory,
                start_new_session=True,  # its own process group, for kill_leftovers()
            )
        self._process = ServerProcess(name, port, process, stdout_path, stderr_path)

    def _control_client(self) -> redis.Redis:
        # Short timeouts and no retries: redis-py 8 would otherwise retry for seconds.
        return redis.Redis(
            host=HOST,
            port=self._current().port,
            password=self.password,
            socket_timeout=CONTROL_TIMEOUT_SECONDS,
            socket_connect_timeout=CONTROL_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )

    def _wait_until_ready(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        """Poll PING until it answers; raise ServerStartError if the process exits first or
        `timeout` seconds pass."""
        server = self._current()
        deadline = time.monotonic() + timeout
        with self._control_client() as client:
            while True:
                status = server.process.poll()
                if status is not None:
                    raise ServerStartError(
                        f"redis-server exited with status {status} before it answered PING\n"
                        + server.output_tail()
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() >= deadline:
                    raise ServerStartError(
                        f"redis-server did not answer PING within {timeout:g} s\n"
                        + server.output_tail()
                    )
                time.sleep(0.02)
