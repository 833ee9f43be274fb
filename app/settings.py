"""Configuration from the environment (and an optional `.env` file)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.passthrough import FUNCTION_NAME, parse_ttls
from app.state import check_state_url
from app.symbols import SYMBOL_RULE, is_symbol

ALPHAVANTAGE_URL = "https://www.alphavantage.co/query"
# GATEWAY_FUNCTIONS's value for every function: the three GET /query (app/gateway.py) builds
# answers for, and pass-through of any other.
ALL_FUNCTIONS = "*"

PositiveSeconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = NonNegative
AtLeastOne = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(gt=0, le=1)]


# What `python -m app` sets, unless the environment does, when it serves from the built-in
# simulator: a free key's pacing and daily quota would make the demo useless after 25 calls.
SIMULATOR_DEFAULTS = {"UPSTREAM_RATE_PER_SECOND": "0", "UPSTREAM_DAILY_QUOTA": "0"}


class ConfigError(Exception):
    """A setting is missing or malformed. The message names the variable."""


class MissingApiKey(ConfigError):
    """ALPHAVANTAGE_API_KEY is not set (`make run` then starts the simulator)."""


class StoreSettings(BaseSettings):
    """What `python -m app consumers` needs: the store alone, no API key."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Where the budget, pacing and pauses shared by every process live (app/state).
    # A secret: a Redis URL may carry its password. describe() shows it masked.
    state_url: SecretStr = SecretStr("sqlite:///stock-service-state.db")
    state_timeout_seconds: PositiveSeconds = 0.5

    @field_validator("state_url")
    @classmethod
    def _usable_state_url(cls, value: SecretStr) -> SecretStr:
        check_state_url(value.get_secret_value())
        return value


