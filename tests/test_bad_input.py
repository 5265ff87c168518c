"""Bad input: generated list pages, endless pagination, list pages that are not what they
seem, bodies over DOWNLOAD_MAXSIZE without a Content-Length.

Already covered elsewhere, so not repeated here: a body over DOWNLOAD_MAXSIZE announced by
its Content-Length, a binary body, a non-UTF-8 body, a redirect loop, a slow-drip body
(DOWNLOAD_TIMEOUT), a reset connection, an empty body
(tests/test_crawl.py::test_fault_pages_each_end_as_one_record); a malformed list page
(tests/test_spider.py::test_malformed_list_page_still_gives_its_links).
"""

from __future__ import annotations

import html
import logging
import tempfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scrapy import Request
from scrapy.http import HtmlResponse
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scraper.spiders.listing import ListingSpider
from scraper.testsite import render_child
from scraper.urls import resolve
from tests.helpers import assert_children_recorded, crawl, read_jsonl, records, store_settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.helpers import Site

LINK_REASONS = {"ok", "empty", "fragment", "unparsable", "scheme", "offsite"}
#: Whole pages as examples are large and slow to build: hypothesis is told that is meant.
BIG_SLOW_EXAMPLES = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.large_base_example,
]


# --- Generated list pages ----------------------------------------------------------------------

_SEGMENT = st.lists(
    st.sampled_from(
        [
            *"abcXYZ09-_.~%/?&=#:;@!$'()*+, \t\"<>\\^`{|}",
            "é",
            "日本",
            "\u2603",
            "\u200b",
            "\x00",
            "\x7f",
            "%zz",
            "%2F",
            "..",
            "\ud7ff",
        ]
    ),
    max_size=12,
).map("".join)


def hrefs(host: str) -> st.SearchStrategy[str]:
    """What a list page's ``href`` may hold: relative and absolute links to ``host`` (a
    netloc: name or address, and port), other
    schemes and hosts, broken URLs, odd characters and whitespace."""
    absolute = st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["http", "https", "HTTP", "ftp", "javascript", "mailto", "data", "file"]),
        st.sampled_from(
            [
                host,
                host.upper(),
                "other.test",
                f"user:pw@{host}",
                f"{host}:99999",
                "[::1",
                "",
                "xn--n3h.test",
                f"{host}.",
            ]
        ),
        _SEGMENT,
    )
    odd = st.sampled_from(
        [
            "",
            " ",
            "#",
            "#top",
            "javascript:void(0)",
            "JavaScript:alert(1)",
            "mailto:a@b.c",
            "tel:+1",
            "//other.test/x",
            f"//{host}/y",
            "?",
            "?a=1",
            ".",
            "./",
            "..",
            "../..",
            "http://",
            "http:///x",
            "http:x",
            "\t/a\n",
            "data:text/html,hi",
            "%",
            "/%zz",
            "http://[::1]:80/",
            "/\u2603",
            "/\x00",
            "\\\\evil.test\\x",
            "/a b",
            "/a%20b",
            "/?q=1#frag",
            f"http://{host}/#",
            "about:blank",
            f"http://other.test#@{host}/",
            f"http://{host}@other.test/",
            f"http://{host}\\@other.test/",
        ]
    )
    plain = st.one_of(
        st.integers(0, 40).map("/item/{}".format),  # small range: duplicates
        st.integers(0, 40).map("item-{}?a=1&b=2".format),
        st.integers(0, 40).map(f"http://{host}/abs/{{}}#frag".format),
    )
    href = st.one_of(
        plain,
        plain,
        plain,
        _SEGMENT,
        _SEGMENT.map("/{}".format),
        _SEGMENT.map("../{}".format),
        absolute,
        odd,
        st.text(max_size=30),
    )
    space = st.sampled_from(["", " ", "\n\t "])
    return st.builds("{}{}{}".format, space, href, space)


_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "  ", "<", "&", "&amp;", "&#0;", "&#xD800;", "]]>", "<!--", "-->"]),
    st.integers(0, 100_000).map("x".__mul__),  # huge link text
)
_TAGS = [
    "div",
    "p",
    "ul",
    "li",
    "table",
    "tr",
    "td",
    "span",
    "b",
    "br",
    "img",
    "form",
    "nav",
    "script",
    "style",
    "textarea",
    "title",
    "head",
    "body",
    "html",
    "svg",
    "math",
    "template",
    "noscript",
    "iframe",
    "base",
    "meta",
    "!DOCTYPE html",
    "!--",
    "?xml",
]


