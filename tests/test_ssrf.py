"""The SSRF guard: requests (and redirects) to non-public addresses are refused before any
download, each refused child ends as one record saying why, and ALLOWED_NETWORKS lets named
networks through."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.misc import build_from_crawler
from scrapy.utils.test import get_crawler
from twisted.internet.error import DNSLookupError
from twisted.python.failure import Failure

from scraper.spiders.listing import ListingSpider
from scraper.ssrf import AddressPolicy, AddressRefused, SsrfGuard, address_kind, parse_networks
from scraper.testsite import render_child
from tests.helpers import (
    assert_children_recorded,
    crawl,
    read_jsonl,
    records,
    running_site,
    scrapy_crawl,
    store_settings,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.helpers import Site

LOOPBACK_ONLY = ["127.0.0.1/32"]


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata service
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("0.0.0.0", "unspecified"),  # connecting to it reaches this host on Linux
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation range
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("64:ff9b::808:808", None),  # NAT64 of 8.8.8.8
    ],
)
def test_address_kind(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("host", "addresses", "message"),
    [
        ("10.1.2.3", ["10.1.2.3"], "10.1.2.3 is a private address, not in ALLOWED_NETWORKS"),
        ("::1", ["::1"], "::1 is a loopback address, not in ALLOWED_NETWORKS"),
        ("0.0.0.0", ["0.0.0.0"], "0.0.0.0 is an unspecified address, not in ALLOWED_NETWORKS"),
        (
            "localhost",
            ["127.0.0.1"],
            "localhost resolves to 127.0.0.1, a loopback address not in ALLOWED_NETWORKS",
        ),
        # One non-public address among public ones is enough: the download may use any of them.
        (
            "mixed.example",
            ["8.8.8.8", "169.254.169.254"],
            "mixed.example resolves to 169.254.169.254, a link-local address not in "
            "ALLOWED_NETWORKS",
        ),
        ("public.example", ["8.8.8.8", "2606:4700:4700::1111"], None),
    ],
)
def test_refusal_message_names_the_host_and_the_address(
    host: str, addresses: list[str], message: str | None
) -> None:
    policy = AddressPolicy()
    assert policy.check(host, [ipaddress.ip_address(a) for a in addresses]) == message


@pytest.mark.parametrize(
    ("allowed", "address", "is_allowed"),
    [
        (["127.0.0.1/32"], "127.0.0.1", True),
        (["127.0.0.1/32"], "127.0.0.2", False),
        (["127.0.0.1/32"], "::ffff:127.0.0.1", True),  # the same address, IPv4-mapped
        (["127.0.0.1/32"], "::1", False),
        (["10.0.0.0/8"], "10.200.3.4", True),
        (["10.0.0.0/8"], "192.168.0.1", False),
        (["fd00::/8"], "fd00::5", True),
        (["fd00::/8"], "10.0.0.1", False),
        (["169.254.169.254"], "169.254.169.254", True),  # a bare address is a /32
        ([], "8.8.8.8", True),  # public addresses need no listing
    ],
)
def test_allowed_networks_let_their_addresses_through(
    allowed: list[str], address: str, is_allowed: bool
) -> None:
    policy = AddressPolicy(parse_networks(allowed))
    assert (policy.refusal(ipaddress.ip_address(address)) is None) == is_allowed


def test_a_bad_network_is_named() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not a network"):
        parse_networks(["127.0.0.1/32", " 10.0.0.0/33 "])
    assert parse_networks(["", " 10.1.2.3/8 "]) == [ipaddress.ip_network("10.0.0.0/8")]


def make_guard(allowed: list[str]) -> tuple[SsrfGuard, ListingSpider]:
    crawler = get_crawler(ListingSpider, settings_dict={"ALLOWED_NETWORKS": allowed})
    crawler.stats.open_spider()
    spider = crawler._create_spider(url="http://unused.test/")
    return build_from_crawler(SsrfGuard, crawler), spider


@deferred_f_from_coro_f
async def test_a_refused_child_link_ends_as_one_record_with_the_reason() -> None:
    """A child shares its list page's host (off-site links are skipped), so the crawl sees
    this for a list page whose host was allowed then, or in distributed mode; here the
    spider's own child request goes through the guard and the spider's errback."""
    guard, spider = make_guard([])
    cases = {
        "127.0.0.1:8347": "127.0.0.1 is a loopback address, not in ALLOWED_NETWORKS",
        "169.254.169.254": "169.254.169.254 is a link-local address, not in ALLOWED_NETWORKS",
        "10.1.2.3": "10.1.2.3 is a private address, not in ALLOWED_NETWORKS",
        "[::1]:8347": "::1 is a loopback address, not in ALLOWED_NETWORKS",
        "localhost:8347": (
            "localhost resolves to 127.0.0.1, a loopback address not in ALLOWED_NETWORKS"
        ),
    }
    for netloc, why in cases.items():
        listing = f"http://{netloc}/list"
        response = HtmlResponse(listing, body=b'<a href="/page/1">1</a>', request=Request(listing))
        [request] = spider.parse_list(response)
        with pytest.raises(AddressRefused) as refused:
            await guard.process_request(request)
        failure = Failure(refused.value)
        failure.request = request  # what Scrapy's scraper sets before calling the errback
        item = spider.child_failed(failure)
        assert item.url == f"http://{netloc}/page/1"
        assert item.error == f"AddressRefused: {why}"
        assert item.body is None and item.status is None
    assert spider.crawler.stats.get_value("ssrf/refused") == len(cases)


@deferred_f_from_coro_f
async def test_one_lookup_per_host_however_many_requests() -> None:
    guard, spider = make_guard(LOOPBACK_ONLY)
    requests = [Request(f"http://localhost:8347/page/{i}") for i in range(200)]
    results = await asyncio.gather(*(guard.process_request(r) for r in requests))
    assert results == [None] * 200  # allowed: 127.0.0.1/32
    await guard.process_request(Request("http://localhost:1/again"))
    stats = spider.crawler.stats
    assert stats.get_value("ssrf/hosts_resolved") == 1
    assert stats.get_value("ssrf/refused") is None


@deferred_f_from_coro_f
async def test_a_name_that_does_not_resolve_fails_as_a_dns_error_not_a_refusal() -> None:
    guard, spider = make_guard([])
    for _ in range(2):  # not cached: a retry looks it up again
        with pytest.raises(DNSLookupError, match=r"hostname lookup: nosuch\.invalid"):
            await guard.process_request(Request("http://nosuch.invalid/list"))
    assert spider.crawler.stats.get_value("ssrf/refused") is None


@pytest.fixture(scope="module")
def own_site(logs: Path) -> Iterator[Site]:
    """A test site of this module's own: its hit counter counts only these tests' requests."""
    with running_site(logs / "ssrf-site.log") as site:
        yield site


def port_of(site: Site) -> int:
    return site.server.port


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("{base}/list?n=5", "127.0.0.1 is a loopback address"),  # the test site itself
        ("http://localhost:{port}/list?n=5", "localhost resolves to 127.0.0.1, a loopback address"),
        ("http://[::1]:{port}/list?n=5", "::1 is a loopback address"),
        ("http://10.1.2.3/list", "10.1.2.3 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
    ],
)
@deferred_f_from_coro_f
async def test_a_refused_list_page_is_logged_and_never_fetched(
    own_site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture, url: str, why: str
) -> None:
    caplog.set_level(logging.INFO)
    url = url.format(base=own_site.base, port=port_of(own_site))
    own_site.stats(reset=True)
    started = time.monotonic()
    # DOWNLOAD_TIMEOUT=60: an attempted connection to an unroutable address would hang here.
    crawler = await crawl(url, ALLOWED_NETWORKS=[], DOWNLOAD_TIMEOUT=60, **store_settings(tmp_path))

    assert time.monotonic() - started < 30
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "checks_failed"  # ran to its end, stored nothing
    assert stats["ssrf/refused"] == 1 and stats["listing/list_failed"] == 1
    assert "downloader/request_count" not in stats  # refused before the downloader
    assert own_site.stats()["hits"] == 0
    assert f"List page {url} failed: AddressRefused: {why}" in caplog.text
    assert not (tmp_path / "meta.jsonl").exists() or not read_jsonl(tmp_path / "meta.jsonl")
    assert_children_recorded(stats, len(records(tmp_path)))


@deferred_f_from_coro_f
async def test_redirects_to_refused_addresses_each_end_as_one_record(
    own_site: Site, tmp_path: Path
) -> None:
    port = port_of(own_site)
    targets = {
        "http://10.1.2.3/admin": "10.1.2.3 is a private address",
        "http://169.254.169.254/latest/meta-data/iam/": "169.254.169.254 is a link-local address",
        f"http://[::1]:{port}/page/2": "::1 is a loopback address",
        f"http://0.0.0.0:{port}/page/3": "0.0.0.0 is an unspecified address",
        f"http://127.0.0.2:{port}/page/4": "127.0.0.2 is a loopback address",
        # Scrapy writes the host in its canonical form.
        f"http://[::ffff:127.0.0.3]:{port}/page/5": "::ffff:7f00:3 is a loopback address",
        "http://user:hunter2@192.168.1.1/": "192.168.1.1 is a private address",
    }
    allowed_target = f"{own_site.base}/page/7"
    hrefs = [f"/redirect?to={quote(t, safe='')}" for t in [*targets, allowed_target]]
    listing = f"{own_site.base}/links?{urlencode([('href', h) for h in hrefs])}"
    own_site.stats(reset=True)
    crawler = await crawl(listing, ALLOWED_NETWORKS=LOOPBACK_ONLY, **store_settings(tmp_path))

    docs = {d["url"]: d for d in read_jsonl(tmp_path / "meta.jsonl")}
    assert len(docs) == len(targets) + 1
    for target, why in targets.items():
        doc = docs[f"{own_site.base}/redirect?to={quote(target, safe='')}"]
        assert doc["error"] == f"AddressRefused: {why}, not in ALLOWED_NETWORKS", target
        assert doc["body_key"] is None and doc["status"] is None
    assert not any("hunter2" in d["error"] for d in docs.values() if d["error"])
    allowed = docs[f"{own_site.base}/redirect?to={quote(allowed_target, safe='')}"]
    assert allowed["error"] is None and allowed["final_url"] == allowed_target
    assert (tmp_path / "bodies" / allowed["body_key"]).read_bytes() == render_child(7)
    stats = crawler.stats.get_stats()
    assert stats["ssrf/refused"] == len(targets)
    # Fetched: the list page, every redirecting link, the one allowed target. Nothing else
    # (but the site's robots.txt, which the site counts apart).
    fetched = 1 + len(hrefs) + 1
    assert stats["downloader/request_count"] == fetched + 1
    assert own_site.stats()["hits"] == fetched
    assert own_site.stats()["robots_hits"] == 1
    assert_children_recorded(stats, len(read_jsonl(tmp_path / "meta.jsonl")))


@deferred_f_from_coro_f
async def test_a_name_in_an_allowed_network_is_crawled_with_one_lookup(
    own_site: Site, tmp_path: Path
) -> None:
    url = f"http://localhost:{port_of(own_site)}/list?n=200&per_page=50&page=1"
    crawler = await crawl(
        url, ALLOWED_NETWORKS=["127.0.0.0/8"], CONCURRENT_REQUESTS=50, **store_settings(tmp_path)
    )

    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert {d["url"] for d in docs} == {
        f"http://localhost:{port_of(own_site)}/page/{i}" for i in range(200)
    }
    assert all(d["status"] == 200 and d["error"] is None for d in docs)
    stats = crawler.stats.get_stats()
    assert stats["ssrf/hosts_resolved"] == 1
    assert "ssrf/refused" not in stats
    assert_children_recorded(stats, len(docs))


@deferred_f_from_coro_f
async def test_a_bad_allowed_networks_stops_the_crawl_before_any_request(
    own_site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own_site.stats(reset=True)
    crawler = await crawl(
        own_site.listing_url(5), ALLOWED_NETWORKS=["127.0.0.1/33"], **store_settings(tmp_path)
    )
    assert crawler.stats.get_value("finish_reason") == "allowed_networks_unusable"
    assert (
        "ALLOWED_NETWORKS unusable, crawl stopped: '127.0.0.1/33' is not a network "
        "(CIDR, e.g. 10.0.0.0/8 or fd00::/8)"
    ) in caplog.text
    assert own_site.stats()["hits"] == 0
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


@pytest.mark.parametrize(
    ("env", "stored"),
    [
        ("", 0),  # the default: loopback refused
        ("10.0.0.0/8, 127.0.0.1/32", 5),
    ],
)
def test_scrapy_crawl_reads_allowed_networks_from_the_environment(
    own_site: Site, tmp_path: Path, env: str, stored: int
) -> None:
    url = own_site.listing_url(5)
    result = scrapy_crawl(
        ["-a", f"url={url}"], cwd=tmp_path, env={"SCRAPER_ALLOWED_NETWORKS": env}, timeout=120
    )
    output = result.stdout + result.stderr
    # Nothing stored (the list page refused): a crawl that failed its checks, exit code 2.
    assert result.returncode == (0 if stored else 2), output[-3000:]
    stats = result.stats
    assert stats.get("meta_store/written", 0) == stored
    if stored:
        assert "ALLOWED_NETWORKS: 10.0.0.0/8, 127.0.0.1/32" in output
        assert "ssrf/refused" not in stats
    else:
        assert stats["ssrf/refused"] == 1
        assert (
            f"List page {url} failed: AddressRefused: 127.0.0.1 is a loopback address, "
            "not in ALLOWED_NETWORKS"
        ) in output
    assert_children_recorded(stats, len(records(tmp_path / "data")))
