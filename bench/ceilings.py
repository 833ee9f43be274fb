"""Ceiling apps for `make stress-test`, answering the bytes of a cached /stock/IBM?days=30.

    raw   a raw ASGI app that sends the bytes as they are (the floor of any Python answer)
    bare  a bare FastAPI route that returns the same body through the same response model

The body comes from the file named by STRESS_BODY_FILE.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from app.models import DailyPrices

BODY = Path(os.environ["STRESS_BODY_FILE"]).read_bytes()
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]


async def raw(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


bare = FastAPI()
ANSWER: dict[str, Any] = json.loads(BODY)


@bare.get("/stock/{symbol}", response_model=DailyPrices)
async def stock(symbol: str, days: int = 30) -> dict[str, Any]:
    return ANSWER