@st.composite
def list_pages(draw: st.DrawFn, host: str) -> tuple[bytes, str]:
    """A list page (bytes, Content-Type): links among random tags, attributes, text and
    broken markup, in a random encoding, declared or not."""
    parts: list[str | bytes] = []
    for _ in range(draw(st.integers(0, 40))):
        kind = draw(
            st.sampled_from(["link", "link", "link", "pager", "tag", "close", "text", "bytes"])
        )
        if kind in ("link", "pager"):
            href = draw(hrefs(host))
            rel = draw(st.sampled_from(["next", "prev", "NEXT nofollow", "previous", ""]))
            attrs = (
                f' rel="{rel}"'
                if kind == "pager"
                else draw(st.sampled_from(["", ' class="child"', " data-x", ' rel="nofollow"']))
            )
            quoting = draw(st.sampled_from(["double", "single", "none", "raw"]))
            value = {
                "double": f'"{html.escape(href)}"',
                "single": f"'{html.escape(href)}'",
                "none": html.escape(href).replace(" ", "%20") or '""',
                "raw": f'"{href}"',
            }[quoting]
            tag = draw(st.sampled_from(["a", "a", "A", "link", "area"]))
            text = draw(_TEXT)
            close = draw(st.sampled_from([f"</{tag}>", "", "</a"]))
            parts.append(f"<{tag}{attrs} href={value}>{html.escape(text)}{close}")
        elif kind == "tag":
            tag = draw(st.sampled_from(_TAGS))
            attr = draw(
                st.sampled_from(
                    ["", ' class="x"', " a=b", " =", ' href="/t"', " onclick='x'", ' style="a:b"']
                )
            )
            parts.append(f"<{tag}{attr}>")
        elif kind == "close":
            parts.append(f"</{draw(st.sampled_from(_TAGS))}>")
        elif kind == "text":
            parts.append(draw(_TEXT))
        else:
            parts.append(draw(st.binary(max_size=20)))  # invalid bytes in the middle
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "cp1252", "shift_jis", "utf-16"]))
    body = b"".join(p if isinstance(p, bytes) else p.encode(encoding, "replace") for p in parts)
    content_type = draw(
        st.sampled_from(
            ["text/html", f"text/html; charset={encoding}", "text/html; charset=bogus-9"]
        )
    )
    return body, content_type


def make_spider() -> ListingSpider:
    crawler = get_crawler(ListingSpider, settings_dict={"LISTING_MAX_PAGES": 0})
    crawler.stats.open_spider()
    return crawler._create_spider(url="http://unused.test/")


def parse(spider: ListingSpider, url: str, page: tuple[bytes, str]) -> list[Request]:
    body, content_type = page
    response = HtmlResponse(
        url, body=body, headers={"Content-Type": content_type}, request=Request(url)
    )
    return list(spider.parse_list(response))


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    href=st.one_of(hrefs("site.test"), st.text()),
    page_url=st.sampled_from(
        [
            "http://site.test/list",
            "https://site.test:8443/a/b/?p=2#x",
            "http://SITE.test/",
            "http://site.test/%zz/é",
        ]
    ),
)
def test_resolve_never_raises_and_keeps_only_same_site_http(href: str, page_url: str) -> None:
    url, reason = resolve(href, page_url, urlsplit(page_url).hostname)
    assert reason in LINK_REASONS
    assert (url is not None) == (reason == "ok")
    if url is not None:
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https")
        assert parts.hostname == "site.test"
        assert "#" not in url


@pytest.mark.parametrize(
    "href", ["http://other.test\\@site.test/", "http://other.test\\x@site.test:80/p"]
)
def test_a_backslash_in_the_authority_does_not_take_a_link_off_site(href: str) -> None:
    spider = make_spider()
    out = parse(spider, "http://site.test/list", (f'<a href="{href}">x</a>'.encode(), "text/html"))
    assert all(urlsplit(r.url).hostname == "site.test" for r in out), [r.url for r in out]


@pytest.mark.parametrize(
    "body", [b'<a rel="next" href=0\r{></a><a href="/p/1">1</a>', b'<a href="/p/1" \x1f>1</a>']
)
def test_an_anchor_with_a_broken_attribute_name_does_not_lose_the_page(body: bytes) -> None:
    spider = make_spider()
    out = parse(spider, "http://site.test/list", (body, "text/html"))
    assert [r.url for r in out if r.callback == spider.parse_child] == ["http://site.test/p/1"]


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=BIG_SLOW_EXAMPLES,
)
@given(page=list_pages("site.test"))
def test_link_extraction_never_raises_and_yields_each_same_site_url_once(
    page: tuple[bytes, str],
) -> None:
    spider = make_spider()
    list_url = "http://site.test/shop/list?page=1"
    out = parse(spider, list_url, page)

    children = [r for r in out if r.callback == spider.parse_child]
    next_pages = [r for r in out if r.callback == spider.parse_list]
    assert len(children) + len(next_pages) == len(out)
    fingerprints = [r.cb_kwargs["fingerprint"] for r in children]
    assert len(set(fingerprints)) == len(fingerprints), [r.url for r in children]
    assert not {r.url for r in children} & {r.url for r in next_pages}
    for request in out:
        parts = urlsplit(request.url)
        assert parts.scheme in ("http", "https") and parts.hostname == "site.test"
        assert not parts.fragment
    stats = spider.crawler.stats.get_stats()
    assert stats.get("listing/children", 0) == len(children)


