from __future__ import annotations

import json
import logging
import sys

import pytest

from app.logs import JsonFormatter, configure_logging, request_id


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    return logging.makeLogRecord(
        {"name": "t", "levelname": "INFO", "levelno": 20, "msg": msg, "args": args, **extra}
    )


def test_one_json_object_per_line_with_request_id_and_extras() -> None:
    token = request_id.set("req-1")
    try:
        line = JsonFormatter().format(record("hello %s", "world", symbol="IBM"))
    finally:
        request_id.reset(token)
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["msg"] == "hello world"
    assert entry["request_id"] == "req-1"
    assert entry["symbol"] == "IBM"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "t"
    assert entry["ts"].endswith("+00:00")


def test_exceptions_are_logged_on_the_same_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        line = JsonFormatter().format(record("failed", exc_info=sys.exc_info()))
    entry = json.loads(line)
    assert "ValueError: bad" in entry["exc"]


@pytest.mark.parametrize(
    "message",
    [
        "HTTP Request: GET https://www.alphavantage.co/query?function=X&symbol=IBM"
        "&apikey=SECRET123 200",
        "GET /query?apikey=SECRET123&symbol=IBM",
        "key is SECRET123 here",
        "APIKEY=SECRET123",
    ],
)
def test_the_key_is_masked_wherever_it_appears(message: str) -> None:
    line = JsonFormatter(secrets=["SECRET123"]).format(record(message))
    assert "SECRET123" not in line
    assert "***" in line


def test_httpx_stays_quiet_even_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("DEBUG", secrets=["SECRET123"])
        assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING
        assert logging.getLogger("httpcore").getEffectiveLevel() >= logging.WARNING
        logging.getLogger("app.test").debug("apikey=SECRET123")
        out = capsys.readouterr().out
        assert json.loads(out)["msg"] == "apikey=***"
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
