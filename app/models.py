"""The shapes the service returns. Field names are the HTTP contract."""

from __future__ import annotations

import datetime as dt
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Source = Literal["upstream", "cache", "stale"]


class PricePoint(BaseModel):
    model_config = ConfigDict(frozen=True)

    date: dt.date
    open: float
    high: float
    low: float
    close: float
    volume: int


class Bar(NamedTuple):
    """One trading day as the cache keeps it: a fifth of a PricePoint model's memory, which
    matters at 100 bars for each of up to CACHE_MAX_ENTRIES series (about 24 KB a series
    instead of 120 KB)."""

    date: dt.date
    open: float
    high: float
    low: float
    close: float
    volume: int


class DailySeries(BaseModel):
    """Daily bars as Alpha Vantage gives them, newest first."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    last_refreshed: str
    time_zone: str
    prices: tuple[Bar, ...]


class DailyPrices(BaseModel):
    symbol: str
    last_refreshed: str
    time_zone: str
    source: Source
    prices: tuple[PricePoint, ...]


class Quote(BaseModel):
    model_config = ConfigDict(frozen=True)

    symbol: str
    price: float
    open: float
    high: float
    low: float
    volume: int
    latest_trading_day: dt.date
    previous_close: float
    change: float
    change_percent: float


class QuoteAnswer(Quote):
    source: Source


class SymbolMatch(BaseModel):
    """One listing that Alpha Vantage's SYMBOL_SEARCH found, with its market's hours."""

    model_config = ConfigDict(frozen=True)

    symbol: str
    name: str
    type: str
    region: str
    market_open: str
    market_close: str
    timezone: str
    currency: str
    match_score: float


class SymbolMatches(BaseModel):
    """What a SYMBOL_SEARCH for `keywords` found, best first; empty when nothing matched."""

    model_config = ConfigDict(frozen=True)

    keywords: str
    matches: tuple[SymbolMatch, ...]


class SearchAnswer(BaseModel):
    """GET /search: SymbolMatches, and where they came from."""

    keywords: str  # as searched: case and spacing normalised
    source: Source
    matches: tuple[SymbolMatch, ...]


class QuoteResult(BaseModel):
    """One symbol of GET /quotes: its quote, or what GET /stock/{symbol}/quote would have
    answered instead (status, detail and, for 429 and 503, Retry-After's seconds)."""

    symbol: str
    status: int
    quote: QuoteAnswer | None = None
    detail: str | None = None
    retry_after: int | None = None


class QuotesAnswer(BaseModel):
    """GET /quotes: every symbol asked for, in the order asked, duplicates collapsed."""

    quotes: list[QuoteResult]
    failed: int  # how many have no quote


class RawAnswer(BaseModel):
    """A pass-through function's answer as Alpha Vantage sent it, data only (never one of its
    messages): the text, byte for byte once encoded as UTF-8, and the media type to send."""

    model_config = ConfigDict(frozen=True)

    body: str
    media_type: str


class BreakerSnapshot(BaseModel):
    name: str
    state: Literal["closed", "open", "half_open"]
    failure_count: int
    success_count: int
    failure_threshold: int
    success_threshold: int
    timeout_seconds: float
    half_open_max_calls: int
    last_failure_time: dt.datetime | None
    opened_at: dt.datetime | None
    retry_after_seconds: float
    forced_open: bool
    mode: Literal["consecutive", "failure_rate"]
    open_timeout_seconds: float  # of the current or last opening, backoff included
    reopens: int  # re-opens from half_open since it last closed (each backs off further)
    window_calls: int  # failure_rate mode: calls in the window now
    failure_rate: float | None
    slow_call_rate: float | None


class BreakerStatus(BreakerSnapshot):
    """The most severe breaker (open over half_open over closed) and, in `breakers`, all."""

    breakers: list[BreakerSnapshot]


class QuotaStatus(BaseModel):
    limit: int
    used: int
    remaining: int
    window_seconds: float
    next_refill_at: dt.datetime | None  # when the oldest counted call leaves the window
    blocked_until: dt.datetime | None  # set by Alpha Vantage's own "per day" answer


class PacingStatus(BaseModel):
    rate_per_second: float
    burst: int
    tokens: float  # below zero while callers wait for their turn


class BulkheadStatus(BaseModel):
    name: str
    max_concurrency: int
    in_flight: int


class StateStoreStatus(BaseModel):
    url: str  # STATE_URL, any password masked
    up: bool  # answered its last operation


class WatchedSymbolStatus(BaseModel):
    symbol: str
    # null: never refreshed, or (both) while the state store does not answer
    last_refresh: dt.datetime | None
    next_refresh: dt.datetime | None


class WatchlistStatus(BaseModel):
    functions: list[str]  # what a refresh asks for each symbol
    reserve: int  # calls of the daily quota a refresh never spends (WATCHLIST_RESERVE)
    symbols: list[WatchedSymbolStatus]


class UpstreamStatus(BaseModel):
    state_store: StateStoreStatus
    # quota and pacing: null when off (UPSTREAM_DAILY_QUOTA=0, UPSTREAM_RATE_PER_SECOND=0), or
    # while the state store does not answer
    quota: QuotaStatus | None
    pacing: PacingStatus | None
    # Set while Alpha Vantage's own rate-limit answer holds calls back (and, with the quota
    # off, its per-day answer); with the quota on, a per-day answer shows in quota instead.
    paused_until: dt.datetime | None
    max_wait_seconds: float
    bulkheads: list[BulkheadStatus]
    watchlist: WatchlistStatus | None  # null: no WATCHLIST


class ConsumerUsage(BaseModel):
    """A consumer's own limits and what it has spent (never its token or the token's hash)."""

    name: str
    # null: no budget of its own (the key's quota still binds); used, remaining and
    # next_refill_at are null then too, since no ledger is kept
    calls_per_day: int | None
    used: int | None  # upstream calls charged in the rolling day
    remaining: int | None
    next_refill_at: dt.datetime | None  # when the oldest charged call leaves the day
    requests_per_second: float | None  # null: no rate of its own
    created_at: dt.datetime


class ErrorBody(BaseModel):
    detail: str


class BreakerTransition(BaseModel):
    """One state change of a breaker, as every replica recorded it (GET
    /circuit-breaker/history, and the event stream's `transition` events)."""

    model_config = ConfigDict(populate_by_name=True)

    id: int  # given by the shared store: increasing, the same on every replica
    breaker: str
    from_: Literal["closed", "open", "half_open"] = Field(alias="from")
    to: Literal["closed", "open", "half_open"]
    # failure_threshold, failure_rate, probe_failed, timeout_elapsed, probes_succeeded,
    # forced_open, reset
    reason: str
    generation: int  # the breaker's shared generation the change started
    retry_after: float  # an opening's timeout, backoff included; 0 for other changes
    at: str  # ISO 8601 UTC with milliseconds, e.g. 2026-12-02T10:00:00.123Z


class TransitionHistory(BaseModel):
    transitions: list[BreakerTransition]  # oldest first
