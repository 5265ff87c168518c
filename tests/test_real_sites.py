"""Listings shaped like real sites (scraper/testsite_shapes.py), crawled as a new user would:
no option where the page says what its pagination is, one obvious option where it does not."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.testsite import Listing, render_child
from scraper.testsite_shapes import IDIOM, Expected, canonical_of, expected, root
from tests.helpers import Node, assert_children_recorded, crawl, records, store_settings

if TYPE_CHECKING:
    from pathlib import Path

    from scrapy.crawler import Crawler

    from tests.helpers import Site


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def hits(site: Site, prefix: str) -> list[str]:
    """The paths the site was asked for under ``prefix``, as it saw them."""
    with urllib.request.urlopen(f"{site.base}/_hits?prefix={prefix}", timeout=10) as r:
        return [hit["path"] for hit in json.loads(r.read())["hits"]]


def assert_crawled(
    site: Site, folder: Path, crawler: Crawler, want: Expected, prefix: str
) -> list[dict[str, Any]]:
    """Every child stored once with the bytes the site served, every list page fetched
    once, no list page stored as a child; ``listing/children`` == records."""
    docs = records(folder)
    paths = [path_of(d["url"]) for d in docs]
    assert sorted(paths) == sorted(want.children), sorted(set(paths) ^ want.children)
    for doc in docs:
        assert doc["status"] == 200 and doc["error"] is None, doc
        if doc.get("duplicate_of") is None:
            body = (folder / "bodies" / doc["body_key"]).read_bytes()
            path = path_of(doc["url"])
            assert body == render_child(path, canonical=canonical_of(path))
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    asked = hits(site, prefix)
    list_hits = [p for p in asked if p in want.list_pages]
    assert sorted(list_hits) == sorted(want.list_pages)  # each list page once
    assert stats.get("listing/list_pages", 0) + stats.get("listing/sitemaps", 0) == len(
        want.list_pages
    )
    assert_children_recorded(stats, len(docs))
    return docs


SHAPES = [
    ("bookshop", 95, 20),
    ("blog", 130, 10),
    ("shop", 120, 24),
    ("numbered", 110, 10),
    ("offsets", 75, 15),
    ("api", 60, 10),
    ("catalog", 70, 10),
    ("feed", 50, 10),
]


@pytest.mark.parametrize(("shape", "n", "per_page"), SHAPES)
@deferred_f_from_coro_f
async def test_each_pagination_idiom_is_followed_with_no_option(
    site: Site, tmp_path: Path, shape: str, n: int, per_page: int
) -> None:
    want = expected(shape, n, per_page)
    crawler = await crawl(site.base + want.start, **store_settings(tmp_path))

    assert_crawled(site, tmp_path, crawler, want, root(shape, n, per_page))
    idioms = {
        key.rsplit("/", 1)[1]: count
        for key, count in crawler.stats.get_stats().items()
        if key.startswith("listing/pagination/")
    }
    assert sum(idioms.values()) == len(want.list_pages)  # one idiom per list page
    # Every page but the last led on by the shape's idiom (the last one has none, or only
    # links back: a "previous" page number); a numbered pager shows several pages ahead.
    assert (
        idioms[IDIOM[shape]] >= 1
        if IDIOM[shape] == "numbered"
        else idioms[IDIOM[shape]] == len(want.list_pages) - 1
    )


# --- The three bugs of issue 13, each against a promise of the README ----------------------


@deferred_f_from_coro_f
async def test_a_numbered_pager_link_on_page_one_is_a_list_page_not_a_child(
    site: Site, tmp_path: Path
) -> None:
    """WordPress: page 1's pager links /page/LAST/ without rel. Taken as a child, it was
    stored as one and, when page LAST-1's rel=next pointed to it, dropped by the
    dupefilter: the last page's posts were never fetched."""
    want = expected("blog", 60, 10)
    crawler = await crawl(site.base + want.start, **store_settings(tmp_path))
    docs = assert_crawled(site, tmp_path, crawler, want, root("blog", 60, 10))
    assert not {path_of(d["url"]) for d in docs} & want.list_pages
    assert {f"{root('blog', 60, 10)}/2024/05/post-{i}/" for i in range(50, 60)} <= {
        path_of(d["url"]) for d in docs
    }
    assert crawler.stats.get_value("listing/links_skipped/pager") >= 3


