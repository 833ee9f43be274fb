"""Market-hours freshness (app/freshness.py) on a fake clock, with exchange_calendars' real
sessions: a weekend, US holidays, a half day, London's and Shanghai's hours, an exchange with
no calendar, the fixed TTL while a calendar is being built, and a StockService that keeps a
series over a weekend without a call."""

from __future__ import annotations

import datetime as dt
import threading
from zoneinfo import ZoneInfo

import pytest

from app.alphavantage import DAILY, QUOTE, SEARCH
from app.errors import Throttled
from app.exchanges import exchange_of
from app.freshness import MarketFreshness, Plan
from app.market_hours import MarketHours, Sessions, build_sessions
from app.resources import freshness_policy
from tests.conftest import FakeClock, make_settings
from tests.stock_service import STALE, RecordedEvents, stock_service

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
SHANGHAI = ZoneInfo("Asia/Shanghai")
SETTLE = 1800.0
HOURS = MarketHours()  # one for the module: each calendar is built once


def at(zone: ZoneInfo, month: int, day: int, hour: int, minute: int = 0, year: int = 2026) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


@pytest.fixture(autouse=True)
def calendars() -> None:
    build_calendars(HOURS)


def build_calendars(hours: MarketHours) -> None:
    """Build `hours`'s tables of the exchanges the tests ask about, for the fake clocks' dates
    (July 2026 to May 2027), waiting for them: fresh_for answers the fixed TTL until then."""
    for exchange in ("XNYS", "XLON", "XSHG"):
        hours.wait_for_sessions(exchange, at(NEW_YORK, 6, 15, 12))


def expiry(
    function: str, symbol: str, fetched_at: float, plan: Plan = "free", age: float = 0.0
) -> float | None:
    """When an answer fetched at `fetched_at` stops being fresh; None: the fixed TTL."""
    clock = FakeClock(fetched_at + age)
    fresh_for = MarketFreshness(HOURS, settle=SETTLE, plan=plan, clock=clock).fresh_for(
        function, symbol, age
    )
    return None if fresh_for is None else fetched_at + fresh_for


@pytest.mark.parametrize(
    ("symbol", "exchange"),
    [
        ("IBM", "XNYS"),
        ("BRK.B", "XNYS"),  # a share class, not an exchange
        ("RDS-A", "XNYS"),
        ("TSCO.LON", "XLON"),
        ("shop.trt", "XTSE"),
        ("600104.SHH", "XSHG"),
        ("000002.SHZ", "XSHG"),
        ("NAB.AX", "XASX"),
        ("AIR.PAR", None),
    ],
)
def test_the_exchange_comes_from_the_suffix(symbol: str, exchange: str | None) -> None:
    assert exchange_of(symbol) == exchange


class TestDailySeries:
    def test_fetched_in_session_it_lasts_until_that_close_and_the_settle_delay(self) -> None:
        fetched = at(NEW_YORK, 11, 24, 10)  # a Tuesday
        assert expiry(DAILY, "IBM", fetched) == at(NEW_YORK, 11, 24, 16, 30)

    def test_fetched_before_the_settle_delay_is_over_it_waits_for_that_bar(self) -> None:
        fetched = at(NEW_YORK, 11, 24, 16, 10)
        assert expiry(DAILY, "IBM", fetched) == at(NEW_YORK, 11, 24, 16, 30)

    def test_fetched_on_friday_evening_it_lasts_the_weekend(self) -> None:
        fetched = at(NEW_YORK, 11, 20, 17)
        assert expiry(DAILY, "IBM", fetched) == at(NEW_YORK, 11, 23, 16, 30)

    def test_thanksgiving_is_skipped_and_the_next_day_closes_at_one(self) -> None:
        fetched = at(NEW_YORK, 11, 25, 17)  # Wednesday evening; Thursday is Thanksgiving
        assert expiry(DAILY, "IBM", fetched) == at(NEW_YORK, 11, 27, 13, 30)

    def test_independence_day_observed_on_a_friday_is_skipped(self) -> None:
        fetched = at(NEW_YORK, 7, 2, 17)  # July 4 is a Saturday: markets close Friday the 3rd
        assert expiry(DAILY, "IBM", fetched) == at(NEW_YORK, 7, 6, 16, 30)

    def test_london_follows_its_own_hours_and_not_american_holidays(self) -> None:
        fetched = at(LONDON, 11, 26, 10)  # Thanksgiving: London trades
        assert expiry(DAILY, "TSCO.LON", fetched) == at(LONDON, 11, 26, 17)

    def test_london_christmas_half_day_and_boxing_day(self) -> None:
        # Christmas Eve closes at 12:30; the 25th, and the 28th for Boxing Day, are holidays.
        assert expiry(DAILY, "TSCO.LON", at(LONDON, 12, 24, 10)) == at(LONDON, 12, 24, 13)
        assert expiry(DAILY, "TSCO.LON", at(LONDON, 12, 24, 14)) == at(LONDON, 12, 29, 17)

    def test_a_copy_from_the_shared_tier_is_judged_by_when_it_was_fetched(self) -> None:
        fetched = at(NEW_YORK, 11, 20, 17)
        assert expiry(DAILY, "IBM", fetched, age=86400) == at(NEW_YORK, 11, 23, 16, 30)


