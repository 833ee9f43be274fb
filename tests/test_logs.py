from __future__ import annotations

import json
import logging
import sys

import pytest

from app.logs import JsonFormatter, configure_logging, log_request, request_id


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


def test_access_lines_built_directly_match_what_the_formatter_would_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    token = request_id.set("req-9")
    try:
        configure_logging("INFO", secrets=["SECRET123"])
        log_request(logging.INFO, "GET", "/stock/{symbol}", '/stock/a"b', 200, 1.25)
        log_request(logging.INFO, "GET", "/stock/{symbol}", "/x?apikey=SECRET123", 404, 0.5)
        log_request(logging.DEBUG, "GET", "/healthz", "/healthz", 200, 0.1)  # below INFO
        fast = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    finally:
        request_id.reset(token)
        root.handlers[:], level = saved
        root.setLevel(level)

    formatter = JsonFormatter()
    token = request_id.set("req-9")
    try:
        slow = json.loads(
            formatter.format(
                record("%s %s %d", "GET", "/stock/{symbol}", 200, path='/stock/a"b', status=200)
            )
        )
    finally:
        request_id.reset(token)
    assert len(fast) == 2
    assert set(fast[0]) == {*slow, "duration_ms"}
    assert {key: fast[0][key] for key in slow if key != "ts"} == {
        **{key: value for key, value in slow.items() if key != "ts"},
        "logger": "app.access",
    }
    assert fast[0]["duration_ms"] == 1.25
    assert fast[1]["path"] == "/x?apikey=***"
