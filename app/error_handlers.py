"""Every error answers `{"detail": "..."}`; none shows a traceback. (The middleware answers
the unexpected ones, so that they too carry the request id.)"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.breaker import CircuitOpenError
from app.errors import (
    ConsumerThrottled,
    RateLimited,
    Throttled,
    Unauthorized,
    UnknownSymbol,
    UpstreamError,
    UpstreamTimeout,
    retry_after_seconds,
)
from app.routes.stock import SYMBOL_RULE


def add_error_handlers(app: FastAPI) -> None:
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
        if isinstance(exc, ConsumerThrottled):  # the caller must slow down, not the service
            return JSONResponse(
                {"detail": exc.detail},
                status_code=429,
                headers={"Retry-After": str(exc.retry_after)},
            )
        if isinstance(exc, RateLimited | Throttled):
            return JSONResponse(
                {"detail": exc.detail},
                status_code=503,
                headers={"Retry-After": str(exc.retry_after)},
            )
        status_code = 504 if isinstance(exc, UpstreamTimeout) else 502
        return JSONResponse({"detail": exc.detail}, status_code=status_code)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(CircuitOpenError)
    async def breaker_open(request: Request, exc: CircuitOpenError) -> JSONResponse:
        retry_after = retry_after_seconds(exc.retry_after)
        return JSONResponse(
            {
                "detail": "Alpha Vantage is failing and the circuit breaker is "
                f"{exc.state.value}; no cached copy to serve. Retry after {retry_after} s."
            },
            status_code=503,
            headers={"Retry-After": str(retry_after)},
        )
