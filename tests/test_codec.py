"""Requests through Redis are JSON: what goes in comes out, and nothing else gets in."""

from __future__ import annotations

import json
import pickle

import pytest
from scrapy import FormRequest, Request
from scrapy.utils.test import get_crawler

from scraper.distributed.codec import BadEntry, decode, encode, start_url
from scraper.spiders.listing import ListingSpider


@pytest.fixture
def spider() -> ListingSpider:
    return get_crawler(ListingSpider)._create_spider(url="http://x/list")


def test_a_request_comes_back_equal(spider: ListingSpider) -> None:
    request = Request(
        "http://x/page/1",
        callback=spider.parse_child,
        errback=spider.child_failed,
        cb_kwargs={"listing_url": "http://x/list", "fingerprint": "ab" * 20},
        priority=3,
        meta={"redirect_urls": ["http://x/a"], "_lease": "n:1"},
        headers={"X-Token": "v"},
        dont_filter=True,
    )
    text = encode(request, spider)
    assert json.loads(text).keys() == request.to_dict(spider=spider).keys()
    copy = decode(text, spider)
    assert (
        copy.url,
        copy.callback,
        copy.errback,
        copy.cb_kwargs,
        copy.priority,
        copy.dont_filter,
        copy.headers.get("X-Token"),
    ) == (request.url, spider.parse_child, spider.child_failed, request.cb_kwargs, 3, True, b"v")
    assert copy.meta == {"redirect_urls": ["http://x/a"]}  # node-local meta stays home


def test_subclasses_and_bodies_survive(spider: ListingSpider) -> None:
    form = FormRequest("http://x/search", formdata={"q": "é"}, callback=spider.parse_list)
    copy = decode(encode(form, spider), spider)
    assert type(copy) is FormRequest and copy.body == form.body and copy.method == "POST"


def test_a_callback_that_is_not_a_spider_method_is_refused(spider: ListingSpider) -> None:
    with pytest.raises(ValueError, match="not an instance method"):
        encode(Request("http://x/", callback=lambda r: None), spider)


@pytest.mark.parametrize(
    "entry",
    [
        pickle.dumps({"url": "http://x"}).decode("latin-1"),
        "{not json",
        "[1, 2]",
        json.dumps({"url": 5}),
        json.dumps({"url": "http://x", "callback": "no_such_method"}),
        json.dumps({"url": "http://x", "body": "***not base64***"}),
        "x" * 2_000_000,
    ],
)
def test_anything_else_is_a_bad_entry(spider: ListingSpider, entry: str) -> None:
    with pytest.raises(BadEntry):
        decode(entry, spider)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("http://x/list", ("http://x/list", {})),
        (' {"url": "https://x/l", "meta": {"a": 1}} ', ("https://x/l", {"a": 1})),
    ],
)
def test_start_urls_as_scrapy_redis_takes_them(entry: str, expected: tuple[str, dict]) -> None:
    assert start_url(entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        "ftp://x/",
        "not a url",
        "{oops",
        '{"url": 1}',
        '{"url": "http://x", "meta": []}',
        '{"url": "http://x", "meta": {"_lease": "n:1"}}',
        '{"url": "http://x", "meta": {"download_slot": "y"}}',
    ],
)
def test_bad_start_urls(entry: str) -> None:
    with pytest.raises(BadEntry):
        start_url(entry)
