"""GET /search: Alpha Vantage's SYMBOL_SEARCH, cached a day."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response

from app.deps import authenticate, bearer_token, get_resources
from app.gateway import MAX_KEYWORDS_LENGTH, normalise_keywords
from app.http_caching import cached_response
from app.models import SearchAnswer
from app.rendering import JSON
from app.routes.stock import ERRORS

router = APIRouter(tags=["stock"])
# Letters (any script), digits and the punctuation of company names: "AT&T", "L'Oréal",
# "Berkshire Hathaway Inc. (Class B)", "TSCO.LON", "BRK-B", "S&P 500".
KEYWORDS = re.compile(r"(?:[^\W_]|[ .,&'()/+-])+")
KEYWORDS_RULE = (
    f"must be 1 to {MAX_KEYWORDS_LENGTH} letters, digits, spaces or . , & ' ( ) / + - "
    "(case and spacing do not matter)"
)

Keywords = Annotated[
    str, Query(description="A company name or symbol, or its start: tesco, IBM, Micro")
]


@router.get("/search", response_model=SearchAnswer, responses=ERRORS)
async def search(keywords: Keywords, request: Request) -> Response:
    """Listings matching `keywords`, best first (`matches` empty when none does)."""
    normalised = normalise_keywords(keywords)
    if normalised is None or KEYWORDS.fullmatch(normalised) is None:
        raise HTTPException(422, f"keywords: {KEYWORDS_RULE}")
    resources = await get_resources(request)
    consumer = await authenticate(resources, bearer_token(request))
    served = await resources.service.search(normalised, consumer)
    return cached_response(
        request,
        served,
        resources.renderer.search(served.value, served.source),
        [(b"content-type", JSON.encode())],
        private=consumer is not None,
    )
