"""GET /query: the Alpha Vantage gateway (the logic lives in app/gateway.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from app import gateway
from app.deps import get_resources

router = APIRouter(tags=["gateway"])


async def gateway_caller(request: Request) -> None:
    """The consumer a /query request speaks for: the one seam where the consumer registry
    resolves `apikey=` to a consumer (and refuses an unknown token). Until it is wired in,
    every caller is anonymous and `apikey=` is accepted and ignored; it is never sent
    upstream either way (the service sends its own key)."""
    return None


GatewayCaller = Annotated[None, Depends(gateway_caller)]


@router.get(
    "/query",
    summary="Alpha Vantage's API (TIME_SERIES_DAILY, GLOBAL_QUOTE, SYMBOL_SEARCH), its shapes",
    description=(
        "Parameters as Alpha Vantage takes them: `function`, `symbol` or `keywords`, "
        "`outputsize` (compact; full is premium), `datatype` (json or csv), `apikey`. "
        "Errors as Alpha "
        'Vantage sends them: `{"Error Message": ...}` (HTTP 200) for a bad call or an unknown '
        'symbol, `{"Information": ...}` with 429 or 503 and Retry-After for a call held back.'
    ),
)
async def query(request: Request, caller: GatewayCaller) -> Response:
    # `caller` is None until the consumer registry is wired into gateway_caller.
    resources = await get_resources(request)
    answer = await gateway.answer(
        resources.service,
        gateway.enabled_functions(resources.settings.gateway_functions),
        request.query_params,
    )
    return Response(
        answer.body, answer.status_code, dict(answer.headers), media_type=answer.media_type
    )
