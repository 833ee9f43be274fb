from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from app.models import Bar, DailySeries, Quote
from app.rendering import Renderer, entity_tag, negotiate


def series(close: float) -> DailySeries:
    bars = tuple(
        Bar(dt.date(2026, 11, 26) - dt.timedelta(days=i), 1.0, 2.0, 0.5, close, 100 + i)
        for i in range(5)
    )
    return DailySeries(
        symbol="IBM", last_refreshed="2026-11-26", time_zone="US/Eastern", prices=bars
    )


def test_daily_answer_has_the_contract_shape() -> None:
    body = json.loads(Renderer().daily(series(1.5), 2, "cache").body)
    assert body == {
        "symbol": "IBM",
        "last_refreshed": "2026-11-26",
        "time_zone": "US/Eastern",
        "source": "cache",
        "prices": [
            {
                "date": "2026-11-26",
                "open": 1.0,
                "high": 2.0,
                "low": 0.5,
                "close": 1.5,
                "volume": 100,
            },
            {
                "date": "2026-11-25",
                "open": 1.0,
                "high": 2.0,
                "low": 0.5,
                "close": 1.5,
                "volume": 101,
            },
        ],
    }


def test_the_same_value_is_rendered_once() -> None:
    renderer = Renderer()
    value = series(1.5)
    first = renderer.daily(value, 3, "cache")
    assert renderer.daily(value, 3, "cache") is first
    stale = renderer.daily(value, 3, "stale")
    assert stale is not first
    assert stale.etag != first.etag  # another body, another tag


def test_a_refreshed_value_is_rendered_anew() -> None:
    renderer = Renderer()
    old = renderer.daily(series(1.5), 3, "cache")
    new = renderer.daily(series(9.5), 3, "cache")
    assert json.loads(old.body)["prices"][0]["close"] == 1.5
    assert json.loads(new.body)["prices"][0]["close"] == 9.5
    assert old.etag != new.etag


def test_the_memo_is_bounded() -> None:
    renderer = Renderer(max_entries=3)
    value = series(1.5)
    for days in range(1, 6):
        renderer.daily(value, days, "cache")
    assert len(renderer._rendered) == 3


def test_quote_answer_carries_its_source() -> None:
    quote = Quote(
        symbol="MSFT",
        price=1.0,
        open=1.0,
        high=1.0,
        low=1.0,
        volume=1,
        latest_trading_day=dt.date(2026, 11, 26),
        previous_close=1.0,
        change=0.0,
        change_percent=0.0,
    )
    body = json.loads(Renderer().quote(quote, "stale").body)
    assert body["source"] == "stale"
    assert body["change_percent"] == 0.0
    assert body["latest_trading_day"] == "2026-11-26"


def test_csv_is_rendered_once_per_value_and_days() -> None:
    renderer = Renderer()
    value = series(1.5)
    body = renderer.daily_csv(value, 2)
    assert body.body == (
        b"date,open,high,low,close,volume\r\n"
        b"2026-11-26,1.0,2.0,0.5,1.5,100\r\n"
        b"2026-11-25,1.0,2.0,0.5,1.5,101\r\n"
    )
    assert renderer.daily_csv(value, 2) is body
    assert renderer.daily_csv(series(1.5), 2) is not body  # a refreshed value: rendered again
    assert renderer.daily_csv(value, 3) != body


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "json"),
        ("text/csv", "csv"),
        ("TEXT/CSV; charset=utf-8", "csv"),
        ("text/*;q=0.9, application/json;q=0.8", "csv"),
        ("text/csv;q=0.4, application/*;q=0.5", "json"),
        ("text/csv;q=0.8, */*;q=0.9", "json"),  # JSON by */*: the most specific range decides
        ("application/json;q=0, text/csv;q=0.1", "csv"),
        ("text/csv;q=abc", "json"),  # a malformed q counts as 0
        ("*/*", "json"),
        ("image/png", "json"),
    ],
)
def test_negotiate_follows_the_q_values(accept: str | None, chosen: str) -> None:
    assert negotiate(accept) == chosen


def test_the_entity_tag_is_strong_and_names_the_bytes() -> None:
    rendered = Renderer().daily(series(1.5), 2, "cache")
    assert rendered.etag == entity_tag(rendered.body)
    assert re.fullmatch(r'"[A-Za-z0-9_-]{16}"', rendered.etag)  # quoted, no W/ prefix
    assert entity_tag(rendered.body + b" ") != rendered.etag
