"""Sites that push back (429/503 with Retry-After) and robots.txt, against the real test site."""

from __future__ import annotations

import json
import logging
import time
import urllib.request
from email.utils import formatdate
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import pytest
from scrapy import Request, signals
from scrapy.core.downloader import Slot
from scrapy.crawler import Crawler
from scrapy.http import Response
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scraper.politeness import RetryAfterMiddleware, parse_retry_after
from scraper.spiders.listing import ListingSpider
from scraper.testsite import Listing, render_child
from tests.helpers import (
    Site,
    assert_children_recorded,
    crawl,
    project_settings,
    read_jsonl,
    records,
    running_site,
    scrapy_crawl,
    store_settings,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LATENCY = 0.1  # the site's answer time: requests sent before a 429 arrive before it is read


@pytest.fixture(scope="module")
def polite_site(logs: Path) -> Iterator[Site]:
    """A test site of its own (its counters and arrival times are this module's alone)."""
    with running_site(logs / "polite-site.log", "--latency-ms", str(LATENCY * 1000)) as site:
        yield site


def links_page(site: Site, hrefs: list[str]) -> str:
    return f"{site.base}/links?{urlencode([('href', h) for h in hrefs])}"


def arrivals(site: Site, **query: str) -> list[dict[str, Any]]:
    """Server-side arrival times (time.time() on the site) of requests, oldest first."""
    with urllib.request.urlopen(f"{site.base}/_hits?{urlencode(query)}", timeout=10) as r:
        return json.loads(r.read())["hits"]  # type: ignore[no-any-return]


def docs_by_url(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {d["url"]: d for d in read_jsonl(tmp_path / "meta.jsonl")}


async def crawl_watching_slots(url: str, **settings: Any) -> tuple[Crawler, dict[str, Any]]:
    """Crawl, and note each downloader slot's values and the middleware's state at close."""
    crawler = Crawler(ListingSpider, project_settings(**settings))
    seen: dict[str, Any] = {}

    def closed() -> None:
        assert crawler.engine is not None
        downloader = crawler.engine.downloader
        seen["slots"] = {
            key: (slot.delay, slot.concurrency, slot.jitter)
            for key, slot in downloader.slots.items()
        }
        seen["slowed"] = next(
            dict(mw.slowed)
            for mw in downloader.middleware.middlewares
            if isinstance(mw, RetryAfterMiddleware)
        )

    crawler.signals.connect(closed, signal=signals.spider_closed)
    await crawler.crawl_async(url=url)
    return crawler, seen


@deferred_f_from_coro_f
async def test_429_with_retry_after_slows_the_site_then_retries_and_recovers(
    polite_site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    polite_site.stats(reset=True)
    busy = "/page/0?push_back=429&retry_after=2&times=1"
    hrefs = [busy, *(f"/page/{i}" for i in range(1, 30))]
    crawler, seen = await crawl_watching_slots(
        links_page(polite_site, hrefs), CONCURRENT_REQUESTS=4, **store_settings(tmp_path)
    )

    # From the server's side: the 429, then the retry no earlier than 2 s after it was sent,
    # and nothing at all from the crawler in between (the whole site waited, not just the
    # retry) but the requests already on their way when the crawler read the 429 (0.5 s:
    # room for a busy machine; unslowed, 4 requests would arrive every 0.1 s).
    first, retry = arrivals(polite_site, path=busy)
    answered = first["t"] + LATENCY
    assert retry["t"] - answered >= 2.0
    others = [h for h in arrivals(polite_site, prefix="/page/") if h["path"] != busy]
    assert not [h for h in others if answered + 0.5 < h["t"] < answered + 2.0]
    assert len(others) == 29  # every other page fetched once

    docs = docs_by_url(tmp_path)
    assert len(docs) == 30
    doc = docs[polite_site.base + busy]
    assert (doc["status"], doc["error"]) == (200, None)
    assert (tmp_path / "bodies" / doc["body_key"]).read_bytes() == render_child("0")
    assert len(read_jsonl(tmp_path / "meta.jsonl")) == 30  # stored once
    stats = crawler.stats.get_stats()
    assert stats["politeness/retry_after/received"] == 1
    assert stats["politeness/retry_after/retried"] == 1
    assert stats["politeness/retry_after/max_seconds"] == 2
    assert stats["politeness/slowed"] == 1
    assert stats["politeness/recovered"] == 1
    assert "politeness/retry_after/gave_up" not in stats
    assert "retry/count" not in stats  # RetryMiddleware did not retry it as well
    # The slot is back to its own values: no delay, concurrency 4 (follows
    # CONCURRENT_REQUESTS), Scrapy's default jitter.
    assert seen["slots"] == {"127.0.0.1": (0.0, 4, 0.5)}
    assert seen["slowed"] == {}
    assert (
        "Politeness: 127.0.0.1 answered 429, Retry-After 2 s: nothing sent to it for 2 s, "
        "then delay 2.0 s and concurrency 2 until it recovers"
    ) in caplog.text
    assert "Politeness: 127.0.0.1 recovered: delay 0.0 s, concurrency 4 again" in caplog.text
    assert_children_recorded(stats, len(records(tmp_path)))


@deferred_f_from_coro_f
async def test_503_with_retry_after_is_retried_after_the_wait(
    polite_site: Site, tmp_path: Path
) -> None:
    polite_site.stats(reset=True)
    busy = "/page/5?push_back=503&retry_after=1&times=2"
    crawler = await crawl(links_page(polite_site, [busy, "/page/6"]), **store_settings(tmp_path))

    hits = [h["t"] for h in arrivals(polite_site, path=busy)]
    assert len(hits) == 3  # two 503s, then the page
    assert hits[1] - hits[0] >= 1.0 + LATENCY and hits[2] - hits[1] >= 1.0 + LATENCY
    doc = docs_by_url(tmp_path)[polite_site.base + busy]
    assert (doc["status"], doc["error"]) == (200, None)
    stats = crawler.stats.get_stats()
    assert stats["politeness/retry_after/retried"] == 2
    assert "retry/count" not in stats
    assert stats["meta_store/written"] == 2
    assert_children_recorded(stats, len(records(tmp_path)))


@deferred_f_from_coro_f
async def test_a_wait_over_retry_after_max_ends_as_a_record_without_a_retry(
    polite_site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    polite_site.stats(reset=True)
    busy = "/page/7?push_back=429&retry_after=600&times=5"
    started = time.monotonic()
    crawler = await crawl(links_page(polite_site, [busy]), **store_settings(tmp_path))

    assert time.monotonic() - started < 10  # nobody waited the 600 s (or RETRY_AFTER_MAX)
    assert len(arrivals(polite_site, path=busy)) == 1  # no retry storm: one request
    doc = docs_by_url(tmp_path)[polite_site.base + busy]
    assert (doc["status"], doc["error"], doc["body_key"]) == (429, "HTTP 429", None)
    stats = crawler.stats.get_stats()
    assert stats["politeness/retry_after/gave_up"] == 1
    assert stats["politeness/retry_after/max_seconds"] == 600
    assert "politeness/retry_after/retried" not in stats and "retry/count" not in stats
    assert (
        f"Politeness: gave up on {polite_site.base}{busy}: asked to wait 600 s, over "
        "RETRY_AFTER_MAX=300"
    ) in caplog.text
    assert_children_recorded(stats, len(records(tmp_path)))


@deferred_f_from_coro_f
async def test_out_of_its_budget_a_push_back_ends_as_a_record(
    polite_site: Site, tmp_path: Path
) -> None:
    polite_site.stats(reset=True)
    busy = "/page/8?push_back=429&retry_after=0&times=10"
    crawler = await crawl(
        links_page(polite_site, [busy]), RETRY_AFTER_TIMES=2, **store_settings(tmp_path)
    )

    assert len(arrivals(polite_site, path=busy)) == 3  # the first try and 2 retries
    doc = docs_by_url(tmp_path)[polite_site.base + busy]
    assert (doc["status"], doc["error"]) == (429, "HTTP 429")
    stats = crawler.stats.get_stats()
    assert stats["politeness/retry_after/retried"] == 2
    assert stats["politeness/retry_after/gave_up"] == 1
    assert "retry/count" not in stats
    assert_children_recorded(stats, len(records(tmp_path)))


@deferred_f_from_coro_f
async def test_robots_txt_is_obeyed_by_default(polite_site: Site, tmp_path: Path) -> None:
    polite_site.stats(reset=True)
    url = polite_site.base + Listing(5, 10, private=3).query(1)
    crawler = await crawl(url, **store_settings(tmp_path))

    docs = docs_by_url(tmp_path)
    assert len(docs) == 8
    for i in range(3):
        doc = docs[f"{polite_site.base}/private/{i}"]
        assert doc["error"] == "IgnoreRequest: Forbidden by robots.txt"
        assert doc["status"] is None and doc["body_key"] is None
    for i in range(5):
        doc = docs[f"{polite_site.base}/page/{i}"]
        assert doc["status"] == 200 and doc["error"] is None
        assert (tmp_path / "bodies" / doc["body_key"]).read_bytes() == render_child(i)
    site_stats = polite_site.stats()
    assert site_stats["private_hits"] == 0  # never fetched
    assert site_stats["robots_hits"] == 1
    assert arrivals(polite_site, prefix="/private/") == []
    stats = crawler.stats.get_stats()
    assert stats["robotstxt/forbidden"] == 3
    assert stats["robotstxt/request_count"] == 1
    assert_children_recorded(stats, len(records(tmp_path)))


def test_robots_txt_off_on_the_command_line_fetches_them(polite_site: Site, tmp_path: Path) -> None:
    polite_site.stats(reset=True)
    url = polite_site.base + Listing(5, 10, private=3).query(1)
    result = scrapy_crawl(
        ["-a", f"url={url}", "-s", "ROBOTSTXT_OBEY=False"], cwd=tmp_path, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    docs = {d["url"]: d for d in read_jsonl(tmp_path / "data" / "meta.jsonl")}
    assert len(docs) == 8
    assert all(d["status"] == 200 and d["error"] is None for d in docs.values())
    site_stats = polite_site.stats()
    assert (site_stats["private_hits"], site_stats["robots_hits"]) == (3, 0)
    assert "robotstxt/forbidden" not in result.stats
    assert_children_recorded(result.stats, len(records(tmp_path / "data")))


@deferred_f_from_coro_f
async def test_a_distributed_node_retries_under_the_same_lease(
    polite_site: Site, tmp_path: Path, redis_url: str
) -> None:
    import redis

    polite_site.stats(reset=True)
    busy = "/page/9?push_back=429&retry_after=1&times=1"
    crawler = await crawl(
        links_page(polite_site, [busy, "/page/10"]),
        REDIS_URL=redis_url,
        REDIS_IDLE_TIMEOUT=5,
        **store_settings(tmp_path),
    )

    assert len(arrivals(polite_site, path=busy)) == 2
    docs = docs_by_url(tmp_path)
    assert docs[polite_site.base + busy]["status"] == 200
    assert len(docs) == 2
    stats = crawler.stats.get_stats()
    assert stats["politeness/retry_after/retried"] == 1
    assert_children_recorded(stats, len(records(tmp_path)))
    client = redis.Redis.from_url(redis_url)
    try:  # everything acknowledged: nothing left queued, leased or dead
        assert client.zcard("listing:requests") == client.hlen("listing:leased") == 0
        assert not client.exists("listing:dead")
    finally:
        client.close()


# -- offline --------------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "date", "expected"),
    [
        (b"120", None, 120.0),
        ("0", None, 0.0),
        (" 7 ", None, 7.0),
        (formatdate(NOW + 30, usegmt=True), None, 30.0),  # measured from our clock...
        # ...or from the response's Date, so a server clock that is off does not matter.
        (formatdate(NOW + 3600 + 30, usegmt=True), formatdate(NOW + 3600, usegmt=True), 30.0),
        (formatdate(NOW - 30, usegmt=True), None, 0.0),  # in the past: at once
        (None, None, None),
        ("", None, None),
        ("soon", None, None),
        ("-5", None, None),
        ("1.5", None, None),
        ("Fri, 32 Nov 2026 99:00:00 GMT", None, None),
        ("Fri, 27 Nov 2026 17:00:00", None, None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(
    value: str | bytes | None, date: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, date, now=NOW) == expected


def middleware(**settings: Any) -> RetryAfterMiddleware:
    crawler = get_crawler(
        ListingSpider, settings_dict={**project_settings().copy_to_dict(), **settings}
    )
    crawler.stats.open_spider()
    crawler.spider = crawler._create_spider(url="http://site.test/")
    return RetryAfterMiddleware(crawler)


@pytest.mark.parametrize(
    ("status", "header", "expected"),
    [
        (429, b"3", 3.0),
        (429, None, 5.0),  # RETRY_AFTER_DEFAULT
        (429, b"garbage", 5.0),
        (503, b"3", 3.0),
        (503, None, None),  # left to RetryMiddleware
        (503, b"garbage", None),
        (500, b"3", None),
        (200, b"3", None),
    ],
)
def test_which_answers_are_push_back(
    status: int, header: bytes | None, expected: float | None
) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    response = Response("http://site.test/a", status=status, headers=headers)
    assert middleware().wait_for(response) == expected


def test_the_retry_keeps_meta_and_retry_middlewares_own_count() -> None:
    mw = middleware()
    request = Request(
        "http://site.test/a",
        meta={"_lease": "node1:42", "retry_times": 1, "_retry_after_wait": 2.0},
    )
    retry = mw.process_response(request, Response(request.url, status=429), None)
    assert isinstance(retry, Request)
    assert retry.meta["_lease"] == "node1:42"  # distributed mode: the same lease
    assert retry.meta["retry_times"] == 1  # RetryMiddleware's budget untouched
    assert retry.meta["retry_after_times"] == 1
    assert retry.dont_filter and "_retry_after_wait" not in retry.meta
    for _ in range(4):
        retry.meta["_retry_after_wait"] = 2.0
        retry = mw.process_response(retry, Response(request.url, status=429), None)
        assert isinstance(retry, Request)
    assert retry.meta["retry_after_times"] == 5
    retry.meta["_retry_after_wait"] = 2.0
    last = Response(request.url, status=429)
    assert mw.process_response(retry, last, None) is last  # out of budget: the response
    assert retry.meta["dont_retry"] is True


def test_a_second_push_back_while_recovering_keeps_the_slots_own_values() -> None:
    mw = middleware()
    slot = Slot(8, 0.0, 0.5)
    mw.crawler.engine = SimpleNamespace(downloader=SimpleNamespace(slots={"site": slot}))

    def answer(status: int, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after else {}
        request = Request("http://site.test/a", meta={"download_slot": "site"})
        mw._response_downloaded(Response(request.url, status=status, headers=headers), request)

    def wait_over() -> None:
        mw.slowed["site"].until = 0.0  # as if the stated time had passed

    answer(429, "2")
    assert (slot.delay, slot.concurrency, slot.jitter) == (2.0, 4, 0.0)
    answer(429, "1")  # the same burst: the wait stands, concurrency is not halved again
    assert (slot.delay, slot.concurrency) == (2.0, 4)
    answer(200)  # sent before the push-back: not a sign of recovery
    assert slot.delay == 2.0
    wait_over()
    answer(200)
    answer(200)
    assert (slot.delay, slot.concurrency) == (1.0, 4)
    answer(429, "3")  # pushed back again, later: slower still, from the slowed values
    assert (slot.delay, slot.concurrency, slot.jitter) == (3.0, 2, 0.0)
    wait_over()
    for _ in range(2 * 20):
        answer(200)
    # Back to its own values, not to those it had when the second 429 came.
    assert (slot.delay, slot.concurrency, slot.jitter) == (0.0, 8, 0.5)
    assert mw.slowed == {}
    stats = mw.crawler.stats.get_stats()
    assert (stats["politeness/slowed"], stats["politeness/recovered"]) == (2, 1)
    assert stats["politeness/retry_after/received"] == 3
