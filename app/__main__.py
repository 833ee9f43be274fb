"""`python -m app`: serve on 127.0.0.1:8080 with the settings from the environment, and the
graceful shutdown they ask for (SHUTDOWN_DRAIN_SECONDS, SHUTDOWN_GRACE_SECONDS).

With `--workers N` (or WEB_CONCURRENCY) it runs N worker processes that share the store and
one /metrics (app/workers.py); they need a store processes share, not STATE_URL=memory://.

With `--simulator-port N` (what `make run` passes) and no ALPHAVANTAGE_API_KEY, it also starts
the built-in Alpha Vantage simulator on that port and points the service at it, so a fresh
clone runs with no account. Without it, a missing key is an error, as it is in production.

`python -m app consumers add|list|revoke ...` manages the consumers instead (app/cli.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import uvicorn

from app import cli
from app.logs import configure_logging
from app.main import create_app
from app.settings import SIMULATOR_DEFAULTS, ConfigError, MissingApiKey, load_settings
from app.workers import check_state_is_shared, serve_workers, worker_count

logger = logging.getLogger("app")


def start_simulator(host: str, port: int) -> subprocess.Popen[bytes]:
    simulator = subprocess.Popen(
        [sys.executable, "-m", "app.simulator", "--host", host, "--port", str(port)]
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if simulator.poll() is not None:
            raise SystemExit(f"the simulator exited with status {simulator.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return simulator
        except OSError:
            time.sleep(0.1)
    simulator.terminate()
    raise SystemExit(f"the simulator did not start listening on {host}:{port}")


def main() -> None:
    if sys.argv[1:2] == ["consumers"]:
        raise SystemExit(cli.main(sys.argv[2:]))
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--simulator-port",
        type=int,
        help="without ALPHAVANTAGE_API_KEY, serve from a simulator started on this port",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: WEB_CONCURRENCY, else 1)",
    )
    args = parser.parse_args()
    configure_logging(os.environ.get("LOG_LEVEL", "INFO").upper())

    simulator = None
    try:
        workers = worker_count(args.workers)
        try:
            settings = load_settings()
        except MissingApiKey:
            if args.simulator_port is None:
                raise
            simulator = start_simulator("127.0.0.1", args.simulator_port)
            url = f"http://127.0.0.1:{args.simulator_port}/query"
            os.environ["ALPHAVANTAGE_BASE_URL"] = url
            os.environ["ALPHAVANTAGE_API_KEY"] = "any-key-will-do"
            for name, value in SIMULATOR_DEFAULTS.items():
                os.environ.setdefault(name, value)
            logger.warning(
                "ALPHAVANTAGE_API_KEY is not set: serving from the built-in Alpha Vantage "
                "simulator at %s, with pacing and the daily quota off unless set (break it "
                "with POST /_faults; set the key for real data)",
                url,
            )
            settings = load_settings()
        if workers > 1:
            check_state_is_shared(settings)
            serve_workers(args.host, args.port, workers, settings)
            return
        # uvicorn re-raises the SIGTERM it handled once it has shut down; exit through the
        # `finally` below then, so that the simulator stops too.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        uvicorn.run(
            create_app(settings),
            host=args.host,
            port=args.port,
            workers=1,  # not WEB_CONCURRENCY, which uvicorn would read for an unset one
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        )
    except ConfigError as exc:
        logger.critical("%s", exc)
        raise SystemExit(2) from None
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(timeout=10)


if __name__ == "__main__":
    main()
