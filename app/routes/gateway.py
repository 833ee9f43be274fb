"""GET /query: the Alpha Vantage gateway (the logic lives in app/gateway.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import gateway
from app.deps import authenticate, bearer_token, get_resources
from app.errors import Throttled, Unauthorized

router = APIRouter(tags=["gateway"])


@router.get(
    "/query",
    summary="Alpha Vantage's API (TIME_SERIES_DAILY, GLOBAL_QUOTE, SYMBOL_SEARCH, others "
    "passed through), its shapes",
    description=(
        "Parameters as Alpha Vantage takes them: `function`, `symbol` or `keywords`, "
        "`outputsize` (compact; full is premium), `datatype` (json or csv), `apikey`. "
        "Other functions are passed through with their parameters (apikey aside) unless "
        "GATEWAY_FUNCTIONS narrows the list, cached by those parameters. Errors as Alpha "
        'Vantage sends them: `{"Error Message": ...}` (HTTP 200) for a bad call or an unknown '
        'symbol, `{"Information": ...}` with 429 or 503 and Retry-After for a call held back.'
    ),
)
async def query(request: Request) -> Response:
    resources = await get_resources(request)
    # The consumer token as Alpha Vantage clients send their key, or as a bearer token. It
    # goes no further: the service sends its own key upstream.
    token = request.query_params.get("apikey") or bearer_token(request)
    try:
        consumer = await authenticate(resources, token)
    except Unauthorized:
        answer = gateway.unauthorized()
    except Throttled as exc:  # the consumer's rate, or a store never reached
        answer = gateway.throttled(exc)
    else:
        answer = await gateway.answer(
            resources.service,
            gateway.enabled_functions(resources.settings.gateway_functions),
            request.query_params,
            consumer,
        )
    return Response(
        answer.body, answer.status_code, dict(answer.headers), media_type=answer.media_type
    )