class TestQuote:
    def test_on_a_free_key_it_follows_the_daily_bar(self) -> None:
        assert expiry(QUOTE, "IBM", at(NEW_YORK, 11, 24, 10)) == at(NEW_YORK, 11, 24, 16, 30)

    def test_in_session_it_keeps_the_fixed_ttl(self) -> None:
        assert expiry(QUOTE, "IBM", at(NEW_YORK, 11, 24, 10), "premium") is None

    def test_closed_it_lasts_until_the_next_open(self) -> None:
        fetched = at(NEW_YORK, 11, 20, 17)
        assert expiry(QUOTE, "IBM", fetched, "premium") == at(NEW_YORK, 11, 23, 9, 30)

    def test_after_a_half_days_early_close_it_lasts_until_monday(self) -> None:
        assert expiry(QUOTE, "IBM", at(NEW_YORK, 11, 27, 12), "premium") is None
        # The closing prints may land for the settle delay after the 13:00 close.
        assert expiry(QUOTE, "IBM", at(NEW_YORK, 11, 27, 13, 10), "premium") is None
        fetched = at(NEW_YORK, 11, 27, 14)
        assert expiry(QUOTE, "IBM", fetched, "premium") == at(NEW_YORK, 11, 30, 9, 30)

    def test_shanghai_lunch_break_lasts_until_the_afternoon_session(self) -> None:
        fetched = at(SHANGHAI, 11, 24, 12)
        assert expiry(QUOTE, "600104.SHH", fetched, "premium") == at(SHANGHAI, 11, 24, 13)


@pytest.mark.parametrize("function", [DAILY, QUOTE])
def test_an_exchange_without_a_calendar_keeps_the_fixed_ttl(function: str) -> None:
    assert expiry(function, "AIR.PAR", at(NEW_YORK, 11, 20, 17)) is None


def test_a_calendar_past_its_recorded_holidays_keeps_the_fixed_ttl() -> None:
    # exchange_calendars records Shanghai's holidays by hand, a year or so ahead at most.
    fetched = at(SHANGHAI, 6, 1, 10, year=2031)
    hours = MarketHours()
    assert hours.wait_for_sessions("XSHG", fetched) is not None
    policy = MarketFreshness(hours, settle=SETTLE, plan="free", clock=FakeClock(fetched))
    assert policy.fresh_for(DAILY, "600104.SHH") is None


class HeldBuild:
    """build_sessions, held until `release` is set; `exchanges` are those it was asked for."""

    def __init__(self) -> None:
        self.exchanges: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, exchange: str, at: float) -> Sessions | None:
        self.exchanges.append(exchange)
        self.started.set()
        # Bounded only so that a fresh_for that waited for the build fails instead of hanging.
        self.release.wait(timeout=10)
        return build_sessions(exchange, at)


def test_until_its_calendar_is_built_an_exchange_keeps_the_fixed_ttl() -> None:
    build = HeldBuild()
    hours = MarketHours(build)
    fetched = at(NEW_YORK, 11, 20, 17)
    policy = MarketFreshness(hours, settle=SETTLE, plan="free", clock=FakeClock(fetched))
    try:
        assert policy.fresh_for(DAILY, "IBM") is None  # at once, and the build starts
        assert build.started.wait(timeout=10)
        # The build in progress holds up no caller, and is not started twice.
        assert policy.fresh_for(DAILY, "IBM") is None
        assert policy.fresh_for(QUOTE, "MSFT") is None
        assert build.exchanges == ["XNYS"]
    finally:
        build.release.set()
    assert hours.wait_for_sessions("XNYS", fetched) is not None
    assert policy.fresh_for(DAILY, "IBM") == at(NEW_YORK, 11, 23, 16, 30) - fetched
    assert build.exchanges == ["XNYS"]


def test_an_exchange_without_a_calendar_is_not_built_again() -> None:
    build = HeldBuild()
    build.release.set()
    hours = MarketHours(build)
    assert hours.wait_for_sessions("XPAR-NOT-A-MIC", at(NEW_YORK, 11, 20, 17)) is None
    assert hours.sessions("XPAR-NOT-A-MIC", at(NEW_YORK, 11, 20, 17)) is None
    assert build.exchanges == ["XPAR-NOT-A-MIC"]


def test_search_keeps_its_own_ttl() -> None:
    assert expiry(SEARCH, "tesco", at(NEW_YORK, 11, 20, 17)) is None


def test_cache_freshness_picks_the_policy() -> None:
    assert isinstance(
        freshness_policy(make_settings(cache_freshness="market"), HOURS), MarketFreshness
    )
    assert freshness_policy(make_settings(cache_freshness="fixed"), HOURS) is None


async def test_a_series_is_kept_over_the_weekend_then_kept_stale_as_long_as_ever() -> None:
    clock = FakeClock(at(NEW_YORK, 11, 20, 17))  # Friday evening
    events = RecordedEvents()
    policy = MarketFreshness(HOURS, settle=SETTLE, plan="free", clock=clock)
    # A quota of one call: the next miss is refused, and a copy may stand in for it.
    async with stock_service(events, clock, quota=(1, 30 * 86400), freshness=policy) as service:
        assert (await service.daily("IBM")).source == "upstream"
        for then in (at(NEW_YORK, 11, 22, 12), at(NEW_YORK, 11, 23, 16, 29)):
            clock.now = then
            assert (await service.daily("IBM")).source == "cache"
        assert [e for e in events.events if e[0] == "upstream"] == [("upstream", DAILY, "success")]
        clock.now = at(NEW_YORK, 11, 23, 16, 31)  # Monday's bar may be out: a miss
        assert (await service.daily("IBM")).source == "stale"
        clock.now = at(NEW_YORK, 11, 23, 16, 30) + STALE + 1
        with pytest.raises(Throttled):
            await service.daily("IBM")