@deferred_f_from_coro_f
async def test_children_linked_from_every_list_page_are_counted_once(
    site: Site, tmp_path: Path
) -> None:
    """Children linked from every list page ("popular pages", a shop's "You may also
    like"): counted once per page, they made listing/children larger than the records
    written, and the README promises one record per counted child."""
    url = site.base + Listing(100, 20, featured=4).query(1)
    crawler = await crawl(url, **store_settings(tmp_path / "list"))
    docs = records(tmp_path / "list")
    assert_children_recorded(crawler.stats.get_stats(), len(docs))
    assert len(docs) == 100 and crawler.stats.get_value("listing/list_pages") == 5
    assert crawler.stats.get_value("listing/links_skipped/duplicate") == 5 * 4  # each page

    want = expected("shop", 90, 15)
    crawler = await crawl(site.base + want.start, **store_settings(tmp_path / "shop"))
    assert_crawled(site, tmp_path / "shop", crawler, want, root("shop", 90, 15))
    assert crawler.stats.get_value("listing/children") == len(want.children)
    assert crawler.stats.get_value("listing/links_skipped/duplicate") >= 5 * 3  # pages 2..6


@deferred_f_from_coro_f
async def test_links_resolve_against_base_href(site: Site, tmp_path: Path) -> None:
    """<base href="/catalog/v2/">: resolved against the page URL instead, every child was a
    404 record."""
    want = expected("catalog", 30, 10)
    crawler = await crawl(site.base + want.start, **store_settings(tmp_path))
    docs = assert_crawled(site, tmp_path, crawler, want, root("catalog", 30, 10))
    assert all(d["status"] == 200 for d in docs)


# --- One record per page, not per URL ---------------------------------------------------------


@deferred_f_from_coro_f
async def test_a_child_under_tracking_parameters_and_its_canonical_url_is_one_record(
    site: Site, tmp_path: Path
) -> None:
    want = expected("shop", 20, 10)
    await crawl(site.base + want.start, **store_settings(tmp_path))
    docs = records(tmp_path)
    r = root("shop", 20, 10)
    paths = [path_of(d["url"]) for d in docs]
    assert paths.count(f"{r}/products/p-7") == 1  # linked as ?utm_source=...&utm_medium=...
    assert not [p for p in paths if "utm_" in p]
    by_path = {path_of(d["url"]): d for d in docs}
    assert (
        by_path[f"{r}/collections/all/products/p-7"]["canonical_url"]
        == f"{site.base}{r}/products/p-7"
    )


@deferred_f_from_coro_f
async def test_dedup_canonical_keeps_one_body_per_canonical_url(site: Site, tmp_path: Path) -> None:
    want = expected("shop", 40, 10)
    crawler = await crawl(site.base + want.start, DEDUP_CANONICAL=True, **store_settings(tmp_path))
    docs = assert_crawled(site, tmp_path, crawler, want, root("shop", 40, 10))
    by_canonical: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_canonical.setdefault(doc["canonical_url"], []).append(doc)
    assert len(by_canonical) == 40
    for group in by_canonical.values():
        [owner] = [d for d in group if d["duplicate_of"] is None]
        assert owner["body_key"]
        for dup in group:
            if dup is not owner:
                assert dup["duplicate_of"] == owner["fingerprint"] and dup["body_key"] is None
    assert sum(1 for p in (tmp_path / "bodies").rglob("*") if p.is_file()) == 40
    assert crawler.stats.get_value("listing/canonical_duplicates") == len(docs) - 40


