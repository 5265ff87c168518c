"""ListingSpider's parsing, offline: what a list page yields, what is skipped and why."""

from __future__ import annotations

import gzip

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse, Response
from scrapy.utils.request import request_from_dict
from scrapy.utils.test import get_crawler

from scraper.spiders.listing import ListingSpider
from scraper.spiders.records import extract_title
from scraper.spiders.sitemap import SitemapPage, read_sitemap
from scraper.testsite import SKIPPED_LINKS, Listing, render_child, render_list
from scraper.urls import resolve

BASE = "http://site.test"


def make_spider(**kwargs: str) -> ListingSpider:
    crawler = get_crawler(
        ListingSpider, settings_dict={"META_HEADERS": ["Content-Type"], "LISTING_MAX_PAGES": 3}
    )
    crawler.stats.open_spider()
    return crawler._create_spider(**kwargs)


def list_response(listing: Listing, page: int) -> HtmlResponse:
    url = BASE + listing.query(page)
    return HtmlResponse(url, body=render_list(listing, page), request=Request(url))


@pytest.mark.parametrize(
    ("href", "expected"),
    [
        ("/page/1", (f"{BASE}/page/1", "ok")),
        ("page/2#frag", (f"{BASE}/list/page/2", "ok")),
        ("  /page/3  ", (f"{BASE}/page/3", "ok")),
        ("https://site.test/x", ("https://site.test/x", "ok")),
        *[(href, (None, reason)) for href, reason in SKIPPED_LINKS.items()],
        ("tel:+123", (None, "scheme")),
        ("http://site.test:99999/", (None, "unparsable")),
        (None, (None, "empty")),
    ],
)
def test_resolve(href: str | None, expected: tuple[str | None, str]) -> None:
    assert resolve(href, f"{BASE}/list/", "site.test") == expected


def test_list_page_yields_next_page_first_then_each_child_once() -> None:
    spider = make_spider(url=BASE + "/list")
    listing = Listing(250, 100, faults=True)
    out = list(spider.parse_list(list_response(listing, 1)))

    assert out[0].url == BASE + listing.query(2)
    assert out[0].callback == spider.parse_list and out[0].priority == 1
    children = out[1:]
    urls = [r.url for r in children]
    assert urls[:100] == [f"{BASE}/page/{i}" for i in range(100)]
    assert sorted(urls[100:]) == sorted(
        f"{BASE}/fault/{name}"
        for name in (
            "500",
            "404",
            "slow",
            "drip",
            "binary",
            "huge",
            "latin1",
            "redirect-loop",
            "redirect",
            "empty",
            "reset",
        )
    )
    assert len(set(urls)) == len(urls)
    for request in children:
        assert request.callback == spider.parse_child and request.errback == spider.child_failed
        assert request.cb_kwargs["listing_url"] == BASE + listing.query(1)
        fingerprint = spider.crawler.request_fingerprinter.fingerprint(request).hex()
        assert request.cb_kwargs["fingerprint"] == fingerprint
    stats = spider.crawler.stats.get_stats()
    assert stats["listing/children"] == 111
    assert {k.rsplit("/", 1)[1]: v for k, v in stats.items() if "links_skipped" in k} == {
        "fragment": 1,
        "scheme": 2,
        "offsite": 1,
        "unparsable": 1,
        "empty": 1,
        "duplicate": 1,
        "pager": 1,
    }


def test_malformed_list_page_still_gives_its_links() -> None:
    spider = make_spider(url=BASE + "/list")
    listing = Listing(250, 100, faults=True)
    out = list(spider.parse_list(list_response(listing, 3)))
    assert [r.url for r in out if r.callback == spider.parse_child] == [
        f"{BASE}/page/{i}" for i in range(200, 250)
    ]
    # Its rel="prev" link is pagination: page 2, a list page (this spider has not seen it).
    assert [r.url for r in out if r.callback == spider.parse_list] == [BASE + listing.query(2)]


def test_pagination_stops_at_listing_max_pages() -> None:
    spider = make_spider(url=BASE + "/list")
    listing = Listing(1000, 10)
    next_pages = []
    for page in range(1, 6):
        out = list(spider.parse_list(list_response(listing, page)))
        next_pages += [r.url for r in out if r.callback == spider.parse_list]
    assert len(next_pages) == 2  # LISTING_MAX_PAGES=3: pages 2 and 3 only
    assert spider.crawler.stats.get_value("listing/max_pages_reached") == 3


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"link_css": "a.fault"}, 11),
        ({"link_css": "a.fault::attr(href)"}, 11),
        ({"link_xpath": "//ul"}, 111),  # a region: every link inside it
        ({"link_xpath": "(//a[@class='child'])[position() <= 5]/@href"}, 5),
    ],
)
def test_link_css_and_xpath_narrow_the_children(kwargs: dict[str, str], expected: int) -> None:
    spider = make_spider(url=BASE + "/list", **kwargs)
    out = list(spider.parse_list(list_response(Listing(250, 100, faults=True), 1)))
    assert len([r for r in out if r.callback == spider.parse_child]) == expected


