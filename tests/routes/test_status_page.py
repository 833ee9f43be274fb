"""GET / and its two files (app/routes/status_page.py, app/status_page/), read as a browser
would fetch them. What the page shows is tested in Chromium: tests/test_status_page_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx

from tests.helpers import error_detail

PAGE_BUDGET_BYTES = 32 * 1024  # the page, its script and its stylesheet together


class PageReader(HTMLParser):
    """What a page loads and runs: its scripts, stylesheets, links, and any inline code."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str | None] = []  # src, None for an inline script
        self.stylesheets: list[str] = []
        self.links: list[str] = []
        self.inline_code: list[str] = []  # on* handlers and style attributes or elements
        self._in_noscript = False
        self.noscript_links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.inline_code += [f"{tag} {name}" for name in attributes if name.startswith("on")]
        if "style" in attributes or tag == "style":
            self.inline_code.append(f"{tag} style")
        if tag == "script":
            self.scripts.append(attributes.get("src"))
        elif tag == "link" and attributes.get("rel") == "stylesheet":
            self.stylesheets.append(attributes["href"] or "")
        elif tag in {"a", "link", "img", "form"}:
            url = attributes.get("href") or attributes.get("src") or attributes.get("action")
            if url:
                (self.noscript_links if self._in_noscript else self.links).append(url)
        if tag == "noscript":
            self._in_noscript = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "noscript":
            self._in_noscript = False


async def read_page(api: httpx.AsyncClient) -> tuple[httpx.Response, PageReader]:
    response = await api.get("/")
    assert response.status_code == 200, response.text
    reader = PageReader()
    reader.feed(response.text)
    return response, reader


def csp_directives(response: httpx.Response) -> dict[str, str]:
    policy = response.headers["content-security-policy"]
    pairs = (d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    return {name: value for name, value in pairs}


async def test_the_page_is_html_with_a_strict_content_security_policy(
    api: httpx.AsyncClient,
) -> None:
    response, _ = await read_page(api)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = csp_directives(response)
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'"  # no inline script, no eval, nothing from elsewhere
    assert csp["style-src"] == "'self'"
    assert csp["connect-src"] == "'self'"  # the event stream and /consumers, nothing else
    assert csp["form-action"] == "'none'"  # the admin token form never posts
    assert csp["frame-ancestors"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_the_page_runs_only_its_own_files(api: httpx.AsyncClient) -> None:
    _, page = await read_page(api)
    assert page.scripts == ["/static/status.js"]
    assert page.stylesheets == ["/static/status.css"]
    assert page.inline_code == []
    for url in [*page.scripts, *page.stylesheets, *page.links, *page.noscript_links]:
        assert url is not None
        assert not re.match(r"([a-z]+:)?//", url), f"{url}: an external asset"


async def test_without_javascript_the_page_points_at_the_json_endpoints(
    api: httpx.AsyncClient,
) -> None:
    _, page = await read_page(api)
    assert "/circuit-breaker" in page.noscript_links
    for path in page.noscript_links:
        assert (await api.get(path)).status_code == 200


async def test_every_file_the_page_loads_is_served_small(api: httpx.AsyncClient) -> None:
    response, page = await read_page(api)
    total = len(response.content)
    content_types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
    for url in [*page.scripts, *page.stylesheets]:
        assert url is not None
        asset = await api.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["content-type"] == content_types[url[url.rindex(".") :]]
        assert asset.headers["x-content-type-options"] == "nosniff"
        assert asset.headers["cache-control"] == "no-cache"  # revalidated: never a stale script
        assert asset.headers["etag"]
        total += len(asset.content)
    assert total < PAGE_BUDGET_BYTES


async def test_the_script_follows_the_event_stream(api: httpx.AsyncClient) -> None:
    script = (await api.get("/static/status.js")).text
    assert 'new EventSource("/circuit-breaker/events")' in script
    # The admin token travels in a header from session storage, never in a URL or local storage.
    assert "localStorage" not in script
    assert "Authorization: `Bearer ${token}`" in script


async def test_an_unknown_asset_is_404_and_nothing_else_is_served(api: httpx.AsyncClient) -> None:
    for path in ["/static/nope.js", "/static/index.html", "/static/..%2Fmain.py"]:
        error_detail(await api.get(path), 404)
