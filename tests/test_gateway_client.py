"""The `alpha-vantage` client from PyPI (RomelTorres/alpha_vantage), unchanged, pointed at
GET /query of a real service process over a real socket, as an existing tool would be.

The client finds its base URL in the class attribute `AlphaVantage._ALPHA_VANTAGE_API_URL`
(ending in `?`), and raises ValueError for any answer holding "Error Message", or (as it does
by default) "Information" or "Note".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alpha_vantage.alphavantage import AlphaVantage
from alpha_vantage.timeseries import TimeSeries

from tests.servers import ServerPool, add_consumer

pytestmark = pytest.mark.integration

SERVICE_KEY = "gateway-test-key"
ClientOf = Callable[..., TimeSeries]


@pytest.fixture
def client_of(servers: ServerPool, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClientOf]:
    """`client_of(**settings)`: a service with `settings` against a simulator, both real
    processes, and a TimeSeries client of its /query. The client's base URL is restored after."""
    # requests reads proxies from the environment: keep its 127.0.0.1 traffic local.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    original = AlphaVantage._ALPHA_VANTAGE_API_URL

    def point_at(key: str = "consumer-token", **settings: str) -> TimeSeries:
        simulator = servers.start_simulator()
        service = servers.start_service(
            simulator, {"ALPHAVANTAGE_API_KEY": SERVICE_KEY, **settings}
        )
        AlphaVantage._ALPHA_VANTAGE_API_URL = f"{service.url}/query?"
        return TimeSeries(key=key, output_format="json")

    try:
        yield point_at
    finally:
        AlphaVantage._ALPHA_VANTAGE_API_URL = original


def test_gets_daily_series_quotes_and_symbol_searches(client_of: ClientOf) -> None:
    client = client_of()
    series, meta = client.get_daily("IBM")
    assert meta["2. Symbol"] == "IBM"
    assert meta["4. Output Size"] == "Compact"
    assert len(series) == 100
    newest = series[max(series)]
    assert list(newest) == ["1. open", "2. high", "3. low", "4. close", "5. volume"]

    quote, _ = client.get_quote_endpoint("IBM")
    assert quote["01. symbol"] == "IBM"
    assert quote["05. price"] == newest["4. close"]  # the same cached day

    # Its JSON form of a search builds a pandas DataFrame whatever output_format says (and
    # pandas is not installed here): its CSV form is the one that works without it.
    searcher = TimeSeries(key="consumer-token", output_format="csv")
    rows, _ = searcher.get_symbol_search("tesco")
    header, first, *_ = list(rows)
    assert header[0] == "symbol"
    assert dict(zip(header, first, strict=True)) | {"matchScore": "-"} == {
        "symbol": "TSCO.LON",
        "name": "Tesco PLC",
        "type": "Equity",
        "region": "United Kingdom",
        "marketOpen": "08:00",
        "marketClose": "16:30",
        "timezone": "UTC+01",
        "currency": "GBX",
        "matchScore": "-",
    }


def test_raises_its_usual_error_for_an_unknown_symbol(client_of: ClientOf) -> None:
    client = client_of()
    with pytest.raises(ValueError, match=r"^Invalid API call\..*TIME_SERIES_DAILY\.$"):
        client.get_daily("ZZNONE")
    with pytest.raises(ValueError, match=r"^Invalid API call\..*GLOBAL_QUOTE\.$"):
        client.get_quote_endpoint("ZZNONE")


def test_raises_its_usual_error_for_a_spent_budget(client_of: ClientOf) -> None:
    client = client_of(UPSTREAM_DAILY_QUOTA="1")
    client.get_quote_endpoint("IBM")  # spends the day's one call
    with pytest.raises(ValueError, match=r"limit: quota.*Please come back in \d+ seconds\."):
        client.get_daily("IBM")


def test_a_consumer_token_is_its_key_and_its_spent_budget_its_usual_error(
    client_of: ClientOf, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path}/consumers.db"
    token = add_consumer(state_url, tmp_path, "tool", "--calls-per-day", "1")
    client = client_of(key=token, STATE_URL=state_url)
    client.get_quote_endpoint("IBM")  # the consumer's one call of the day
    with pytest.raises(ValueError, match=r"limit: consumer_budget.*come back in \d+ seconds"):
        client.get_daily("MSFT")

    stranger = TimeSeries(key="not-a-consumer-token", output_format="json")
    with pytest.raises(ValueError, match="apikey is invalid or missing"):
        stranger.get_quote_endpoint("IBM")
    assert token not in (tmp_path / "consumers.db").read_bytes().decode(errors="replace")
