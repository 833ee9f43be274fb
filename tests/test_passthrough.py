"""The gateway's pass-through on its own (app/passthrough.py, StockService.passthrough): the
canonical query, GATEWAY_PASSTHROUGH_TTLS, and a TTL per function on a fake clock. Through
GET /query: tests/routes/test_gateway.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.passthrough import PASSTHROUGH, canonical_query, function_of, parse_ttls
from app.service import StockService
from tests.conftest import FakeClock
from tests.stock_service import RecordedEvents, stock_service

INTRADAY = {"function": "TIME_SERIES_INTRADAY", "symbol": "IBM", "interval": "5min"}


def test_the_canonical_query_ignores_order_and_the_callers_key() -> None:
    one = canonical_query({**INTRADAY, "apikey": "a"})
    other = canonical_query({"interval": "5min", "apikey": "b", **INTRADAY})
    assert one == other == "TIME_SERIES_INTRADAY?interval=5min&symbol=IBM"
    assert function_of(one) == "TIME_SERIES_INTRADAY"
    # Values are encoded: no value can pose as another parameter.
    assert canonical_query({"function": "F", "a": "1&b=2"}) == "F?a=1%26b%3D2"


def test_ttls_are_parsed_by_function() -> None:
    assert parse_ttls("") == {}
    assert parse_ttls(" time_series_intraday = 60 ,, NEWS_SENTIMENT=0.5") == {
        "TIME_SERIES_INTRADAY": 60.0,
        "NEWS_SENTIMENT": 0.5,
    }


@pytest.mark.parametrize(
    "setting", ["INTRADAY", "=60", "BAD-NAME=60", "X=soon", "X=-1", "X=nan", "X=inf"]
)
def test_a_malformed_ttl_is_refused(setting: str) -> None:
    with pytest.raises(ValueError, match=r"'"):
        parse_ttls(setting)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ttls() -> dict[str, float]:
    return {"TIME_SERIES_INTRADAY": 5}


@pytest.fixture
async def service(
    clock: FakeClock, events: RecordedEvents, ttls: dict[str, float]
) -> AsyncIterator[StockService]:
    """A service whose caches keep answers 60 s, and pass-through functions' for `ttls`."""
    async with stock_service(events, clock, passthrough_ttls=ttls) as built:
        yield built


@pytest.fixture
def events() -> RecordedEvents:
    return RecordedEvents()


def upstream_calls(events: RecordedEvents, function: str) -> int:
    return events.events.count(("upstream", function, "success"))


async def test_a_function_keeps_its_answers_for_its_own_ttl(
    service: StockService, events: RecordedEvents, clock: FakeClock
) -> None:
    served = await service.passthrough(INTRADAY)
    assert (served.source, served.ttl) == ("upstream", 5)
    assert (await service.daily("IBM")).source == "upstream"
    clock.advance(4.9)
    again = await service.passthrough(INTRADAY)
    assert (again.value, again.source) == (served.value, "cache")
    assert again.age == pytest.approx(4.9)
    clock.advance(0.1)  # 5 s: TIME_SERIES_INTRADAY's TTL is over, the daily series' is not
    refetched = await service.passthrough(INTRADAY)
    assert (refetched.value, refetched.source) == (served.value, "upstream")
    assert (await service.daily("IBM")).source == "cache"
    assert upstream_calls(events, PASSTHROUGH) == 2
    assert upstream_calls(events, "TIME_SERIES_DAILY") == 1


@pytest.mark.parametrize("ttls", [{"NEWS_SENTIMENT": 5}])
async def test_a_function_without_a_ttl_of_its_own_gets_the_caches(
    service: StockService, events: RecordedEvents, clock: FakeClock
) -> None:
    first = (await service.passthrough(INTRADAY)).value
    clock.advance(59.9)
    again = await service.passthrough(INTRADAY)
    assert (again.value, again.source, again.ttl) == (first, "cache", 60)
    clock.advance(0.1)
    assert (await service.passthrough(INTRADAY)).source == "upstream"
