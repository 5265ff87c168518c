"""ListingSpider: a listing page, its pagination, and every page it links to.

    scrapy crawl listing -a url=http://127.0.0.1:8347/list
    scrapy crawl listing -a url=... -a link_css="ul.results a"   # narrow the child links

List pages are followed through ``rel="next"``; every same-site link on a list
page (other than its pagination links) is a child. Children are leaves: they are
stored, not followed. Each discovered child ends as exactly one PageItem, a
failed one included.
"""

from __future__ import annotations

import hashlib
import html
import logging
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urljoin, urlsplit

from scrapy import Request, Spider
from scrapy.exceptions import CloseSpider, DownloadCancelledError
from scrapy.http import TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from w3lib.url import safe_url_string

from scraper.distributed.tracking import request_done
from scraper.items import PageItem
from scraper.retry import describe

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

logger = logging.getLogger(__name__)

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_PAGER_RELS = frozenset({"next", "prev", "previous"})


def classify_link(href: str | None, page_url: str) -> tuple[str | None, str]:
    """Resolve one ``href`` found on ``page_url``.

    Returns ``(absolute URL without fragment, "ok")`` for a link to follow, or
    ``(None, reason)`` with reason one of: empty, fragment, unparsable, scheme, offsite.
    """
    href = (href or "").strip()
    if not href:
        return None, "empty"
    if href.startswith("#"):
        return None, "fragment"
    try:
        # As the Request will read it (w3lib, WHATWG rules: "a\\@b" is host a, path /@b):
        # the host checked below is the host that will be fetched.
        url = safe_url_string(urldefrag(urljoin(page_url, href)).url)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None, "unparsable"
    if parts.scheme not in ("http", "https"):
        return None, "scheme"
    if not parts.hostname:
        return None, "unparsable"
    if parts.hostname != urlsplit(page_url).hostname:
        return None, "offsite"
    return url, "ok"


def extract_title(body: bytes, encoding: str) -> str | None:
    """The page's <title>, read with a regex: a full HTML parse costs more CPU than the fetch."""
    match = _TITLE.search(body, 0, 65536)
    if not match:
        return None
    title = html.unescape(match.group(1).decode(encoding, "replace")).strip()
    return " ".join(title.split())[:1000] or None


