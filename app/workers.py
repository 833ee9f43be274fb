"""`python -m app --workers N`: N uvicorn worker processes on one socket, one host's cores
serving one API key. They share the budget through the store (STATE_URL, a SQLite file by
default) and one /metrics through prometheus_client's multiprocess mode: each worker writes
its series to files in a directory this launcher makes, and any worker's scrape sums them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from socket import socket

import uvicorn
from prometheus_client.multiprocess import mark_process_dead
from starlette.types import ASGIApp
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from app import main
from app.logs import configure_logging
from app.metrics import MULTIPROC_DIR
from app.settings import ConfigError, Settings

logger = logging.getLogger(__name__)

WORKERS_VARIABLE = "WEB_CONCURRENCY"  # the name uvicorn and gunicorn read it under, too
# Gauges written with a live* multiprocess mode: a file each per worker, named MODE_PID.db.
_LIVE_GAUGE_FILES = "gauge_live*_*.db"


def worker_count(flag: int | None) -> int:
    """How many workers: `--workers`, else WEB_CONCURRENCY, else 1."""
    if flag is not None:
        count, source = flag, "--workers"
    else:
        text = os.environ.get(WORKERS_VARIABLE, "").strip() or "1"
        count, source = (int(text) if text.isdigit() else 0), WORKERS_VARIABLE
    if count < 1:
        raise ConfigError(f"invalid configuration: {source}: must be a whole number >= 1")
    return count


def check_state_is_shared(settings: Settings) -> None:
    """Workers with a memory:// store would each spend the whole budget on their own."""
    if settings.state_url.get_secret_value() == "memory://":
        raise ConfigError(
            "invalid configuration: STATE_URL: memory:// is one process's own, so workers would "
            "not share the budget; use sqlite:///PATH (the default) or run one worker"
        )


def worker_app() -> ASGIApp:
    """What each worker serves (uvicorn calls it once the worker has started): the app, with
    the JSON logging in place first, so that uvicorn's own startup lines come out as JSON."""
    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())
    return main.app


def serve_workers(host: str, port: int, workers: int, settings: Settings) -> None:
    """Serve with `workers` processes until SIGTERM or SIGINT, which each worker gets in turn
    and answers as a lone one does (drain, then graceful shutdown). Exits with uvicorn's
    startup-failure status when a worker could not start."""
    config = uvicorn.Config(
        f"{__name__}:{worker_app.__name__}",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )
    with metrics_directory() as directory:
        supervisor = Supervisor(config, [config.bind_socket()], directory)
        supervisor.run()
    if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        raise SystemExit(STARTUP_FAILURE)


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """A fresh directory for the workers' metric files, named by PROMETHEUS_MULTIPROC_DIR in
    the environment they inherit, and removed at exit: files left from an earlier run would
    be summed into this one's counters."""
    directory = Path(tempfile.mkdtemp(prefix="stock-service-metrics-"))
    previous = os.environ.get(MULTIPROC_DIR)
    os.environ[MULTIPROC_DIR] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            del os.environ[MULTIPROC_DIR]
        else:
            os.environ[MULTIPROC_DIR] = previous
        shutil.rmtree(directory, ignore_errors=True)


class Supervisor(Multiprocess):
    """uvicorn's supervisor (it restarts a worker that dies), which also removes the live
    gauges of every worker that is gone: an in-flight count must leave with its process.
    Counter and histogram files stay, so that the group's totals never go down."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket], metrics_dir: Path) -> None:
        super().__init__(config, sockets)
        self.metrics_dir = metrics_dir

    def keep_subprocess_alive(self) -> None:
        # Every half second, in the thread that starts and replaces workers.
        super().keep_subprocess_alive()
        serving = {worker.pid for worker in self.processes}
        for pid in pids_with_live_gauges(self.metrics_dir) - serving:
            mark_process_dead(pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            logger.info("worker %d is gone: its in-flight gauges are removed", pid)


def pids_with_live_gauges(directory: Path) -> set[int]:
    return {int(path.stem.rpartition("_")[2]) for path in directory.glob(_LIVE_GAUGE_FILES)}
