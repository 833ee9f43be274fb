"""Every way an Alpha Vantage call can fail, in one place.

    UpstreamError                 the base; `outcome` is the metric label for the failure
    ├── UnknownSymbol             Alpha Vantage does not know the symbol (neutral for the breaker)
    ├── Throttled                 held back here, never sent: pacing, quota, bulkhead, store, flight
    ├── RateLimited               Alpha Vantage's per-second, per-minute or per-day limit, or
    │                             an HTTP 429: a throttle, not an outage (neutral for the breaker)
    └── UpstreamFailure           counts as a failure for the breaker
        ├── UpstreamRefused       the key is invalid, or the call needs a premium plan
        ├── BadUpstreamResponse   non-200 status, body not JSON, or not the expected shape
        ├── UpstreamUnavailable   connection refused, reset or dropped
        └── UpstreamTimeout       no complete answer within the upstream timeout

The HTTP layer maps them to 404, 503, 503, 502, 502, 502 and 504. Throttled and RateLimited
carry `retry_after`, in whole seconds, for the Retry-After header.
"""

from __future__ import annotations

import math
from typing import ClassVar


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for Retry-After, never 0: "retry now" would only be refused again."""
    return max(1, math.ceil(seconds))


class UpstreamError(Exception):
    outcome: ClassVar[str]

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnknownSymbol(UpstreamError):
    outcome = "unknown_symbol"


class Throttled(UpstreamError):
    """The service itself declined to call Alpha Vantage; `reason` is one of THROTTLE_REASONS."""

    outcome = "throttled"

    def __init__(self, detail: str, reason: str, retry_after: int) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry_after = retry_after


class ConsumerThrottled(Throttled):
    """A consumer went over its own limits (app/consumers.py): answered 429, not 503, since
    the service is well and only this caller must slow down. `reason` is "consumer_budget"
    (its calls a day) or "consumer_rate" (its requests a second)."""


# "store": the shared state store did not answer, so the budget could not be checked;
# "flight": another process's call for the same data did not land within the wait allowed;
# "consumer_budget": the consumer whose miss it was has spent its calls for the day.
THROTTLE_REASONS = ("pacing", "quota", "bulkhead", "store", "flight", "consumer_budget")


class Unauthorized(Exception):
    """No consumer token, or one that names no consumer (never revealed which): 401."""


class StoreUnavailable(Exception):
    """The shared state store did not answer in time, or failed. Not an upstream error."""


class StoreBusy(StoreUnavailable):
    """The store is up, but this process has more operations queued for it than it can
    finish in time: the operation is refused without marking the store down."""


class UpstreamFailure(UpstreamError):
    outcome = "failure"


class RateLimited(UpstreamError):
    """Alpha Vantage asked for fewer calls: it is up, and answering. `period` is the limit it
    named ("second", "minute" or "day"), None for an HTTP 429 that names none."""

    outcome = "rate_limited"

    def __init__(self, detail: str, retry_after: int, period: str | None) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.period = period


class UpstreamRefused(UpstreamFailure):
    outcome = "refused"


class BadUpstreamResponse(UpstreamFailure):
    outcome = "bad_response"


class UpstreamUnavailable(UpstreamFailure):
    outcome = "unavailable"


class UpstreamTimeout(UpstreamFailure):
    outcome = "timeout"


def is_upstream_failure(exc: Exception) -> bool:
    """What a breaker in front of Alpha Vantage counts: its own failures, and bugs. An unknown
    symbol is a good answer about a bad question, a rate limit is a throttle, not an outage,
    and a throttled call was never made: none says anything about Alpha Vantage's health."""
    return not isinstance(exc, UpstreamError) or isinstance(exc, UpstreamFailure)


# Label values for the upstream-calls metric, so every series exists from the start.
OUTCOMES = (
    "success",
    "cancelled",
    "error",  # an unexpected exception: a bug, not an upstream answer
    UnknownSymbol.outcome,
    RateLimited.outcome,
    UpstreamRefused.outcome,
    BadUpstreamResponse.outcome,
    UpstreamUnavailable.outcome,
    UpstreamTimeout.outcome,
)
