"""Every error answers `{"detail": "..."}`; none shows a traceback. (The middleware answers
the unexpected ones, so that they too carry the request id.)"""

from __future__ import annotations

from dataclasses import dataclass

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
from app.symbols import SYMBOL_RULE


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
        return error_response(error_answer(exc, str(request.path_params.get("symbol", ""))))

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(CircuitOpenError)
    async def breaker_open(request: Request, exc: CircuitOpenError) -> JSONResponse:
        return error_response(error_answer(exc, ""))


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    status: int
    detail: str
    retry_after: int | None = None  # for Retry-After


def error_answer(exc: UpstreamError | CircuitOpenError, symbol: str) -> ErrorAnswer:
    """What a request about `symbol` answers for `exc` (GET /quotes lists it per symbol)."""
    if isinstance(exc, CircuitOpenError):
        retry_after = retry_after_seconds(exc.retry_after)
        detail = (
            f"Alpha Vantage is failing and the circuit breaker is {exc.state.value}; "
            f"no cached copy to serve. Retry after {retry_after} s."
        )
        return ErrorAnswer(503, detail, retry_after)
    if isinstance(exc, UnknownSymbol):
        return ErrorAnswer(404, f"unknown symbol: {symbol.upper()}")
    if isinstance(exc, ConsumerThrottled):  # the caller must slow down, not the service
        return ErrorAnswer(429, exc.detail, exc.retry_after)
    if isinstance(exc, RateLimited | Throttled):
        return ErrorAnswer(503, exc.detail, exc.retry_after)
    return ErrorAnswer(504 if isinstance(exc, UpstreamTimeout) else 502, exc.detail)


def error_response(answer: ErrorAnswer) -> JSONResponse:
    headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
    return JSONResponse({"detail": answer.detail}, status_code=answer.status, headers=headers)
