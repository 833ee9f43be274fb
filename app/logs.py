"""JSON logs, one object per line on stdout, with the request id and secrets masked."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# httpx logs every request URL, query string and so the API key included.
_APIKEY_PARAM = re.compile(r"(apikey=)[^&\s\"'<>]+", re.IGNORECASE)
_MASK = "***"
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

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self.mask(json.dumps(entry, default=str))

    def mask(self, text: str) -> str:
        text = _APIKEY_PARAM.sub(r"\1" + _MASK, text)
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Send every logger, uvicorn's included, through one JSON handler on stdout."""
    handler = logging.StreamHandler(sys.stdout)
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
