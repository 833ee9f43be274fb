"""Each exchange's trading sessions, holidays and early closes, from exchange_calendars, kept
as plain tables of UNIX seconds that answer in microseconds without pandas.

exchange_calendars rather than the financial calendars of `holidays`: only it knows session
hours, lunch breaks and early closes (half days), and Stockholm; it costs 0.6 s and 64 MB
(pandas) to import, measured in the README's "Freshness", so it is imported on first use.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
import warnings
from dataclasses import dataclass

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


class MarketHours:
    """Sessions of each exchange, built on first use (and again a month before a table runs
    out). Thread-safe, so a table may be built off the event loop."""

    def __init__(self) -> None:
        self._tables: dict[str, Sessions | None] = {}  # None: no calendar for that MIC
        self._lock = threading.Lock()

    def sessions(self, exchange: str, at: float) -> Sessions | None:
        """`exchange`'s sessions around `at` (UNIX seconds); None if the library has no
        calendar of it."""
        with self._lock:
            if exchange in self._tables:
                table = self._tables[exchange]
                if table is None or table.covers(at):
                    return table
            table = self._tables[exchange] = build_sessions(exchange, at)
            return table


def build_sessions(exchange: str, at: float) -> Sessions | None:
    # Here, not at the top: 0.6 s and 64 MB, spent only once a calendar is needed.
    import exchange_calendars
    import pandas

    if exchange not in exchange_calendars.get_calendar_names():
        return None
    start, end = at - WINDOW_BEFORE, at + WINDOW_AFTER
    first = dt.datetime.fromtimestamp(start, dt.UTC).date().isoformat()
    try:
        # The library's own use of pandas warns of pandas 4's changes: nothing to act on here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # To a year from today, or to the last year a calendar has holidays recorded for
            # by hand (Shanghai's, Bombay's): past that, nothing is known.
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
