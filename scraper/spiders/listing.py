"""ListingSpider: a listing page, its pagination, and every page it links to.

    scrapy crawl listing -a url=https://shop.example/collections/all
    scrapy crawl listing -a url='https://shop.example/list?page={1..50}'  # pages by number
    scrapy crawl listing -a urls_file=lists.txt                            # one list per line
    scrapy crawl listing -a sitemap=https://shop.example/sitemap.xml       # children from it
    scrapy crawl listing -a url=... -a next_css="a.more"    # say where the next page is
    scrapy crawl listing -a url=... -a link_css="ul.results a"  # narrow the children

List pages are followed by the pagination idiom each one uses (spiders/pagination.py);
every other same-site link outside the page's navigation is a child
(spiders/listpage.py). Children are leaves: stored, not followed. Each discovered child
ends as exactly one PageItem, a failed one included: ``listing/children`` counts them,
after every dedup (a child linked from two list pages, or already queued, counts once).
"""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy import Request, Spider, signals
from scrapy.exceptions import CloseSpider
from scrapy.http import TextResponse

from scraper.distributed.connection import distributed
from scraper.distributed.generation import join_generation
from scraper.fingerprint import LIST_PAGE
from scraper.items import PageItem
from scraper.previous import CRAWL_ID, LISTING, new_crawl_id
from scraper.retry import describe
from scraper.signals import request_done
from scraper.sites import SiteMode
from scraper.spiders.advice import (
    say_children_left,
    say_concurrency,
    say_pagination_missed,
    say_what_was_missed,
)
from scraper.spiders.arguments import check_arguments
from scraper.spiders.listpage import ListPage, read_list_page
from scraper.spiders.pagination import Position, position
from scraper.spiders.records import (
    child_record,
    describe_failure,
    failed_child_record,
    failure_reason,
    linked_record,
    original_url,
    request_of,
)
from scraper.spiders.sitemap import read_sitemap
from scraper.urls import ParamStripper, resolve

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable, Iterator
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

#: request.meta key: False for a list page whose next pages are not looked for (the pages
#: of a URL template are all named already).
PAGINATION = "pagination"
CHILDREN_MODES = ("content", "all")


