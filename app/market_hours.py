"""Each exchange's trading sessions, holidays and early closes, from exchange_calendars, kept
as plain tables of UNIX seconds that answer in microseconds without pandas.

exchange_calendars rather than the financial calendars of `holidays`: only it knows session
hours, lunch breaks and early closes (half days), and Stockholm; it costs 0.6 s and 64 MB
(pandas) to import, measured in the README's "Freshness", so it is imported on first use.
A table is built in a worker thread: the event loop only ever reads the tables built so far.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DAY = 86400.0
# The sessions a table holds around the time first asked about: a few days back (a series
# fetched just before is still judged by them), a year ahead (a table is rebuilt a month
# before its end, which leaves room for the longest closures, Golden Week's nine days).
WINDOW_BEFORE = 14 * DAY
WINDOW_AFTER = 366 * DAY
MARGIN = 31 * DAY


@dataclass(frozen=True, slots=True)
class Sessions:
    """An exchange's trading between `start` and `end` (UNIX seconds): each stretch of
    trading (a session, or its parts either side of a lunch break) and each session's close.
    What lies past `end`, or past the last day the library has holidays for, is unknown."""

    start: float
    end: float
    trading_starts: tuple[float, ...]
    trading_ends: tuple[float, ...]
    closes: tuple[float, ...]

    def covers(self, at: float) -> bool:
        return self.start <= at <= self.end - MARGIN

    def is_open(self, at: float) -> bool:
        i = bisect.bisect_right(self.trading_starts, at) - 1
        return i >= 0 and at < self.trading_ends[i]

    def open_after(self, at: float) -> float | None:
        """The first start of trading after `at`."""
        i = bisect.bisect_right(self.trading_starts, at)
        return self.trading_starts[i] if i < len(self.trading_starts) else None

    def close_after(self, at: float) -> float | None:
        """The first session close after `at`: the session in progress's, or the next's."""
        i = bisect.bisect_right(self.closes, at)
        return self.closes[i] if i < len(self.closes) else None

    def close_before(self, at: float) -> float | None:
        """The last session close at or before `at`."""
        i = bisect.bisect_right(self.closes, at)
        return self.closes[i - 1] if i > 0 else None


def build_sessions(exchange: str, at: float) -> Sessions | None:
    # Here, not at the top: 0.6 s and 64 MB, spent only once a calendar is needed.
    import exchange_calendars
    import pandas

    if exchange not in exchange_calendars.get_calendar_names():
        return None
    start, end = at - WINDOW_BEFORE, at + WINDOW_AFTER
    first = dt.datetime.fromtimestamp(start, dt.UTC).date().isoformat()
    try:
        # To a year from today, or to the last year a calendar has holidays recorded for by
        # hand (Shanghai's, Bombay's): past that, nothing is known. The library's use of pandas
        # warns of pandas 4's changes, a DeprecationWarning hidden by default; not silenced
        # here, as catch_warnings swaps the whole process's filters and this runs in a thread.
        schedule = exchange_calendars.get_calendar(exchange, start=first).schedule
    except ValueError:  # `first` is past that
        return Sessions(start, end, (), (), ())
    starts: list[float] = []
    ends: list[float] = []
    closes: list[float] = []
    columns = schedule[["open", "break_start", "break_end", "close"]]
    for opens, break_start, break_end, close in columns.itertuples(index=False):
        if pandas.isna(break_start):
            starts.append(opens.timestamp())
            ends.append(close.timestamp())
        else:
            starts += [opens.timestamp(), break_end.timestamp()]
            ends += [break_start.timestamp(), close.timestamp()]
        closes.append(close.timestamp())
    return Sessions(start, end, tuple(starts), tuple(ends), tuple(closes))


class MarketHours:
    """Sessions of each exchange, each table built in a worker thread on first use (and again
    a month before it runs out). `sessions` answers at once, for the event loop; the build it
    starts takes 0.1-0.5 s, and the first one 0.6 s more for the import. `build` is
    build_sessions, or a stand-in in tests."""

    def __init__(self, build: Callable[[str, float], Sessions | None] = build_sessions) -> None:
        self._build_sessions = build
        self._tables: dict[str, Sessions | None] = {}  # None: no calendar for that MIC
        self._builds: dict[str, Future[None]] = {}  # the build in progress of each exchange
        self._lock = threading.Lock()  # held to look a table up, never during a build
        # One thread: builds are rare, and mostly hold the GIL (pandas) anyway.
        self._builder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="market-hours")

    def sessions(self, exchange: str, at: float) -> Sessions | None:
        """`exchange`'s sessions around `at` (UNIX seconds), at once. None if the library has
        no calendar of it, or until its table is built: that build starts here."""
        table, building = self._table_or_build(exchange, at)
        return None if building is not None else table

    def wait_for_sessions(self, exchange: str, at: float) -> Sessions | None:
        """`exchange`'s sessions around `at`, once built; None if the library has no calendar
        of it. Blocks for as long as a build takes: for callers off the event loop."""
        while True:
            table, building = self._table_or_build(exchange, at)
            if building is None:
                return table
            building.result()  # then look again: that build may have been for another time

    def prepare(self, exchange: str, at: float) -> None:
        """Start building `exchange`'s sessions around `at`, unless built."""
        self._table_or_build(exchange, at)

    def _table_or_build(
        self, exchange: str, at: float
    ) -> tuple[Sessions | None, Future[None] | None]:
        """The table covering `at`, or the build that will (started if none is running)."""
        with self._lock:
            if exchange in self._tables:
                table = self._tables[exchange]
                if table is None or table.covers(at):
                    return table, None
            building = self._builds.get(exchange)
            if building is None:
                building = self._builder.submit(self._build, exchange, at)
                self._builds[exchange] = building
            return None, building

    def _build(self, exchange: str, at: float) -> None:
        try:
            table = self._build_sessions(exchange, at)
        except Exception:
            # No caller would see this: the exchange keeps the fixed TTL, and is not retried.
            logger.exception("market hours build failed", extra={"exchange": exchange})
            table = None
        with self._lock:
            self._tables[exchange] = table
            del self._builds[exchange]