@deferred_f_from_coro_f
async def test_navigation_links_are_skipped_unless_all_links_are_asked_for(
    site: Site, tmp_path: Path
) -> None:
    want = expected("blog", 20, 10)
    r = root("blog", 20, 10)
    crawler = await crawl(site.base + want.start, **store_settings(tmp_path / "content"))
    # Header menu and footer: 4 links a page (on page 1, "Home" is the page itself).
    assert crawler.stats.get_value("listing/links_skipped/nav") == 4 + 3
    crawler = await crawl(
        site.base + want.start,
        LISTING_CHILDREN="all",
        RETRY_TIMES=0,
        **store_settings(tmp_path / "all"),
    )
    paths = {path_of(d["url"]) for d in records(tmp_path / "all")}
    assert {f"{r}/about/", f"{r}/feed/", f"{r}/privacy-policy/"} <= paths
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path / "all")))


# --- Where the page does not say: one obvious option ------------------------------------------


@deferred_f_from_coro_f
async def test_a_pager_nothing_recognizes_ends_with_a_warning_naming_it(
    site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    want = expected("custom", 30, 10)
    crawler = await crawl(site.base + want.start, **store_settings(tmp_path))
    assert crawler.stats.get_value("listing/list_pages") == 1
    warnings = [r.getMessage() for r in caplog.records if "look like pagination" in r.getMessage()]
    assert len(warnings) == 1
    assert "'2' (list-2)" in warnings[0] and "-a next_css=" in warnings[0]
    assert f"-a url='{site.base}{root('custom', 30, 10)}/list-{{1..N}}'" in warnings[0]
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


def test_a_distributed_node_says_so_at_the_first_page_of_a_listing_with_such_a_pager(
    site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """No node sees every list page of the crawl: the one that parses a listing's first
    page says it there."""
    want = expected("custom", 30, 10)
    node = Node("node", redis_url, tmp_path, url=site.base + want.start)
    nodes.append(node)
    assert node.wait() == 0
    assert node.stats()["listing/list_pages"] == 1
    warnings = [
        line for line in node.log.read_text().splitlines() if "look like pagination" in line
    ]
    assert len(warnings) == 1
    assert f"The list page {site.base}{want.start}, where a listing starts" in warnings[0]
    assert "'2' (list-2)" in warnings[0] and "-a next_css=" in warnings[0]


@pytest.mark.parametrize(
    "option", [{"next_css": "p.more a"}, {"next_xpath": "//a[@class='cta']/@href"}]
)
@deferred_f_from_coro_f
async def test_next_css_and_next_xpath_say_where_the_next_page_is(
    site: Site, tmp_path: Path, option: dict[str, str]
) -> None:
    n = 40 if "next_css" in option else 41
    want = expected("custom", n, 10)
    crawler = await crawl(site.base + want.start, spider_args=option, **store_settings(tmp_path))
    assert_crawled(site, tmp_path, crawler, want, root("custom", n, 10))
    idiom = next(iter(option))  # next_css or next_xpath
    assert crawler.stats.get_value(f"listing/pagination/{idiom}") == len(want.list_pages)


@deferred_f_from_coro_f
async def test_a_url_template_names_every_list_page(site: Site, tmp_path: Path) -> None:
    want = expected("custom", 50, 10)
    url = f"{site.base}{root('custom', 50, 10)}/list-{{1..5}}"
    crawler = await crawl(url, **store_settings(tmp_path))
    assert_crawled(site, tmp_path, crawler, want, root("custom", 50, 10))


@pytest.mark.parametrize("sitemap_filter", [None, "/doc/"])
@deferred_f_from_coro_f
async def test_a_sitemap_index_gives_the_children(
    site: Site, tmp_path: Path, sitemap_filter: str | None
) -> None:
    n = 30 if sitemap_filter else 31
    want = expected("sitemap", n, 10)
    if sitemap_filter:
        want = Expected(want.start, want.list_pages, {p for p in want.children if "/doc/" in p})
    args = {"sitemap": site.base + want.start}
    if sitemap_filter:
        args["sitemap_filter"] = sitemap_filter
    crawler = await crawl(None, spider_args=args, **store_settings(tmp_path))
    assert_crawled(site, tmp_path, crawler, want, root("sitemap", n, 10))
    assert crawler.stats.get_value("listing/sitemaps") == 3
    assert crawler.stats.get_value("listing/links_skipped/sitemap_filter") == (
        5 if sitemap_filter else None
    )


@deferred_f_from_coro_f
async def test_a_file_of_list_pages_crawls_each_with_its_pagination(
    site: Site, tmp_path: Path
) -> None:
    wants = [expected("numbered", 33, 10), expected("bookshop", 21, 10)]
    urls = tmp_path / "lists.txt"
    urls.write_text(
        "# list pages\n" + "".join(f"{site.base}{w.start}\n\n" for w in wants) + "not a url\n"
    )
    crawler = await crawl(None, spider_args={"urls_file": str(urls)}, **store_settings(tmp_path))
    union = Expected(
        "", wants[0].list_pages | wants[1].list_pages, wants[0].children | wants[1].children
    )
    assert_crawled(site, tmp_path, crawler, union, "/shapes/")
    assert crawler.stats.get_value("listing/urls_file_skipped") == 1


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"url": "http://x.test/list?page={5..1}"}, "names no page"),
        ({"url": "http://x.test/", "next_css": "a[["}, "-a next_css='a[[' is not a valid selector"),
        ({"url": "http://x.test/", "link_xpath": "//a[@"}, "is not a valid selector"),
        ({"sitemap": "http://x.test/s.xml", "sitemap_filter": "(doc"}, "is not a regex"),
        ({"urls_file": "/nonexistent/lists.txt"}, "-a urls_file=/nonexistent/lists.txt cannot be"),
        ({"url": "example.com/list"}, "did you mean -a url='https://example.com/list'?"),
        ({"sitemap": "ftp://x.test/s.xml"}, "-a sitemap='ftp://x.test/s.xml' is not an http(s)"),
    ],
)
@deferred_f_from_coro_f
async def test_bad_arguments_stop_the_crawl_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, args: dict[str, str], error: str
) -> None:
    caplog.set_level(logging.ERROR)
    args = dict(args)
    crawler = await crawl(args.pop("url", None), spider_args=args, **store_settings(tmp_path))
    assert crawler.stats.get_value("finish_reason") == "arguments_unusable"
    assert [r for r in caplog.records if error in r.getMessage()]
    assert not records(tmp_path)