class ListingSpider(Spider):
    """Crawls list pages (with pagination) and stores every child page they link to."""

    name = "listing"

    def __init__(
        self,
        url: str | None = None,
        link_css: str | None = None,
        link_xpath: str | None = None,
        next_css: str | None = None,
        next_xpath: str | None = None,
        urls_file: str | None = None,
        sitemap: str | None = None,
        sitemap_filter: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.link_css = link_css
        self.link_xpath = link_xpath
        self.next_css = next_css
        self.next_xpath = next_xpath
        self.urls_file = urls_file
        self.sitemap = sitemap
        self.list_pages = 0  # list pages parsed
        self.children_found = 0  # children yielded here (dupefilter drops counted back)
        self.children_done = 0  # children whose callback or errback gave their item
        self.first_page: ListPage | None = None
        self.pagination_warned = False  # distributed: said at the first page (advice.py)
        self.max_pages_logged = False
        self.list_positions: set[Position] = set()  # list pages requested or parsed here
        self.crawl_id = ""  # set at start: new, or the one JOBDIR kept (scraper/previous.py)
        self.start_read = False  # start() has yielded its last request (the progress bar's ETA)
        checked = check_arguments(
            url,
            sitemap,
            sitemap_filter,
            {
                "link_css": link_css,
                "link_xpath": link_xpath,
                "next_css": next_css,
                "next_xpath": next_xpath,
            },
        )
        self.argument_error = checked.error
        self.sitemap_filter = checked.sitemap_filter
        self.start_urls_expanded = checked.start_urls
        self._list_page_urls: list[str] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.request_dropped, signal=signals.request_dropped)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        settings = self.crawler.settings
        many_nodes = distributed(settings)
        if self.argument_error is None:
            self.argument_error = self._check_settings()
        if self.argument_error:
            logger.error("%(error)s", {"error": self.argument_error})
            raise CloseSpider("arguments_unusable")
        if not (self.url or self.urls_file or self.sitemap) and not many_nodes:
            logger.error(
                "No list page given: run `scrapy crawl listing -a url=<list page URL>`"
                " (or -a urls_file=<file of list page URLs>, -a sitemap=<URL>)"
            )
            raise CloseSpider("no_url")
        say_concurrency(SiteMode.decide(self.list_page_urls(), settings), settings)
        # JOBDIR keeps spider.state: a resumed crawl is the same crawl.
        state: dict[str, Any] = getattr(self, "state", {})
        self.crawl_id = state.setdefault("crawl_id", new_crawl_id())
        if many_nodes and self.list_page_urls():
            self.crawl_id = await join_generation(self.crawler, self.listings()) or self.crawl_id
        # Distributed: each goes into the shared queue, deduplicated there.
        template = len(self.start_urls_expanded) > 1
        for url in self.start_urls_expanded:
            yield self.list_request(url, pagination=not template, listing=self.url)
        if self.urls_file:
            for url in self._read_urls_file():
                yield self.list_request(url)
        if self.sitemap:
            yield self.sitemap_request(self.sitemap)
        if many_nodes and not (self.url or self.urls_file or self.sitemap):
            logger.info("Taking list pages from Redis: `scrapy seed listing URL` adds one")
        self.start_read = True

    def _check_settings(self) -> str | None:
        mode = self.crawler.settings.get("LISTING_CHILDREN")
        if mode not in CHILDREN_MODES:
            return f"LISTING_CHILDREN={mode!r}: use one of {', '.join(CHILDREN_MODES)}"
        return None

    def list_page_urls(self) -> list[str]:
        """The list pages the arguments name (a URL template expanded, the urls_file's
        http(s) lines, the sitemap), read once and quietly: they decide one site or many
        (scraper/sites.py) before the crawl starts; ``start()`` reports what is wrong."""
        if self._list_page_urls is None:
            urls = list(self.start_urls_expanded)
            if self.urls_file:
                with suppress(OSError, UnicodeDecodeError):
                    urls += [
                        url
                        for _, url in _urls_file_lines(self.urls_file)
                        if urlsplit(url).scheme in ("http", "https")
                    ]
            if self.sitemap:
                urls.append(self.sitemap)
            self._list_page_urls = urls
        return self._list_page_urls

    def listings(self) -> list[str]:
        """The listings the arguments start: the URL (a template is one listing), each
        urls_file line, the sitemap; each is its list pages' ``listing``."""
        own = [self.url] if self.url else []
        return own + self.list_page_urls()[len(self.start_urls_expanded) :]

    def _read_urls_file(self) -> Iterator[str]:
        assert self.urls_file is not None
        try:
            for number, url in _urls_file_lines(self.urls_file):
                if urlsplit(url).scheme not in ("http", "https"):
                    logger.error(
                        "%(file)s line %(n)d is not an http(s) URL, skipped: %(line)r",
                        {"file": self.urls_file, "n": number, "line": url[:200]},
                    )
                    self.crawler.stats.inc_value("listing/urls_file_skipped")
                    continue
                yield url
        except (OSError, UnicodeDecodeError) as exc:
            logger.error(
                "-a urls_file=%(file)s cannot be read: %(error)s",
                {"file": self.urls_file, "error": describe(exc)},
            )
            raise CloseSpider("arguments_unusable") from None

    def request_for_start_url(self, url: str) -> Request:
        """The request for a URL taken from ``listing:start_urls`` (distributed mode; the
        entry's meta, set by `scrapy seed`, names its crawl)."""
        return self.list_request(url)

    def list_request(
        self,
        url: str,
        *,
        pagination: bool = True,
        listing: str | None = None,
        crawl_id: str | None = None,
    ) -> Request:
        """A list page of ``listing`` (a start URL's own, by default). Its fingerprint is
        apart from a child's of the same URL (see scraper/fingerprint.py); list pages go
        first: their children keep the downloader full."""
        self.list_positions.add(position(url))
        meta: dict[str, Any] = {
            LIST_PAGE: True,
            LISTING: listing or url,
            CRAWL_ID: crawl_id or self.crawl_id,
        }
        if not pagination:
            meta[PAGINATION] = False
        return Request(
            url, callback=self.parse_list, errback=self.list_failed, priority=1, meta=meta
        )

    def sitemap_request(self, url: str, parent: Response | None = None) -> Request:
        request = self.list_request(url, **self._crawl_of(parent) if parent else {})
        return request.replace(callback=self.parse_sitemap)

    @staticmethod
    def _crawl_of(response: Response) -> dict[str, Any]:
        """The listing and crawl a list page belongs to, passed on to what it links."""
        return {"listing": response.meta.get(LISTING), "crawl_id": response.meta.get(CRAWL_ID)}

    @cached_property
    def strip(self) -> ParamStripper:
        """Removes URL_STRIP_PARAMS (tracking parameters) from every discovered link."""
        return ParamStripper(self.crawler.settings.getlist("URL_STRIP_PARAMS"))

    def parse_list(self, response: Response) -> Iterator[Request]:
        """Yield the next list pages, then one request per new child link."""
        stats = self.crawler.stats
        self.list_pages += 1
        stats.inc_value("listing/list_pages")
        if not isinstance(response, TextResponse):
            logger.error(
                "List page %(url)s is not HTML (%(type)s): no links taken",
                {"url": response.url, "type": response.headers.get("Content-Type")},
            )
            stats.inc_value("listing/list_not_html")
            return
        page = read_list_page(
            response,
            strip=self.strip,
            detect=response.meta.get(PAGINATION, True),
            explicit=self._explicit_next(response),
            child_hrefs=self._selected_hrefs(response, self.link_css, self.link_xpath),
            nav_children=self.crawler.settings.get("LISTING_CHILDREN") == "all",
        )
        if self.first_page is None:
            self.first_page = page
        if page.suspects and not self.pagination_warned and distributed(self.crawler.settings):
            self._say_if_a_listing_starts_here(page, response)
        self.list_positions.add(page.here)
        stats.inc_value(f"listing/pagination/{page.idiom or 'none'}")
        for reason, count in page.skipped.items():
            stats.inc_value(f"listing/links_skipped/{reason}", count)
        for url, pos in page.next_pages:
            if pos not in self.list_positions:
                if not self._may_follow():
                    break
                yield self.list_request(url, **self._crawl_of(response))
        yield from self._children(page.children, response)

    def _say_if_a_listing_starts_here(self, page: ListPage, response: Response) -> None:
        """Distributed: the first page of a listing whose pager gave nothing says so at
        once, once a node (no node sees the whole crawl's list pages to say it at the end,
        as one process does)."""
        assert response.request is not None
        if response.meta.get(LISTING) != original_url(response.request):
            return  # a later page: its listing's first page gave a next page
        self.pagination_warned = True
        say_pagination_missed(page, f"The list page {page.url}, where a listing starts, has")

    def _may_follow(self) -> bool:
        limit = self.crawler.settings.getint("LISTING_MAX_PAGES")
        if not limit or len(self.list_positions) < limit:
            return True
        if not self.max_pages_logged:
            self.max_pages_logged = True
            logger.warning(
                "Pagination stopped at LISTING_MAX_PAGES=%(limit)d list pages", {"limit": limit}
            )
            self.crawler.stats.set_value("listing/max_pages_reached", limit)
        return False

    def _children(self, urls: Iterable[str], parent: Response) -> Iterator[Request]:
        """One request per child URL not seen on this page; counted as a child until the
        dupefilter says it was seen before (``request_dropped``)."""
        stats = self.crawler.stats
        fingerprint = self.crawler.request_fingerprinter.fingerprint
        seen: set[bytes] = set()
        crawl = {LISTING: parent.meta.get(LISTING), CRAWL_ID: parent.meta.get(CRAWL_ID)}
        for url in urls:
            request = Request(
                url,
                callback=self.parse_child,
                errback=self.child_failed,
                cb_kwargs={"listing_url": parent.url},
                meta=dict(crawl),
            )
            key = fingerprint(request)
            if key in seen:
                stats.inc_value("listing/links_skipped/duplicate")
                continue
            seen.add(key)
            self.children_found += 1
            stats.inc_value("listing/children")
            request.cb_kwargs["fingerprint"] = key.hex()
            yield request

    def request_dropped(self, request: Request) -> None:
        """The dupefilter (Scrapy's, or Redis in distributed mode) dropped a request: a
        child seen before is not a new child."""
        if request.callback == self.parse_child:
            self.children_found -= 1
            self.crawler.stats.inc_value("listing/children", -1)
            self.crawler.stats.inc_value("listing/links_skipped/duplicate")

    def _explicit_next(self, response: TextResponse) -> tuple[str, list[str]] | None:
        hrefs = self._selected_hrefs(response, self.next_css, self.next_xpath)
        if hrefs is None:
            return None
        return ("next_css" if self.next_css is not None else "next_xpath"), hrefs

    @staticmethod
    def _selected_hrefs(
        response: TextResponse, css: str | None, xpath: str | None
    ) -> list[str] | None:
        """The hrefs a ``*_css``/``*_xpath`` argument picks: regions (every link inside),
        links, or attribute values; None when neither is given."""
        if css is None and xpath is None:
            return None
        selected = response.css(css) if css is not None else response.xpath(xpath or "")
        hrefs = []
        for sel in selected:
            if isinstance(sel.root, str):  # the selector chose attribute values itself
                hrefs.append(sel.root)
            else:
                hrefs.extend(
                    sel.xpath(
                        "descendant-or-self::*/@href | descendant-or-self::*/@data-next"
                        " | descendant-or-self::*/@data-url | descendant-or-self::*/@data-href"
                    ).getall()
                )
        return hrefs

    def parse_sitemap(self, response: Response) -> Iterator[Request]:
        """A sitemap (its URLs are children), a sitemap index, or a robots.txt (its
        ``Sitemap:`` lines)."""
        stats = self.crawler.stats
        stats.inc_value("listing/sitemaps")
        page = read_sitemap(response, self.crawler.settings.getint("DOWNLOAD_MAXSIZE"))
        if page.kind is None:
            logger.error("Sitemap %(url)s is %(error)s", {"url": response.url, "error": page.error})
            stats.inc_value("listing/sitemap_unreadable")
            return
        if page.kind == "robots":
            for url in page.locs:
                if url and self._may_follow():
                    yield self.sitemap_request(url, response)
            return
        site = urlsplit(response.url).hostname
        urls = []
        for loc in page.locs:
            found, reason = resolve(loc, response.url, site)
            if found is None:
                stats.inc_value(f"listing/links_skipped/{reason}")
                continue
            urls.append(self.strip(found))
        if page.kind == "sitemapindex":
            for url in urls:
                if position(url) not in self.list_positions and self._may_follow():
                    yield self.sitemap_request(url, response)
            return
        if self.sitemap_filter is not None:
            kept = [url for url in urls if self.sitemap_filter.search(url)]
            stats.inc_value("listing/links_skipped/sitemap_filter", len(urls) - len(kept))
            urls = kept
        yield from self._children(urls, response)

    def closed(self, reason: str) -> None:
        """Say it when children were left uncrawled, or the crawl probably missed pages or
        found none to take. Distributed: a node sees only its share, so it says nothing."""
        if distributed(self.crawler.settings):
            return
        stats = self.crawler.stats
        jobdir = self.crawler.settings.get("JOBDIR")
        say_children_left(stats, self.children_found, self.children_done, reason, jobdir)
        if reason == "finished":
            say_what_was_missed(self.first_page, self.list_pages, self.children_found, stats)

    def list_failed(self, failure: Failure) -> None:
        """A list page that could not be fetched: its links are lost, so say it loudly."""
        self.crawler.stats.inc_value("listing/list_failed")
        request = request_of(failure)
        logger.error(
            "List page %(url)s failed: %(error)s",
            {"url": request.url, "error": describe_failure(failure)},
        )
        # No item will say this request is handled: say it (distributed mode acks it, and
        # notes that the crawl missed children: scraper/recrawl.py marks none gone then).
        self.crawler.signals.send_catch_log(request_done, request=request, list_failed=True)

    def parse_child(self, response: Response, listing_url: str, fingerprint: str) -> PageItem:
        """A fetched child page (2xx, or 3xx that was not followed)."""
        self.children_done += 1
        item, freshness = child_record(response, listing_url, fingerprint, self.header_names)
        self.crawler.stats.inc_value(f"listing/children_{freshness}")
        return item

    def recent_child(self, request: Request) -> PageItem:
        """A child the site gave or confirmed less than RECRAWL_MIN_AGE ago, not asked again
        (scraper/recrawl.py): its record only says this crawl linked it."""
        self.children_done += 1
        self.crawler.stats.inc_value("listing/children_recent")
        return linked_record(request, datetime.now(UTC))

    def child_failed(self, failure: Failure) -> PageItem:
        """A child that could not be fetched still ends as one record, with the reason."""
        self.children_done += 1
        stats = self.crawler.stats
        stats.inc_value("listing/child_failed")
        stats.inc_value(f"listing/child_failed/{failure_reason(failure)}")
        maxsize = self.crawler.settings.getint("DOWNLOAD_MAXSIZE")
        return failed_child_record(failure, self.header_names, maxsize)

    @cached_property
    def header_names(self) -> list[str]:
        """META_HEADERS: the response headers a record keeps."""
        return self.crawler.settings.getlist("META_HEADERS")


def _urls_file_lines(path: str) -> Iterator[tuple[int, str]]:
    """The lines of a urls_file that name something, with their numbers: blank lines and
    ``#`` comments skipped, the rest stripped."""
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            url = line.strip()
            if url and not url.startswith("#"):
                yield number, url
