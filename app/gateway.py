"""GET /query: Alpha Vantage's own API, answered through the service (cache, single flight,
quota, pacing, breaker), so that tools that already speak Alpha Vantage can use it as is.

Answers and failures take Alpha Vantage's shapes: data as its JSON (or CSV), a bad call or an
unknown symbol as its `{"Error Message": ...}` with HTTP 200 as it does, and a call held back
as `{"Information": ...}` naming the limit and when to come back, with the HTTP status and
Retry-After that describe it. Alpha Vantage's own texts never reach the caller (a throttle
message quotes the service's key): every message here is the service's own.

Any other function is passed through (app/passthrough.py) unless GATEWAY_FUNCTIONS narrows the
list: the caller's parameters go upstream, apikey aside, and Alpha Vantage's data comes back
byte for byte; its messages are mapped as the built-in functions' are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app import av_format
from app.alphavantage import CSV_MEDIA_TYPE, DAILY, FUNCTIONS, JSON_MEDIA_TYPE, SEARCH
from app.breaker import CircuitOpenError
from app.consumers import Consumer
from app.errors import (
    RateLimited,
    Throttled,
    UnknownSymbol,
    UpstreamFailure,
    UpstreamTimeout,
    retry_after_seconds,
)
from app.passthrough import FUNCTION_NAME, MAX_QUERY_LENGTH, query_length
from app.service import Served, StockService
from app.settings import ALL_FUNCTIONS
from app.symbols import is_symbol

JSON = JSON_MEDIA_TYPE
# Alpha Vantage sends CSV as a download: clients save or parse it whatever the type says.
CSV = CSV_MEDIA_TYPE
DOCS_URL = "https://www.alphavantage.co/documentation/"
DATATYPES = ("json", "csv")
MAX_KEYWORDS_LENGTH = 64

# What each of the service's throttle reasons holds back, and the status that describes it:
# 429 for a budget that is spent, 503 for a service that cannot take the call just now.
THROTTLES = {
    "quota": ("the daily quota of Alpha Vantage calls is spent", 429),
    "pacing": ("the pacing of Alpha Vantage calls (about one a second) is at its limit", 429),
    "bulkhead": ("too many Alpha Vantage calls are in flight", 503),
    "store": ("the shared state store does not answer, so the limits cannot be checked", 503),
    "flight": ("another process's call for the same data has not landed in time", 503),
    "consumer_budget": ("your own daily budget of Alpha Vantage calls is spent", 429),
    "consumer_rate": ("you are asking faster than your requests a second allow", 429),
}
# What Alpha Vantage answers a missing or unknown key, as clients expect it.
BAD_API_KEY = (
    "the parameter apikey is invalid or missing. Ask the stock service's operator for a "
    "consumer token."
)


@dataclass(frozen=True, slots=True)
class Answer:
    body: bytes
    media_type: str = JSON
    status_code: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    # What the data came from, for the answer's caching headers (app/http_caching.py); None
    # for the service's own messages, which are never stored.
    served: Served[object] | None = None


def error_message(message: str) -> Answer:
    """A bad call, as Alpha Vantage answers it: HTTP 200 and an `Error Message`."""
    return Answer(av_format.json_body({"Error Message": message}))


def invalid_call(function: str) -> Answer:
    return error_message(
        f"Invalid API call. Please retry or visit the documentation ({DOCS_URL}) for {function}."
    )


def information(message: str, status_code: int, retry_after: int | None = None) -> Answer:
    headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
    return Answer(av_format.json_body({"Information": message}), JSON, status_code, headers)


def held_back(limit: str, why: str, status_code: int, retry_after: int) -> Answer:
    """A call the service did not make (or Alpha Vantage refused for now): which limit, why,
    and when to come back."""
    return information(
        f"The stock service held this call back (limit: {limit}): {why}. "
        f"Please come back in {retry_after} seconds.",
        status_code,
        retry_after,
    )


def premium_full_output() -> Answer:
    # Alpha Vantage's own answer for a free key, and the service only fetches compact series.
    return information(
        "Thank you for using Alpha Vantage! The outputsize=full parameter value is a premium "
        "feature for the TIME_SERIES_DAILY endpoint. You may subscribe to any of the premium "
        "plans at https://www.alphavantage.co/premium/ to instantly unlock all premium features",
        200,
    )


def csv_answer(body: bytes, filename: str, served: Served[object]) -> Answer:
    disposition = {"Content-Disposition": f"attachment; filename={filename}"}
    return Answer(body, CSV, headers=disposition, served=served)


def normalise_keywords(keywords: str) -> str | None:
    """SYMBOL_SEARCH's keywords as one cache key for every way of writing them (case and
    spacing aside), or None when they are empty, too long or hold control characters."""
    normalised = " ".join(keywords.split()).lower()
    if not normalised or len(normalised) > MAX_KEYWORDS_LENGTH or not normalised.isprintable():
        return None
    return normalised


def enabled_functions(setting: str) -> frozenset[str]:
    """GATEWAY_FUNCTIONS (already validated and upper-cased by app.settings) as a set."""
    return frozenset(name for name in setting.split(",") if name)


def allows(functions: frozenset[str], function: str) -> bool:
    """Whether `function` is answered: named in GATEWAY_FUNCTIONS, or any well-formed name
    when it holds `*`."""
    if function in functions:
        return True
    return ALL_FUNCTIONS in functions and FUNCTION_NAME.fullmatch(function) is not None


def unauthorized() -> Answer:
    """No consumer token, or a wrong one: Alpha Vantage's Error Message, with the 401 and
    WWW-Authenticate that HTTP clients expect."""
    body = av_format.json_body({"Error Message": BAD_API_KEY})
    return Answer(body, JSON, 401, {"WWW-Authenticate": "Bearer"})


def throttled(exc: Throttled) -> Answer:
    why, status_code = THROTTLES.get(exc.reason, (exc.detail, 429))
    return held_back(exc.reason, why, status_code, exc.retry_after)


async def answer(
    service: StockService,
    functions: frozenset[str],
    params: Mapping[str, str],
    consumer: Consumer | None = None,
) -> Answer:
    """The answer to GET /query with `params`, its upstream calls charged to `consumer`;
    raises nothing an upstream call can raise."""
    function = params.get("function", "")
    if not allows(functions, function):
        return error_message(f"This API function ({function}) does not exist.")
    datatype = params.get("datatype", "json")
    if datatype not in DATATYPES:
        return invalid_call(function)
    try:
        if function not in FUNCTIONS:
            return await passthrough(service, function, params, consumer)
        if function == SEARCH:
            return await search(service, params.get("keywords", ""), datatype, consumer)
        symbol = params.get("symbol", "").upper()
        if not is_symbol(symbol):
            return invalid_call(function)  # never sent upstream
        if function == DAILY:
            outputsize = params.get("outputsize", "compact")
            return await daily(service, symbol, outputsize, datatype, consumer)
        return await quote(service, symbol, datatype, consumer)
    except UnknownSymbol:
        # Also for GLOBAL_QUOTE, where Alpha Vantage sometimes answers `{"Global Quote": {}}`
        # instead: an Error Message is what every client recognises as a failure.
        return invalid_call(function)
    except Throttled as exc:
        return throttled(exc)
    except RateLimited as exc:
        per = f"per {exc.period}" if exc.period else "HTTP 429"
        why = f"Alpha Vantage's own rate limit ({per}) was reached"
        return held_back("alphavantage", why, 429, exc.retry_after)
    except CircuitOpenError as exc:
        why = f"Alpha Vantage is failing and the circuit breaker is {exc.state.value}"
        return held_back("breaker", why, 503, retry_after_seconds(exc.retry_after))
    except UpstreamFailure as exc:
        status_code = 504 if isinstance(exc, UpstreamTimeout) else 502
        return information(f"The stock service could not get an answer: {exc.detail}.", status_code)


async def passthrough(
    service: StockService, function: str, params: Mapping[str, str], consumer: Consumer | None
) -> Answer:
    if query_length(params) > MAX_QUERY_LENGTH:
        return invalid_call(function)  # never sent upstream
    served = await service.passthrough(params, consumer)
    return Answer(served.value.body.encode(), served.value.media_type, served=served)


async def daily(
    service: StockService, symbol: str, outputsize: str, datatype: str, consumer: Consumer | None
) -> Answer:
    if outputsize == "full":
        return premium_full_output()
    if outputsize != "compact":
        return invalid_call(DAILY)
    served = await service.daily(symbol, consumer)
    if datatype == "csv":
        return csv_answer(av_format.daily_csv(served.value), f"daily_{symbol}.csv", served)
    return Answer(av_format.daily_json(served.value), served=served)


async def quote(
    service: StockService, symbol: str, datatype: str, consumer: Consumer | None
) -> Answer:
    served = await service.quote(symbol, consumer)
    if datatype == "csv":
        return csv_answer(av_format.quote_csv(served.value), "global_quote.csv", served)
    return Answer(av_format.quote_json(served.value), served=served)


async def search(
    service: StockService, keywords: str, datatype: str, consumer: Consumer | None
) -> Answer:
    normalised = normalise_keywords(keywords)
    if normalised is None:
        return invalid_call(SEARCH)
    served = await service.search(normalised, consumer)
    if datatype == "csv":
        return csv_answer(av_format.search_csv(served.value), "search.csv", served)
    return Answer(av_format.search_json(served.value), served=served)
