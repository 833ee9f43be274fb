from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ConfigError, MissingApiKey, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No variable or .env file of the developer's may leak into these tests."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    settings = load_settings()
    assert settings.alphavantage_base_url == "https://www.alphavantage.co/query"
    assert settings.upstream_timeout_seconds == 10
    assert (settings.breaker_failure_threshold, settings.breaker_success_threshold) == (5, 3)
    assert (settings.breaker_timeout_seconds, settings.breaker_half_open_max_calls) == (30, 1)
    assert (settings.cache_ttl_seconds, settings.cache_stale_seconds) == (300, 86400)
    assert settings.cache_max_entries == 10_000
    assert settings.admin_token is None
    assert settings.log_level == "INFO"
    # A free key's limits; `python -m app` turns pacing and the quota off for the simulator.
    assert (settings.upstream_rate_per_second, settings.upstream_burst) == (1, 1)
    assert settings.upstream_max_wait_seconds == 2
    assert settings.upstream_daily_quota == 25
    assert settings.upstream_max_concurrency == 4
    assert settings.breaker_scope == "shared"
    assert settings.breaker_mode == "consecutive"
    # The embedded store, under the working directory: shared by every process started there.
    assert settings.state_url.get_secret_value() == "sqlite:///stock-service-state.db"
    assert settings.state_timeout_seconds == 0.5
    assert (
        settings.breaker_backoff_multiplier,
        settings.breaker_backoff_max_seconds,
        settings.breaker_backoff_jitter,
    ) == (2, 300, 0.1)


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_or_blank_key_is_its_own_error(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is not None:
        monkeypatch.setenv("ALPHAVANTAGE_API_KEY", value)
    with pytest.raises(MissingApiKey, match="ALPHAVANTAGE_API_KEY is not set"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BREAKER_FAILURE_THRESHOLD", "0"),
        ("BREAKER_FAILURE_THRESHOLD", "five"),
        ("UPSTREAM_TIMEOUT_SECONDS", "0"),
        ("UPSTREAM_TIMEOUT_SECONDS", "nan"),
        ("BREAKER_TIMEOUT_SECONDS", "-1"),
        ("CACHE_MAX_ENTRIES", "0"),
        ("ALPHAVANTAGE_BASE_URL", "ftp://example"),
        ("LOG_LEVEL", "LOUD"),
        ("UPSTREAM_RATE_PER_SECOND", "-1"),
        ("UPSTREAM_DAILY_QUOTA", "-1"),
        ("UPSTREAM_MAX_CONCURRENCY", "0"),
        ("BREAKER_SCOPE", "symbol"),
        ("STATE_URL", "postgres://db/state"),
        ("STATE_URL", "redis://h:6379/0?socket_timeout=30"),
        ("STATE_TIMEOUT_SECONDS", "0"),
        ("BREAKER_MODE", "vibes"),
        ("BREAKER_FAILURE_RATE_THRESHOLD", "0"),
        ("BREAKER_FAILURE_RATE_THRESHOLD", "1.5"),
        ("BREAKER_WINDOW", "sliding"),
        ("BREAKER_BACKOFF_MULTIPLIER", "0.5"),
        ("BREAKER_BACKOFF_JITTER", "1"),
        ("GATEWAY_FUNCTIONS", "GLOBAL_QUOTE,TIME-SERIES"),
        ("GATEWAY_FUNCTIONS", "GLOBAL QUOTE"),
        ("GATEWAY_PASSTHROUGH_TTLS", "TIME_SERIES_INTRADAY"),
        ("GATEWAY_PASSTHROUGH_TTLS", "TIME_SERIES_INTRADAY=-1"),
        ("GATEWAY_PASSTHROUGH_TTLS", "NEWS SENTIMENT=60"),
        ("CACHE_FRESHNESS", "hourly"),
        ("FRESHNESS_SETTLE_SECONDS", "-1"),
        ("WATCHLIST", "IBM,^GSPC"),
        ("WATCHLIST_RESERVE", "-1"),
    ],
)
def test_a_bad_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings()
    assert not isinstance(info.value, MissingApiKey)
    assert "\n" not in str(info.value)


def test_secrets_are_masked_and_case_is_forgiven(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "very-secret")
    monkeypatch.setenv("ADMIN_TOKEN", "admin-secret")
    monkeypatch.setenv("STATE_URL", "redis://:store-secret@redis:6379/0")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    assert "very-secret" not in shown
    assert "admin-secret" not in shown
    assert "store-secret" not in shown


def test_a_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ALPHAVANTAGE_API_KEY=from-dotenv\nBREAKER_TIMEOUT_SECONDS=12\n")
    settings = load_settings()
    assert settings.breaker_timeout_seconds == 12
    assert settings.alphavantage_api_key is not None
    assert settings.alphavantage_api_key.get_secret_value() == "from-dotenv"


def test_a_count_window_smaller_than_the_minimum_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    monkeypatch.setenv("BREAKER_MODE", "failure_rate")
    monkeypatch.setenv("BREAKER_WINDOW_SIZE", "5")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == (
        "invalid configuration: BREAKER_MINIMUM_CALLS (10) exceeds BREAKER_WINDOW_SIZE (5): "
        "a count window that small never holds enough calls to open"
    )
    monkeypatch.setenv("BREAKER_WINDOW", "time")  # 10 calls in 5 s is fine
    assert load_settings().breaker_window_size == 5


def test_a_watchlist_under_a_fixed_ttl_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    monkeypatch.setenv("WATCHLIST", "IBM")
    monkeypatch.setenv("CACHE_FRESHNESS", "fixed")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(
        "invalid configuration: WATCHLIST needs CACHE_FRESHNESS=market"
    )
    monkeypatch.setenv("CACHE_FRESHNESS", "market")
    assert load_settings().watchlist == "IBM"


def test_gateway_functions_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    assert load_settings().gateway_functions == "*"  # the three, and pass-through of others
    monkeypatch.setenv("GATEWAY_FUNCTIONS", " global_quote,, GLOBAL_QUOTE ")
    assert load_settings().gateway_functions == "GLOBAL_QUOTE"
    monkeypatch.setenv("GATEWAY_FUNCTIONS", "global_quote, time_series_intraday")
    assert load_settings().gateway_functions == "GLOBAL_QUOTE,TIME_SERIES_INTRADAY"
    monkeypatch.setenv("GATEWAY_FUNCTIONS", "")
    assert load_settings().gateway_functions == ""


def test_passthrough_ttls_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    assert load_settings().gateway_passthrough_ttls == ""
    monkeypatch.setenv("GATEWAY_PASSTHROUGH_TTLS", " time_series_intraday=60, NEWS_SENTIMENT=300 ")
    ttls = load_settings().gateway_passthrough_ttls
    assert ttls == "TIME_SERIES_INTRADAY=60.0,NEWS_SENTIMENT=300.0"


def test_the_watchlist_is_upper_case_and_each_symbol_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "k")
    monkeypatch.setenv("WATCHLIST", " ibm, tsco.lon ,IBM,")
    assert load_settings().watchlist == "IBM,TSCO.LON"