def test_distributed_nodes_take_each_source_and_keep_one_body_per_canonical_url(
    site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """Same records, same stores in distributed mode: one node starts from a shop's first
    list page, the other from a sitemap index; with DEDUP_CANONICAL the nodes agree in
    Redis which child holds each canonical URL's body."""
    shop, sitemap = expected("shop", 60, 10), expected("sitemap", 40, 10)
    nodes += [
        Node("node0", redis_url, tmp_path, "DEDUP_CANONICAL=True", url=site.base + shop.start),
        Node(
            "node1",
            redis_url,
            tmp_path,
            "DEDUP_CANONICAL=True",
            spider_args={"sitemap": site.base + sitemap.start},
        ),
    ]
    assert [node.wait() for node in nodes] == [0, 0]

    docs = records(tmp_path)
    assert sorted(path_of(d["url"]) for d in docs) == sorted(shop.children | sitemap.children)
    assert_children_recorded([node.stats() for node in nodes], len(docs))
    owners = [d for d in docs if d["duplicate_of"] is None]
    assert len({d["canonical_url"] for d in owners if d["canonical_url"]}) == 60
    assert len(owners) == 60 + len(sitemap.children)  # sitemap pages declare no canonical
    fingerprints = {d["fingerprint"] for d in owners}
    assert all(
        d["duplicate_of"] in fingerprints and d["body_key"] is None
        for d in docs
        if d["duplicate_of"]
    )
    assert sum(1 for p in (tmp_path / "bodies").rglob("*") if p.is_file()) == len(owners)
