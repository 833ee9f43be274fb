"""The FastAPI app: `uvicorn app.main:app`, or `create_app(settings)` in tests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.error_handlers import add_error_handlers
from app.errors import StoreUnavailable
from app.fast_path import HitFastPath
from app.lifecycle import ReadSettingsFirst, drain_on_sigterm
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import RequestContextMiddleware
from app.resources import UPSTREAM_FUNCTIONS, Resources, build_resources, upstream_connections
from app.routes import (
    breaker_events,
    circuit_breaker,
    consumers,
    gateway,
    ops,
    quotes,
    search,
    status_page,
    stock,
    upstream,
)
from app.settings import Settings, load_settings
from app.state import ObservedState, describe, open_state

logger = logging.getLogger(__name__)


async def access_mode(resources: Resources) -> str:
    """What the startup line says about who may call /stock."""
    try:
        count = len(await resources.consumers.all())
    except StoreUnavailable:
        return "unknown: the state store does not answer (until it does, /stock answers 503)"
    if count == 0:
        return (
            "open: no consumer is configured, so anyone may call /stock (a demo; in "
            "production create consumers: python -m app consumers add NAME)"
        )
    return f"bearer token required: {count} consumer(s)"


def create_app(
    settings: Settings | None = None,
    *,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    configure_logs: bool = True,
    cache_clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the app. Without `settings`, they are read from the environment at startup.

    `upstream_transport` replaces the network under the Alpha Vantage client (tests mount the
    simulator there). `configure_logs=False` leaves the process's logging alone. `cache_clock`
    is the clock of this process's cache (tests move a fake one).
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resolved = settings or load_settings()
        connections = upstream_connections(resolved)
        if configure_logs:
            secrets = (resolved.alphavantage_api_key, resolved.admin_token)
            masked = [secret.get_secret_value() for secret in secrets if secret is not None]
            store_password = urlsplit(resolved.state_url.get_secret_value()).password
            configure_logging(resolved.log_level, [*masked, *filter(None, [store_password])])
        state = ObservedState(
            open_state(resolved.state_url.get_secret_value(), resolved.state_timeout_seconds),
            metrics,
        )
        metrics.watch_store(state)
        async with httpx.AsyncClient(
            timeout=resolved.upstream_timeout_seconds,
            headers={"User-Agent": "stock-service"},
            # One connection for each bulkhead slot, all kept alive: under a burst of misses
            # httpx's default (20 kept of 100) would close and reopen connections to one host.
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            transport=upstream_transport,
        ) as http:
            app.state.resources = build_resources(resolved, http, metrics, state, cache_clock)
            watchlist = app.state.resources.watchlist
            refreshing = None if watchlist is None else asyncio.create_task(watchlist.run())
            # Everything built so far lives as long as the process: keep it out of the garbage
            # collector's full passes, which would otherwise stall requests for milliseconds.
            gc.freeze()
            resources: Resources = app.state.resources
            # Event streams never end by themselves: end them as the drain begins, so that
            # their clients reconnect to a replica that stays, and the server's wait for open
            # requests does not last the whole grace.
            restore_sigterm = drain_on_sigterm(
                app, resolved.shutdown_drain_seconds, on_drain=resources.events.close
            )
            app.state.ready = True
            logger.info(
                "started",
                extra={
                    "access": await access_mode(app.state.resources),
                    "upstream": resolved.alphavantage_base_url,
                    "state": describe(resolved.state_url.get_secret_value()),
                    "breakers": [b.name for b in app.state.resources.breakers],
                },
            )
            try:
                yield
            finally:
                app.state.ready = False
                restore_sigterm()
                if refreshing is not None:
                    refreshing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await refreshing
                await resources.events.aclose()
                await resources.recorder.flush()
                await resources.service.aclose()
                await state.aclose()

    app = FastAPI(
        title="stock-service",
        summary="Stock prices from Alpha Vantage behind a circuit breaker",
        lifespan=lifespan,
        # The service reports through Prometheus (app/metrics.py), not OpenTelemetry: off, the
        # check for OpenTelemetry providers (environment reads) leaves every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    for router in (
        stock.router,
        quotes.router,
        search.router,
        consumers.router,
        gateway.router,
        circuit_breaker.router,
        breaker_events.router,
        upstream.router,
        ops.router,
        status_page.router,
    ):
        app.include_router(router)
    get_routes = [
        r.path for r in app.routes if isinstance(r, APIRoute) and "GET" in (r.methods or ())
    ]
    metrics = Metrics(UPSTREAM_FUNCTIONS, get_routes)
    static_routes = frozenset(
        url for url in (app.openapi_url, app.docs_url, app.redoc_url) if url is not None
    )
    # Added first, so that it runs inside RequestContextMiddleware (the last added is outermost).
    app.add_middleware(HitFastPath)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, static_routes=static_routes)
    add_error_handlers(app)
    return app


app = ReadSettingsFirst(create_app())
