"""The status page at `/`: one HTML file, its stylesheet and its script, served from the
package (app/status_page/). The browser follows GET /circuit-breaker/events; nothing here
renders state."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

router = APIRouter(tags=["status page"], include_in_schema=False)

PAGE_DIR = Path(__file__).resolve().parent.parent / "status_page"
ASSETS = {"status.css": "text/css; charset=utf-8", "status.js": "text/javascript; charset=utf-8"}
# The page runs only its own script, styles itself only from its own sheet, talks only to
# this origin, and can be neither framed nor made to post its form anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Revalidated on every load (by ETag), so a new release never pairs the page with an old script.
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {
    **COMMON_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}


@router.get("/")
async def status_page() -> FileResponse:
    """The breakers, the budget and the last transitions, live in a browser."""
    return FileResponse(
        PAGE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=PAGE_HEADERS
    )


@router.get("/static/{name}")
async def status_page_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    return FileResponse(PAGE_DIR / name, media_type=media_type, headers=COMMON_HEADERS)
