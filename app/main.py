"""The FastAPI app: `uvicorn app.main:app`, or `create_app(settings)` in tests."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app import alphavantage
from app.breaker import CircuitOpenError
from app.errors import RateLimited, Throttled, UnknownSymbol, UpstreamError, UpstreamTimeout
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import RequestContextMiddleware
from app.resources import build_resources, upstream_connections
from app.routes import breaker as breaker_routes
from app.routes import ops, stock, upstream
from app.settings import ConfigError, Settings, load_settings

logger = logging.getLogger(__name__)

SYMBOL_RULE = "must be 1 to 20 letters or digits, in groups joined by single '.' or '-'"
ROUTES = (
    "/stock/{symbol}",
    "/stock/{symbol}/quote",
    "/circuit-breaker",
    "/upstream",
    "/metrics",
)


def create_app(
    settings: Settings | None = None,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    """Build the app. Without `settings`, they are read from the environment at startup.

    `upstream_transport` replaces the network under the Alpha Vantage client (tests mount the
    simulator there). `configure_logs=False` leaves the process's logging alone.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or load_settings()
        connections = upstream_connections(resolved)
        if configure_logs:
            secrets = (resolved.alphavantage_api_key, resolved.admin_token)
            configure_logging(
                resolved.log_level,
                [secret.get_secret_value() for secret in secrets if secret is not None],
            )
        async with httpx.AsyncClient(
            timeout=resolved.upstream_timeout_seconds,
            headers={"User-Agent": "stock-service"},
            # One connection for each bulkhead slot, all kept alive: under a burst of misses
            # httpx's default (20 kept of 100) would close and reopen connections to one host.
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            transport=upstream_transport,
        ) as http:
            app.state.resources = build_resources(resolved, http, metrics)
            # Everything built so far lives as long as the process: keep it out of the garbage
            # collector's full passes, which would otherwise stall requests for milliseconds.
            gc.freeze()
            restore_sigterm = drain_on_sigterm(app, resolved.shutdown_drain_seconds)
            app.state.ready = True
            logger.info(
                "started",
                extra={
                    "upstream": resolved.alphavantage_base_url,
                    "breakers": [b.name for b in app.state.resources.breakers],
                },
            )
            try:
                yield
            finally:
                app.state.ready = False
                restore_sigterm()
                await app.state.resources.service.aclose()

    metrics = Metrics(alphavantage.FUNCTIONS, ROUTES)
    app = FastAPI(
        title="stock-service",
        summary="Stock prices from Alpha Vantage behind a circuit breaker",
        lifespan=lifespan,
    )
    app.include_router(stock.router)
    app.include_router(breaker_routes.router)
    app.include_router(upstream.router)
    app.include_router(ops.router)
    static_routes = frozenset(
        url for url in (app.openapi_url, app.docs_url, app.redoc_url) if url is not None
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, static_routes=static_routes)
    add_error_handlers(app)
    return app


def drain_on_sigterm(app: FastAPI, drain_seconds: float) -> Callable[[], None]:
    """On SIGTERM, answer /readyz with 503 at once but go on serving for `drain_seconds`, so
    that load balancers stop sending traffic before the server stops accepting it; then hand
    the signal on to the server (uvicorn), which lets in-flight requests finish within its
    graceful-shutdown timeout. Returns what puts the server's own handler back."""
    server_handler = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or not callable(server_handler):
        return lambda: None  # not under a server that handles SIGTERM itself
    loop = asyncio.get_running_loop()

    def drain() -> None:
        app.state.ready = False
        logger.info("SIGTERM: not ready any more; draining for %g s", drain_seconds)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt anything: hand the work to the event loop.
        loop.call_soon_threadsafe(drain)
        loop.call_soon_threadsafe(loop.call_later, drain_seconds, server_handler, signum, frame)

    def restore() -> None:
        signal.signal(signal.SIGTERM, server_handler)

    signal.signal(signal.SIGTERM, on_sigterm)
    return restore


def add_error_handlers(app: FastAPI) -> None:
    """Every error answers `{"detail": "..."}`; none shows a traceback. (The middleware
    answers the unexpected ones, so that they too carry the request id.)"""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{error['loc'][-1]}: "
            + (SYMBOL_RULE if error["loc"][-1] == "symbol" else error["msg"])
            for error in exc.errors()
            if error.get("loc")
        )
        return JSONResponse({"detail": problems or "invalid request"}, status_code=422)

    @app.exception_handler(UpstreamError)
    async def upstream_error(request: Request, exc: UpstreamError) -> JSONResponse:
        if isinstance(exc, UnknownSymbol):
            symbol = str(request.path_params.get("symbol", "")).upper()
            return JSONResponse({"detail": f"unknown symbol: {symbol}"}, status_code=404)
        if isinstance(exc, RateLimited | Throttled):
            return JSONResponse(
                {"detail": exc.detail},
                status_code=503,
                headers={"Retry-After": str(exc.retry_after)},
            )
        status_code = 504 if isinstance(exc, UpstreamTimeout) else 502
        return JSONResponse({"detail": exc.detail}, status_code=status_code)

    @app.exception_handler(CircuitOpenError)
    async def breaker_open(request: Request, exc: CircuitOpenError) -> JSONResponse:
        retry_after = max(1, math.ceil(exc.retry_after))
        return JSONResponse(
            {
                "detail": "Alpha Vantage is failing and the circuit breaker is "
                f"{exc.state.value}; no cached copy to serve. Retry after {retry_after} s."
            },
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )


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


app = ReadSettingsFirst(create_app())