class PageServer:
    """A small HTTP server on 127.0.0.1 for pages a test makes up.

    ``pages[path] = (content_type, body)`` serves that body; ``streamed`` paths are sent
    without a Content-Length (the end of the body is the end of the connection); any other
    path answers 200 with a small HTML page naming it. ``hits`` counts requests by path.
    """

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, bytes]] = {}
        self.streamed: set[str] = set()
        self.hits: Counter[str] = Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits[self.path] += 1
                content_type, body = owner.pages.get(self.path) or (
                    "text/html",
                    b"<html><title>child</title>" + self.path.encode() + b"</html>",
                )
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if self.path not in owner.streamed:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 65536):
                        self.wfile.write(body[i : i + 65536])
                except OSError:
                    pass  # the crawler hung up (e.g. a body over DOWNLOAD_MAXSIZE)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    with PageServer() as server:
        yield server


@settings(
    max_examples=15,
    deadline=None,
    database=None,
    suppress_health_check=BIG_SLOW_EXAMPLES,
)
@given(data=st.data())
@deferred_f_from_coro_f  # pytest-twisted runs each example's Deferred on the reactor
async def test_every_discovered_link_of_a_generated_list_page_ends_as_one_record(
    pages: PageServer, data: st.DataObject
) -> None:
    page = data.draw(list_pages(urlsplit(pages.base).netloc))  # 127.0.0.1:port
    path = f"/list-{data.draw(st.integers(0, 10**9))}"
    pages.pages[path] = (page[1], page[0])
    list_url = pages.base + path
    # What the spider finds on it, offline; every one of these must end as one record.
    spider = make_spider()
    expected = {
        r.cb_kwargs["fingerprint"]: r.url
        for r in parse(spider, list_url, page)
        if r.callback == spider.parse_child
    }

    with tempfile.TemporaryDirectory() as folder:
        stores = store_settings(Path(folder))
        # Its children are mostly 404s, or none: CHECKS_ENABLED=False keeps it "finished"
        # (whether it is a good crawl is tests/test_checks.py's question).
        crawler = await crawl(
            list_url,
            LISTING_MAX_PAGES=1,
            RETRY_TIMES=0,
            DOWNLOAD_TIMEOUT=30,
            CHECKS_ENABLED=False,
            **stores,
        )
        docs = records(Path(folder))

    assert crawler.stats.get_value("finish_reason") == "finished"
    assert crawler.stats.get_value("listing/list_failed") is None
    assert len(docs) == len(expected)
    assert {d["fingerprint"]: d["url"] for d in docs} == expected
    assert_children_recorded(crawler.stats.get_stats(), len(docs))


@deferred_f_from_coro_f
async def test_a_list_page_linking_to_itself_counts_only_children_it_stores(
    pages: PageServer, tmp_path: Path
) -> None:
    pages.pages["/self-list"] = (
        "text/html",
        b'<a href="/self-list">this page</a><a href="/self-child">a child</a>',
    )
    crawler = await crawl(f"{pages.base}/self-list", **store_settings(tmp_path))
    assert crawler.stats.get_value("listing/children") == len(records(tmp_path))
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


# --- Endless pagination ------------------------------------------------------------------------


