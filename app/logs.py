"""JSON logs, one object per line on stdout, with the request id and secrets masked."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# httpx logs every request URL, query string and so the API key included.
_APIKEY_PARAM = re.compile(r"(apikey=)[^&\s\"'<>]+", re.IGNORECASE)
_MASK = "***"
# One encoder for every line: json.dumps(..., default=str) would build a new one each time.
_encode = json.JSONEncoder(default=str).encode
# Attributes every record has; anything else on a record is an `extra` field worth logging.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


class JsonFormatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = tuple(secret for secret in secrets if secret)
        self._second = -1
        self._second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_FIELDS:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.mask(_encode(entry))

    def timestamp(self, created: float) -> str:
        # Every request logs a line: format the date and time once a second, not once a line.
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def mask(self, text: str) -> str:
        if "apikey=" in text.lower():
            text = _APIKEY_PARAM.sub(r"\1" + _MASK, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _MASK)
        return text


class JsonLinesHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stdout handler; it also takes access lines that are already formatted."""

    formatter: JsonFormatter

    def write_line(self, line: str) -> None:
        with self.lock:  # type: ignore[union-attr]
            self.stream.write(line + self.terminator)
            self.flush()


_access = logging.getLogger("app.access")
_ACCESS_LEVELS = {logging.DEBUG: "DEBUG", logging.INFO: "INFO"}


def log_request(
    level: int, method: str, route: str, path: str, status: int, duration_ms: float
) -> None:
    """One access line per request: the same JSON a record would give, built directly when
    our handler is in place, because a LogRecord, the formatter and the handler chain cost
    more than the rest of a cache hit. Anywhere else it is an ordinary log call."""
    if not _access.isEnabledFor(level):
        return
    root_handlers = logging.getLogger().handlers
    handler = root_handlers[0] if len(root_handlers) == 1 else None
    if not isinstance(handler, JsonLinesHandler) or level not in _ACCESS_LEVELS:
        _access.log(
            level,
            "%s %s %d",
            method,
            route,
            status,
            extra={"path": path, "status": status, "duration_ms": duration_ms},
        )
        return
    formatter = handler.formatter
    line = (
        f'{{"ts": "{formatter.timestamp(time.time())}", "level": "{_ACCESS_LEVELS[level]}", '
        f'"logger": "app.access", "msg": {_encode(f"{method} {route} {status}")}, '
        f'"request_id": {_encode(request_id.get())}, "path": {_encode(path)}, '
        f'"status": {status}, "duration_ms": {duration_ms!r}}}'
    )
    handler.write_line(formatter.mask(line))


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every logger, uvicorn's included, through one JSON handler on stdout."""
    # No caller, thread or process lookups per record: the JSON lines do not show them, and
    # the stack walk alone costs more than formatting (see "Optimization" in the logging HOWTO).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = JsonLinesHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Our middleware logs each request once; uvicorn's access log would say it again.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # httpx and httpcore log request URLs with the API key in them, even at INFO.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
