"""The watchlist (app/watchlist.py) on a fake clock, through a real StockService over the
in-process simulator: when each symbol is refreshed, each once a round, the reserve kept, one
round for two watchlists sharing a store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from app.alphavantage import DAILY, QUOTE
from app.errors import Throttled
from app.freshness import MarketFreshness, Plan
from app.limits import DAY, UpstreamLimits
from app.simulator import create_simulator
from app.state import MemoryState
from app.watchlist import RETRY_SECONDS, Watchlist
from tests.conftest import FakeClock
from tests.stock_service import RecordedEvents, stock_service
from tests.test_freshness import HOURS, LONDON, NEW_YORK, at, build_calendars

SETTLE = 1800.0
SYMBOLS = ("IBM", "MSFT", "TSCO.LON")


@pytest.fixture(autouse=True)
def calendars() -> None:
    build_calendars(HOURS)


class Setup:
    def __init__(self, start: float, quota: int) -> None:
        self.simulator = create_simulator()
        self.clock = FakeClock(start)
        self.state = MemoryState(self.clock)
        self.events = RecordedEvents()
        self.quota = (quota, DAY)

    def calls(self) -> list[tuple[str, ...]]:
        """The upstream calls made so far, as (function, outcome)."""
        return [e[1:] for e in self.events.events if e[0] == "upstream"]

    @asynccontextmanager
    async def watchlists(
        self, count: int = 1, *, reserve: int = 0, plan: Plan = "free"
    ) -> AsyncIterator[list[Watchlist]]:
        """`count` watchlists of SYMBOLS on one service and one store."""
        async with stock_service(
            self.events, self.clock, quota=self.quota, state=self.state, simulator=self.simulator
        ) as service:
            limits = UpstreamLimits(
                self.state, key="k", pacing=None, quota=self.quota, max_wait=0, clock=self.clock
            )
            policy = MarketFreshness(HOURS, settle=SETTLE, plan=plan, clock=self.clock)
            yield [
                Watchlist(
                    SYMBOLS,
                    service,
                    limits,
                    self.state,
                    key="k",
                    next_bar=policy.next_bar,
                    reserve=reserve,
                    plan=plan,
                    lease_seconds=30,
                    clock=self.clock,
                )
                for _ in range(count)
            ]


async def test_each_symbol_is_refreshed_after_its_exchanges_close() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=25)  # Tuesday morning: nothing is due
    async with setup.watchlists() as (watchlist,):
        # London's bar (16:30 there, plus the settle delay) comes first, New York's later.
        assert await watchlist.refresh_due() == at(LONDON, 11, 24, 17) - setup.clock.now
        assert setup.calls() == []
        setup.clock.now = at(LONDON, 11, 24, 17)
        assert await watchlist.refresh_due() == at(NEW_YORK, 11, 24, 16, 30) - setup.clock.now
        assert setup.calls() == [(DAILY, "success")]
        setup.clock.now = at(NEW_YORK, 11, 24, 16, 30)
        assert await watchlist.refresh_due() == at(LONDON, 11, 25, 17) - setup.clock.now
        assert len(setup.calls()) == 3
        status = {s.symbol: (s.last_refresh, s.next_refresh) for s in await watchlist.status()}
        assert status == {
            "IBM": (setup.clock.now, at(NEW_YORK, 11, 25, 16, 30)),
            "MSFT": (setup.clock.now, at(NEW_YORK, 11, 25, 16, 30)),
            "TSCO.LON": (at(LONDON, 11, 24, 17), at(LONDON, 11, 25, 17)),
        }


async def test_after_thanksgiving_the_next_refresh_is_the_half_days() -> None:
    setup = Setup(at(NEW_YORK, 11, 25, 12), quota=25)  # Wednesday; Thursday is a holiday
    async with setup.watchlists() as (watchlist,):
        setup.clock.now = at(NEW_YORK, 11, 25, 17)
        await watchlist.refresh_due()
        status = {s.symbol: s.next_refresh for s in await watchlist.status()}
        assert status["IBM"] == at(NEW_YORK, 11, 27, 13, 30)
        assert status["TSCO.LON"] == at(LONDON, 11, 26, 17)  # London trades on Thanksgiving


async def test_a_round_refreshes_each_due_symbol_once() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=25)
    async with setup.watchlists() as (watchlist,):
        setup.clock.now = at(NEW_YORK, 11, 24, 17)
        await watchlist.refresh_due()
        await watchlist.refresh_due()  # nothing is due
        assert len(setup.calls()) == 3
        setup.clock.now = at(LONDON, 11, 25, 17, 1)  # London's bar only
        await watchlist.refresh_due()
        assert len(setup.calls()) == 4
        setup.clock.now = at(NEW_YORK, 11, 25, 16, 31)  # and now New York's
        await watchlist.refresh_due()
        assert len(setup.calls()) == 6


async def test_misses_get_the_reserve_and_the_rounds_their_share_each_at_its_time() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=5)
    async with (
        setup.watchlists(reserve=2) as (watchlist,),
        stock_service(setup.events, setup.clock, quota=setup.quota, state=setup.state) as misses,
    ):
        await watchlist.refresh_due()  # nothing due yet: the rounds' 3 calls are held
        await misses.daily("OTHER1")
        await misses.daily("OTHER2")
        with pytest.raises(Throttled, match="held for the watchlist"):
            await misses.daily("OTHER3")
        setup.clock.now = at(LONDON, 11, 24, 17)
        await watchlist.refresh_due()
        with pytest.raises(Throttled, match="held for the watchlist"):
            await misses.daily("OTHER3")
        setup.clock.now = at(NEW_YORK, 11, 24, 16, 30)
        await watchlist.refresh_due()
        assert len(setup.calls()) == 5  # OTHER1, OTHER2, TSCO.LON, IBM, MSFT
        refreshed = [s.symbol for s in await watchlist.status() if s.last_refresh is not None]
        assert refreshed == list(SYMBOLS)


async def test_the_reserve_is_never_spent() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=4)
    async with setup.watchlists(reserve=2) as (watchlist,):
        setup.clock.now = at(NEW_YORK, 11, 24, 17)
        wait = await watchlist.refresh_due()
        assert len(setup.calls()) == 2  # 4 - 2: the third waits for the quota to refill
        assert wait == DAY  # when the first of today's calls leaves the rolling day
        refreshed = [s.symbol for s in await watchlist.status() if s.last_refresh is not None]
        assert refreshed == ["IBM", "MSFT"]
        assert await watchlist.refresh_due() == DAY
        assert len(setup.calls()) == 2


async def test_failed_calls_count_in_its_share_and_the_reserve_is_kept() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=4)
    transport = httpx.ASGITransport(app=setup.simulator)
    async with httpx.AsyncClient(transport=transport, base_url="http://simulator") as sim:
        await sim.post("/_faults", json={"mode": "http_500"})
    async with setup.watchlists(reserve=2) as (watchlist,):
        setup.clock.now = at(NEW_YORK, 11, 24, 17)
        for _ in range(4):  # a failed round is tried again every RETRY_SECONDS
            await watchlist.refresh_due()
            setup.clock.advance(RETRY_SECONDS)
        assert setup.calls() == [(DAILY, "bad_response")] * 2  # its share: 4 - 2
        usage = (await watchlist_limits(setup).status()).quota
        assert usage is not None
        assert usage.remaining == 2  # the reserve, for misses


def watchlist_limits(setup: Setup) -> UpstreamLimits:
    return UpstreamLimits(
        setup.state, key="k", pacing=None, quota=setup.quota, max_wait=0, clock=setup.clock
    )


async def test_a_premium_key_refreshes_quotes_too() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=25)
    async with setup.watchlists(plan="premium") as (watchlist,):
        setup.clock.now = at(NEW_YORK, 11, 24, 17)
        await watchlist.refresh_due()
        assert sorted(setup.calls()) == [(QUOTE, "success")] * 3 + [(DAILY, "success")] * 3


async def test_two_watchlists_on_one_store_do_one_round_between_them() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=25)
    async with setup.watchlists(2) as (first, second):
        setup.clock.now = at(NEW_YORK, 11, 24, 17)
        await first.refresh_due()
        await second.refresh_due()
        assert len(setup.calls()) == 3
        # The second found the round done: it asked the service nothing, not even its cache.
        lookups = [e for e in setup.events.events if e[0] == "cache"]
        assert lookups == [("cache", DAILY, "miss")] * 3


async def test_while_another_holds_the_lease_a_watchlist_waits() -> None:
    setup = Setup(at(NEW_YORK, 11, 24, 8), quota=25)
    async with setup.watchlists(2) as (first, second):
        setup.clock.now = at(NEW_YORK, 11, 24, 17)
        await setup.state.update(  # as another process's round under way has it
            "watchlist:k:lease", lambda _, now: ({"holder": "another process"}, None), 30
        )
        assert await first.refresh_due() == 30  # the lease's length: then look again
        assert setup.events.events == []
        setup.clock.advance(30)  # that process died: its lease ran out
        await second.refresh_due()
        assert len(setup.calls()) == 3
