"""HTTP caching headers and conditional requests (app/http_caching.py), on their own."""

from __future__ import annotations

from email.utils import parsedate_to_datetime

import pytest

from app.http_caching import cache_control, cache_status, cached_answer, none_match
from app.rendering import Rendered, entity_tag
from app.service import Served

BODY = b'{"symbol": "IBM"}'
RENDERED = Rendered(BODY, entity_tag(BODY))
TAG = RENDERED.etag
JSON = b"application/json"
REPRESENTATION = [(b"content-type", JSON)]


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        (TAG, True),
        (f"W/{TAG}", True),  # If-None-Match compares weakly
        (f'"other", {TAG}', True),
        (f'"other",{TAG} , "third"', True),
        (f'W/"other", W/{TAG}', True),
        ("*", True),
        (" * ", True),
        ('"other"', False),
        (TAG.strip('"'), False),  # not an entity tag without its quotes
        (f'{TAG[:-2]}"', False),
    ],
)
def test_if_none_match_is_compared_weakly_and_accepts_lists_and_star(
    header: str | None, matches: bool
) -> None:
    assert none_match(header, TAG) is matches


def served(source: str, age: float, ttl: float, why: str | None = None) -> Served[object]:
    return Served(object(), source, age, ttl, why)  # type: ignore[arg-type]


def test_max_age_is_the_lifetime_and_age_says_how_much_is_used() -> None:
    # RFC 9111 4.2.3: a cache downstream takes max-age less Age as what is left.
    status, headers, body = cached_answer(
        served("cache", 100.4, 300), RENDERED, REPRESENTATION, private=False, if_none_match=None
    )
    fields = dict(headers)
    assert status == 200
    assert body == BODY
    assert fields[b"cache-control"] == b"public, max-age=300"
    assert fields[b"age"] == b"100"
    assert fields[b"cache-status"] == b"stock-service; hit; ttl=199"
    assert fields[b"etag"] == TAG.encode()
    assert fields[b"content-type"] == JSON
    assert fields[b"content-length"] == str(len(BODY)).encode()


def test_last_modified_is_when_the_data_was_fetched() -> None:
    _, headers, _ = cached_answer(
        served("cache", 60, 300),
        RENDERED,
        REPRESENTATION,
        private=False,
        if_none_match=None,
        now=1e9,
    )
    last_modified = parsedate_to_datetime(dict(headers)[b"last-modified"].decode())
    assert last_modified.timestamp() == 1e9 - 60
    assert str(last_modified.tzinfo) == "UTC"


def test_an_answer_just_fetched_says_it_was_forwarded_and_stored() -> None:
    assert cache_status(served("upstream", 0, 300)) == "stock-service; fwd=miss; stored; ttl=300"


def test_a_stale_answer_says_so_with_negative_freshness_and_why() -> None:
    stale = served("stale", 340.2, 300, "breaker_open")
    assert cache_status(stale) == "stock-service; hit; ttl=-41; detail=breaker_open"
    assert cache_control(stale, private=False) == "public, max-age=0, must-revalidate"


def test_consumers_make_answers_private() -> None:
    assert cache_control(served("cache", 0, 300), private=True) == "private, max-age=300"
    assert cache_control(served("stale", 400, 300), private=True) == (
        "private, max-age=0, must-revalidate"
    )


def test_a_matching_if_none_match_gets_304_without_a_body_or_its_metadata() -> None:
    status, headers, body = cached_answer(
        served("cache", 10, 300),
        RENDERED,
        REPRESENTATION,
        private=True,
        if_none_match=f'"x", {TAG}',
    )
    assert (status, body) == (304, b"")
    # RFC 9110 15.4.5: what a 200 would carry of ETag and Cache-Control; no content metadata.
    assert dict(headers) == {
        b"etag": TAG.encode(),
        b"cache-control": b"private, max-age=300",
        b"age": b"10",
        b"cache-status": b"stock-service; hit; ttl=290",
    }