@deferred_f_from_coro_f
async def test_endless_pagination_stops_at_listing_max_pages(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    url = f"{site.base}/list?n=30&per_page=10&endless=1&page=1"
    crawler = await crawl(url, LISTING_MAX_PAGES=12, **store_settings(tmp_path))

    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    assert stats["listing/list_pages"] == 12
    assert stats["listing/max_pages_reached"] == 12
    assert "Pagination stopped at LISTING_MAX_PAGES=12 list pages" in caplog.text
    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert sorted(d["url"] for d in docs) == sorted(f"{site.base}/page/{i}" for i in range(30))
    assert_children_recorded(stats, len(docs))


# --- List pages and bodies that are not what they seem --------------------------------------

BINARY = bytes(range(256)) * 64


@deferred_f_from_coro_f
async def test_list_pages_that_give_no_links_say_so(
    pages: PageServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A binary list page, one over DOWNLOAD_MAXSIZE (with and without a Content-Length):
    each is logged as an error, counted, and the crawl finishes."""
    link = b'<a href="/page-linked-from-a-bad-list">x</a>'
    pages.pages["/bad-list/binary"] = ("application/octet-stream", link + BINARY)
    pages.pages["/bad-list/huge"] = ("text/html", link + b"<p>filler</p>" * 200_000)
    pages.pages["/bad-list/huge-streamed"] = pages.pages["/bad-list/huge"]
    pages.streamed.add("/bad-list/huge-streamed")
    caplog.set_level(logging.INFO)
    for name in ("binary", "huge", "huge-streamed"):
        url = f"{pages.base}/bad-list/{name}"
        crawler = await crawl(url, DOWNLOAD_MAXSIZE=2**20, **store_settings(tmp_path / name))
        stats = crawler.stats.get_stats()
        assert stats["finish_reason"] == "checks_failed", name  # it ran, stored nothing
        assert stats["checks/failed"] == 1, name  # CHECK_MIN_STORED
        assert "listing/children" not in stats, name
        assert not records(tmp_path / name), name
        assert_children_recorded(stats, len(records(tmp_path / name)))
        if name == "binary":
            assert stats["listing/list_not_html"] == 1
            assert (
                f"List page {url} is not HTML (b'application/octet-stream'): no links taken"
                in caplog.text
            )
        else:
            assert stats["listing/list_failed"] == 1, name
            assert f"List page {url} failed: " in caplog.text, name
    assert pages.hits["/page-linked-from-a-bad-list"] == 0


@deferred_f_from_coro_f
async def test_a_list_page_in_latin1_gives_its_non_ascii_links(
    pages: PageServer, tmp_path: Path
) -> None:
    body = '<html><a href="/caf\xe9/cr\xe8me">Caf\xe9</a> <a href="/\xe0-la">\xe0</a>'
    pages.pages["/latin1-list"] = ("text/html; charset=iso-8859-1", body.encode("latin-1"))
    crawler = await crawl(f"{pages.base}/latin1-list", **store_settings(tmp_path))

    docs = read_jsonl(tmp_path / "meta.jsonl")
    # Scrapy percent-encodes a link's path as UTF-8, whatever the page's encoding.
    assert {d["url"] for d in docs} == {
        f"{pages.base}/caf%C3%A9/cr%C3%A8me",
        f"{pages.base}/%C3%A0-la",
    }
    assert all(d["status"] == 200 and d["error"] is None for d in docs)
    assert pages.hits["/caf%C3%A9/cr%C3%A8me"] == 1
    assert_children_recorded(crawler.stats.get_stats(), len(docs))


@deferred_f_from_coro_f
async def test_a_child_over_download_maxsize_without_content_length_ends_as_one_record(
    pages: PageServer, tmp_path: Path
) -> None:
    """The body grows past DOWNLOAD_MAXSIZE while it arrives (no Content-Length to refuse
    it up front, unlike /fault/huge): the download is cut and the child still gets its
    record, with the error and no body."""
    pages.pages["/stream-list"] = (
        "text/html",
        b'<a href="/streamed-child">big</a><a href="/ok-child">ok</a>',
    )
    pages.pages["/streamed-child"] = ("text/html", render_child("big") * 100)  # ~3-5 MB
    pages.streamed.add("/streamed-child")
    crawler = await crawl(
        f"{pages.base}/stream-list",
        DOWNLOAD_MAXSIZE=2**20,
        RETRY_TIMES=0,
        **store_settings(tmp_path),
    )

    written = read_jsonl(tmp_path / "meta.jsonl")
    docs = {d["url"].rsplit("/", 1)[1]: d for d in written}
    assert set(docs) == {"streamed-child", "ok-child"}
    big = docs["streamed-child"]
    assert big["error"] and big["body_key"] is None
    assert docs["ok-child"]["error"] is None and docs["ok-child"]["body_key"]
    assert crawler.stats.get_value("listing/child_failed") == 1
    assert_children_recorded(crawler.stats.get_stats(), len(written))


@deferred_f_from_coro_f
async def test_a_streamed_child_over_download_maxsize_says_why(
    pages: PageServer, tmp_path: Path
) -> None:
    pages.pages["/stream-list-2"] = ("text/html", b'<a href="/streamed-child-2">big</a>')
    pages.pages["/streamed-child-2"] = ("text/html", render_child("big") * 100)
    pages.streamed.add("/streamed-child-2")
    crawler = await crawl(
        f"{pages.base}/stream-list-2",
        DOWNLOAD_MAXSIZE=2**20,
        RETRY_TIMES=0,
        **store_settings(tmp_path),
    )
    [doc] = records(tmp_path)
    assert "max size" in doc["error"], doc["error"]
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))