class ListingSpider(Spider):
    """Crawls list pages (with pagination) and stores every child page they link to."""

    name = "listing"

    def __init__(
        self,
        url: str | None = None,
        link_css: str | None = None,
        link_xpath: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.link_css = link_css
        self.link_xpath = link_xpath
        self.list_pages = 0

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        super().update_settings(settings)
        # Per-domain concurrency follows CONCURRENT_REQUESTS unless it was set at the same or
        # a higher priority (e.g. both on the command line): a listing crawl is one site.
        total = settings.getint("CONCURRENT_REQUESTS")
        total_priority = settings.getpriority("CONCURRENT_REQUESTS") or 0
        if (settings.getpriority("CONCURRENT_REQUESTS_PER_DOMAIN") or 0) < total_priority:
            settings.set("CONCURRENT_REQUESTS_PER_DOMAIN", total, priority=total_priority)
        if settings.get("REDIS_URL"):  # distributed mode: the shared queue in Redis
            settings.set("SCHEDULER", "scraper.distributed.scheduler.DistributedScheduler",
                         priority="spider")
            middlewares = settings.getdict("SPIDER_MIDDLEWARES")
            # Closest to the engine: it must see what every other middleware let through.
            middlewares["scraper.distributed.tracking.LeaseTracker"] = 1
            settings.set("SPIDER_MIDDLEWARES", middlewares, priority="spider")

    async def start(self) -> AsyncIterator[Request]:
        distributed = bool(self.crawler.settings.get("REDIS_URL"))
        if not self.url and not distributed:
            logger.error("No list page given: run `scrapy crawl listing -a url=<list page URL>`")
            raise CloseSpider("no_url")
        self._log_concurrency()
        if self.url:
            yield self.list_request(self.url)  # distributed: into the shared queue, deduplicated
        else:
            logger.info("Taking list pages from Redis: `scrapy seed listing URL` adds one")

    def request_for_start_url(self, url: str) -> Request:
        """The request for a URL taken from ``listing:start_urls`` (distributed mode)."""
        return self.list_request(url)

    def _log_concurrency(self) -> None:
        settings = self.crawler.settings
        total = settings.getint("CONCURRENT_REQUESTS")
        per_domain = settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN")
        caps = []
        if per_domain < total:
            caps.append(f"CONCURRENT_REQUESTS_PER_DOMAIN={per_domain}")
        if settings.getint("CONCURRENT_REQUESTS_PER_IP"):
            caps.append(f"CONCURRENT_REQUESTS_PER_IP={settings.getint('CONCURRENT_REQUESTS_PER_IP')}")
        if settings.getfloat("DOWNLOAD_DELAY"):
            caps.append(f"DOWNLOAD_DELAY={settings.getfloat('DOWNLOAD_DELAY')}")
        if settings.getbool("AUTOTHROTTLE_ENABLED"):
            caps.append("AUTOTHROTTLE_ENABLED")
        if caps:
            logger.warning("Concurrency: %(total)d requests, capped by %(caps)s",
                           {"total": total, "caps": ", ".join(caps)})
        else:
            logger.info("Concurrency: %(total)d requests in flight, on one site too",
                        {"total": total})

    def list_request(self, url: str) -> Request:
        # List pages go first: their children keep the downloader full.
        return Request(url, callback=self.parse_list, errback=self.list_failed, priority=1)

    def parse_list(self, response: Response) -> Iterator[Request]:
        """Yield the next list page, then one request per new child link."""
        stats = self.crawler.stats
        self.list_pages += 1
        stats.inc_value("listing/list_pages")
        if not isinstance(response, TextResponse):
            logger.error("List page %(url)s is not HTML (%(type)s): no links taken",
                         {"url": response.url, "type": response.headers.get("Content-Type")})
            stats.inc_value("listing/list_not_html")
            return
        fingerprint = self.crawler.request_fingerprinter.fingerprint
        # Links are told apart as the dupefilter tells requests apart, by fingerprint: a
        # child that only the dupefilter saw as a repeat (of the list page itself, of a
        # pager link, of another child) would be counted and never get a record.
        list_pages = {fingerprint(Request(response.url))}
        if response.request is not None:
            list_pages.add(fingerprint(response.request))
        for a in response.xpath("//a[@href] | //link[@href]"):
            # The element's own get(), not parsel's .attrib: that reads every attribute,
            # and lxml raises on a name it cannot encode, which would lose the whole page.
            rels = set((a.root.get("rel") or "").lower().split())
            if _PAGER_RELS & rels:
                url, _ = classify_link(a.root.get("href"), response.url)
                if url:
                    list_pages.add(fingerprint(Request(url)))
                    if "next" in rels:
                        yield from self._next_page(url)
        seen: set[bytes] = set()
        for href in self._child_hrefs(response):
            url, reason = classify_link(href, response.url)
            if url is None:
                stats.inc_value(f"listing/links_skipped/{reason}")
                continue
            request = Request(url, callback=self.parse_child, errback=self.child_failed,
                              cb_kwargs={"listing_url": response.url})
            key = fingerprint(request)
            if key in list_pages:
                continue  # this list page, or its pagination: not a child
            if key in seen:
                stats.inc_value("listing/links_skipped/duplicate")
                continue
            seen.add(key)
            stats.inc_value("listing/children")
            request.cb_kwargs["fingerprint"] = key.hex()
            yield request

    def _next_page(self, url: str) -> Iterator[Request]:
        limit = self.crawler.settings.getint("LISTING_MAX_PAGES")
        if limit and self.list_pages >= limit:
            logger.warning("Pagination stopped at LISTING_MAX_PAGES=%(limit)d list pages",
                           {"limit": limit})
            self.crawler.stats.set_value("listing/max_pages_reached", limit)
            return
        yield self.list_request(url)

    def _child_hrefs(self, response: TextResponse) -> list[str]:
        if not (self.link_css or self.link_xpath):
            return response.xpath("//a/@href").getall()
        selected = response.css(self.link_css) if self.link_css else response.xpath(
            self.link_xpath or "")
        hrefs = []
        for sel in selected:
            if isinstance(sel.root, str):  # the selector chose attribute values itself
                hrefs.append(sel.root)
            else:
                hrefs.extend(sel.xpath("descendant-or-self::a/@href").getall())
        return hrefs

    def list_failed(self, failure: Failure) -> None:
        """A list page that could not be fetched: its links are lost, so say it loudly."""
        self.crawler.stats.inc_value("listing/list_failed")
        logger.error("List page %(url)s failed: %(error)s",
                     {"url": failure.request.url, "error": _describe(failure)})
        # No item will say this request is handled: say it (distributed mode acks it).
        self.crawler.signals.send_catch_log(request_done, request=failure.request)

    def parse_child(self, response: Response, listing_url: str, fingerprint: str) -> PageItem:
        """A fetched child page (2xx, or 3xx that was not followed)."""
        body = response.body
        encoding = response.encoding if isinstance(response, TextResponse) else "utf-8"
        return PageItem(
            fingerprint=fingerprint,
            url=_original_url(response.request) if response.request else response.url,
            listing_url=listing_url,
            fetched_at=datetime.now(UTC),
            final_url=response.url,
            status=response.status,
            headers=self._headers(response),
            content_type=_header(response, b"Content-Type"),
            length=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            title=extract_title(body, encoding) if isinstance(response, TextResponse) else None,
            elapsed=response.meta.get("download_latency"),
            body=body,
        )

    def child_failed(self, failure: Failure) -> PageItem:
        """A child that could not be fetched still ends as one record, with the reason."""
        request = failure.request
        item = PageItem(
            fingerprint=request.cb_kwargs["fingerprint"],
            url=_original_url(request),
            listing_url=request.cb_kwargs["listing_url"],
            fetched_at=datetime.now(UTC),
            error=_describe(failure, request.meta.get(
                "download_maxsize", self.crawler.settings.getint("DOWNLOAD_MAXSIZE"))),
        )
        if failure.check(HttpError):
            response = failure.value.response
            item.final_url = response.url
            item.status = response.status
            item.headers = self._headers(response)
            item.content_type = _header(response, b"Content-Type")
            item.length = len(response.body)
            item.elapsed = response.meta.get("download_latency")
        self.crawler.stats.inc_value("listing/child_failed")
        return item

    def _headers(self, response: Response) -> dict[str, str]:
        names = self.crawler.settings.getlist("META_HEADERS")
        return {name: value for name in names if (value := _header(response, name.encode()))}


def _header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value is not None else None


def _original_url(request: Request) -> str:
    redirects = request.meta.get("redirect_urls")
    return str(redirects[0]) if redirects else request.url


def _describe(failure: Failure, maxsize: int = 0) -> str:
    if failure.check(HttpError):
        return f"HTTP {failure.value.response.status}"
    if failure.check(DownloadCancelledError) and not str(failure.value) and maxsize:
        # Scrapy cancels a body that outgrows DOWNLOAD_MAXSIZE as it arrives (no
        # Content-Length to refuse it up front) without a message; only a warning says why.
        return (f"DownloadCancelledError: response larger than download max size ({maxsize}) "
                "as it arrived")
    return describe(failure.value)
