"""GET /query: the Alpha Vantage gateway (the logic lives in app/gateway.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app import gateway
from app.deps import authenticate, bearer_token, get_resources
from app.errors import Throttled, Unauthorized
from app.http_caching import cached_response
from app.rendering import Rendered, entity_tag

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
    consumer = None
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
    if answer.served is None:
        # The service's own messages, Error Message answers with a 200 among them.
        headers = {**answer.headers, "Cache-Control": "no-store"}
        return Response(answer.body, answer.status_code, headers, media_type=answer.media_type)
    return cached_response(
        request,
        answer.served,
        Rendered(answer.body, entity_tag(answer.body)),  # rendered for each request
        [
            (b"content-type", answer.media_type.encode()),
            *((k.lower().encode(), v.encode()) for k, v in answer.headers.items()),  # CSV's name
        ],
        private=consumer is not None,
    )