def test_child_requests_survive_a_round_trip_through_a_dict() -> None:
    spider = make_spider(url=BASE + "/list")
    for request in spider.parse_list(list_response(Listing(20, 10), 1)):
        copy = request_from_dict(request.to_dict(spider=spider), spider=spider)
        assert (copy.url, copy.callback, copy.errback, copy.cb_kwargs, copy.priority) == (
            request.url,
            request.callback,
            request.errback,
            request.cb_kwargs,
            request.priority,
        )


def test_child_item_has_meta_and_body() -> None:
    spider = make_spider(url=BASE + "/list")
    body = render_child(7)
    request = Request(
        f"{BASE}/page/7", cb_kwargs={"listing_url": BASE + "/list", "fingerprint": "ab" * 20}
    )
    response = HtmlResponse(
        request.url,
        body=body,
        request=request,
        status=200,
        headers={"Content-Type": "text/html; charset=utf-8"},
    )
    item = spider.parse_child(response, **request.cb_kwargs)
    assert item.fingerprint == "ab" * 20 and item.url == item.final_url == request.url
    assert item.status == 200 and item.body == body and item.length == len(body)
    assert item.title == "Child page 7"
    assert item.headers == {"Content-Type": "text/html; charset=utf-8"}
    assert item.error is None


def test_binary_child_has_no_title_but_keeps_its_body() -> None:
    spider = make_spider(url=BASE + "/list")
    request = Request(f"{BASE}/bin", cb_kwargs={"listing_url": "x", "fingerprint": "cd" * 20})
    response = Response(
        request.url,
        body=b"\x00\xff<title>no</title>",
        request=request,
        headers={"Content-Type": "application/octet-stream"},
    )
    item = spider.parse_child(response, **request.cb_kwargs)
    assert item.title is None and item.body == b"\x00\xff<title>no</title>"


@pytest.mark.parametrize(
    ("body", "encoding", "title"),
    [
        (b"<html><head><TITLE lang=en>  A &amp; B\n c </TITLE>", "utf-8", "A & B c"),
        ("<title>Café</title>".encode("latin-1"), "latin-1", "Café"),
        (b"<title></title>", "utf-8", None),
        (b"<html><body>no title</body></html>", "utf-8", None),
        (b"<title>\xff\xfe broken</title>", "utf-8", "\ufffd\ufffd broken"),
    ],
)
def test_extract_title(body: bytes, encoding: str, title: str | None) -> None:
    assert extract_title(body, encoding) == title


def test_concurrency_per_domain_follows_concurrent_requests() -> None:
    addon = {"ADDONS": {"scraper.addon.ListingCrawl": 0}}  # as in the project's settings
    crawler = get_crawler(ListingSpider, settings_dict={**addon, "CONCURRENT_REQUESTS": 1000})
    assert crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == 1000
    crawler = get_crawler(
        ListingSpider,
        settings_dict={**addon, "CONCURRENT_REQUESTS": 1000, "CONCURRENT_REQUESTS_PER_DOMAIN": 10},
    )
    assert crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == 10


def test_read_sitemap_tells_each_kind_and_says_why_it_cannot() -> None:
    urlset = (
        b'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<url><loc>https://x.test/a</loc></url><url><loc>/b</loc></url></urlset>"
    )
    robots = b"User-agent: *\nSitemap: https://x.test/s1.xml\nsitemap: /s2.xml.gz\n"

    def read(url: str, body: bytes) -> SitemapPage:
        return read_sitemap(Response(url, body=body), max_size=1 << 20)

    assert read("https://x.test/s.xml", urlset) == SitemapPage("urlset", ["https://x.test/a", "/b"])
    assert read("https://x.test/s.xml.gz", gzip.compress(urlset)).locs == [
        "https://x.test/a",
        "/b",
    ]
    assert read("https://x.test/robots.txt", robots) == SitemapPage(
        "robots", ["https://x.test/s1.xml", "https://x.test/s2.xml.gz"]
    )
    assert read("https://x.test/s.xml", b"<html>no</html>").error == (
        "not a sitemap (no <urlset> or <sitemapindex>)"
    )
    broken = read("https://x.test/s.xml.gz", gzip.compress(urlset)[:30])
    assert broken.kind is None and broken.error is not None
    assert broken.error.startswith("not a readable gzip file")