class Settings(StoreSettings):
    alphavantage_api_key: SecretStr
    alphavantage_base_url: str = ALPHAVANTAGE_URL
    # What the key may ask: a free key gets GLOBAL_QUOTE updated once a day, at the close, and
    # no REALTIME_BULK_QUOTES; a premium key gets both in real time.
    alphavantage_plan: Literal["free", "premium"] = "free"
    upstream_timeout_seconds: PositiveSeconds = 10.0
    upstream_max_body_bytes: AtLeastOne = 5_000_000
    # A free key's limits: about 1 call a second, 25 a day. 0 turns pacing or the quota off.
    upstream_rate_per_second: NonNegative = 1.0
    upstream_burst: AtLeastOne = 1
    upstream_max_wait_seconds: Seconds = 2.0
    upstream_daily_quota: Annotated[int, Field(ge=0)] = 25
    upstream_max_concurrency: AtLeastOne = 4
    breaker_scope: Literal["shared", "function"] = "shared"
    breaker_failure_threshold: AtLeastOne = 5
    breaker_success_threshold: AtLeastOne = 3
    breaker_timeout_seconds: Seconds = 30.0
    breaker_half_open_max_calls: AtLeastOne = 1
    # Re-opens from half-open back off: BREAKER_TIMEOUT_SECONDS * multiplier**k, +-jitter.
    breaker_backoff_multiplier: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    breaker_backoff_max_seconds: Seconds = 300.0
    breaker_backoff_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # failure_rate: open on the share of failed (or slow) calls in a window, not a run of them.
    breaker_mode: Literal["consecutive", "failure_rate"] = "consecutive"
    breaker_failure_rate_threshold: Fraction = 0.5
    breaker_minimum_calls: AtLeastOne = 10
    breaker_window: Literal["count", "time"] = "count"
    breaker_window_size: AtLeastOne = 20  # calls, or seconds for a time window
    breaker_slow_call_seconds: Seconds = 0.0  # 0: no call counts as slow
    breaker_slow_call_rate_threshold: Fraction = 1.0
    cache_ttl_seconds: Seconds = 300.0
    cache_stale_seconds: Seconds = 86400.0
    cache_max_entries: AtLeastOne = 10_000
    # market: a daily series (and a free key's quote) is fresh until Alpha Vantage can have
    # the next bar, a quote until its market opens again (app/freshness.py); fixed:
    # CACHE_TTL_SECONDS for every answer.
    cache_freshness: Literal["market", "fixed"] = "market"
    # How long after a close Alpha Vantage may take to publish that session's bar.
    freshness_settle_seconds: Seconds = 1800.0
    # Comma-separated symbols refreshed after each close of their exchange (app/watchlist.py),
    # never spending the last WATCHLIST_RESERVE calls of the daily quota. Empty: none.
    watchlist: str = ""
    watchlist_reserve: Annotated[int, Field(ge=0)] = 5
    admin_token: SecretStr | None = None
    shutdown_drain_seconds: Seconds = 2.0
    shutdown_grace_seconds: Annotated[int, Field(ge=0)] = 20
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # GET /circuit-breaker/events: a summary event, and a heartbeat comment, this often.
    events_summary_seconds: PositiveSeconds = 5.0
    events_heartbeat_seconds: PositiveSeconds = 15.0
    # Comma-separated: the functions GET /query answers, built-in or passed through; `*` for
    # all of them. Any other gets Alpha Vantage's "does not exist" Error Message. Empty: none.
    gateway_functions: str = ALL_FUNCTIONS
    # Comma-separated FUNCTION=seconds: how long a pass-through function's answers stay fresh;
    # CACHE_TTL_SECONDS for the functions not named.
    gateway_passthrough_ttls: str = ""

    @field_validator("alphavantage_api_key", mode="before")
    @classmethod
    def _blank_key_is_missing(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise PydanticCustomError("missing", "is empty")
        return value

    @field_validator("admin_token", mode="before")
    @classmethod
    def _blank_token_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("alphavantage_base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("gateway_functions")
    @classmethod
    def _gateway_function_names(cls, value: str) -> str:
        names = [name.strip().upper() for name in value.split(",") if name.strip()]
        malformed = sorted(
            name for name in set(names) - {ALL_FUNCTIONS} if FUNCTION_NAME.fullmatch(name) is None
        )
        if malformed:
            raise ValueError(
                f"{', '.join(malformed)}: a function is named with letters, digits and _ "
                f"(or {ALL_FUNCTIONS} for every one)"
            )
        return ",".join(dict.fromkeys(names))

    @field_validator("watchlist")
    @classmethod
    def _watchlist_symbols(cls, value: str) -> str:
        symbols = [symbol.strip().upper() for symbol in value.split(",") if symbol.strip()]
        malformed = sorted(s for s in set(symbols) if not is_symbol(s))
        if malformed:
            raise ValueError(f"{', '.join(malformed)}: each {SYMBOL_RULE}")
        return ",".join(dict.fromkeys(symbols))

    @field_validator("gateway_passthrough_ttls")
    @classmethod
    def _function_ttls(cls, value: str) -> str:
        return ",".join(f"{name}={ttl!r}" for name, ttl in parse_ttls(value).items())

    @model_validator(mode="after")
    def _window_can_reach_a_verdict(self) -> Settings:
        if (
            self.breaker_mode == "failure_rate"
            and self.breaker_window == "count"
            and self.breaker_minimum_calls > self.breaker_window_size
        ):
            raise ValueError(
                f"BREAKER_MINIMUM_CALLS ({self.breaker_minimum_calls}) exceeds "
                f"BREAKER_WINDOW_SIZE ({self.breaker_window_size}): a count window that small "
                "never holds enough calls to open"
            )
        return self

    @model_validator(mode="after")
    def _watchlist_needs_market_freshness(self) -> Settings:
        if self.watchlist and self.cache_freshness == "fixed":
            # A fixed TTL can outlast a close: a round would take a copy fetched before it
            # for the new bar, and the symbol would wait a day for it.
            raise ValueError(
                "WATCHLIST needs CACHE_FRESHNESS=market: under a fixed TTL a copy fetched "
                "before a close still looks fresh after it"
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


def load_settings() -> Settings:
    """Read the settings, turning a validation error into one line that names the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
    if [(e["loc"], e["type"]) for e in errors] == [(("alphavantage_api_key",), "missing")]:
        raise MissingApiKey(
            "ALPHAVANTAGE_API_KEY is not set: set it to your Alpha Vantage key "
            "(`make run` without a key serves from the built-in simulator instead)"
        )
    raise ConfigError(one_line(errors))


def load_store_settings() -> StoreSettings:
    """The store's settings alone, read as load_settings() reads them all."""
    try:
        return StoreSettings()
    except ValidationError as exc:
        raise ConfigError(one_line(exc.errors(include_url=False, include_input=False))) from None


def one_line(errors: list[ErrorDetails]) -> str:
    """Validation errors as one line naming each variable."""
    problems = "; ".join(
        f"{'_'.join(str(part) for part in e['loc']).upper()}: {e['msg']}"
        if e["loc"]
        else e["msg"].removeprefix("Value error, ")
        for e in errors
    )
    return f"invalid configuration: {problems}"
