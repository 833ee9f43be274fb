"""How the app starts and stops under a server: settings read before the lifespan, and a
drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from app.settings import ConfigError, load_settings

logger = logging.getLogger(__name__)


def drain_on_sigterm(
    app: FastAPI, drain_seconds: float, on_drain: Callable[[], None] = lambda: None
) -> Callable[[], None]:
    """On SIGTERM, answer /readyz with 503 at once (and call `on_drain`) but go on serving for
    `drain_seconds`, so that load balancers stop sending traffic before the server stops
    accepting it; then hand the signal on to the server (uvicorn), which lets in-flight
    requests finish within its graceful-shutdown timeout. Returns what puts the server's own
    handler back."""
    server_handler = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(server_handler):
        return lambda: None  # not under a server that handles SIGTERM itself
    loop = asyncio.get_running_loop()

    def drain() -> None:
        app.state.ready = False
        logger.info("SIGTERM: not ready any more; draining for %g s", drain_seconds)
        on_drain()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt anything: hand the work to the event loop.
        loop.call_soon_threadsafe(drain)
        loop.call_soon_threadsafe(loop.call_later, drain_seconds, server_handler, signum, frame)

    def restore() -> None:
        signal.signal(signal.SIGTERM, server_handler)

    signal.signal(signal.SIGTERM, on_sigterm)
    return restore


class ReadSettingsFirst:
    """`uvicorn app.main:app` reads the settings at startup. Read them before the lifespan runs,
    so that a bad value fails startup with its one-line message: an exception raised inside the
    lifespan would reach uvicorn as a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            try:
                load_settings()
            except ConfigError as exc:
                await receive()  # lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
        await self.app(scope, receive, send)
