"""Recrawl: a listing crawled again costs what changed, and the crawl says what did.

A spider middleware, on with ``RECRAWL = True`` (the default). For the children a list
page yields it looks up their previous records in META_STORE, a batch per list page
(one MongoDB ``find``, or the JSON Lines index), off the reactor thread, and gives each
request found its record (``meta["previous"]``) and the conditional GET's headers
(``If-None-Match``, ``If-Modified-Since``); the spider's records compare (see
scraper/spiders/records.py). With ``RECRAWL_MIN_AGE``, a child the site gave or confirmed
less than that many seconds ago is not asked at all: the spider's ``recent_child`` record
(a lookup's together, one LinkedRecords item) says only that this crawl linked it (a
re-visit policy: what changed meanwhile is seen once the child is older). Each such
child is recorded once per process; a child linked from list pages crawled on two nodes
is recorded, and counted, on each (the same record).

When the crawl ends complete (finished, no list page failed, pagination not cut by
LISTING_MAX_PAGES), the records of its listings that it did not link are marked
``gone_at``, and one line says how many children were new, changed, unchanged, recent,
failed and gone. In distributed mode the crawl is the one `scrapy seed` started (its id,
listings and failed list pages are in Redis), and every node that ends it marks: the
marking is idempotent.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast, get_args

from scrapy import Request, signals

from scraper.distributed.connection import distributed
from scraper.fingerprint import LIST_PAGE
from scraper.items import LinkedRecords, PageItem
from scraper.pipelines.store_calls import call
from scraper.previous import CRAWL_ID, LISTING, PREVIOUS, Previous
from scraper.retry import describe
from scraper.signals import request_done
from scraper.spiders.records import Freshness
from scraper.stores import build_meta_store

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from typing import Self

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from scraper.stores import PreviousRecords

logger = logging.getLogger(__name__)

#: Fingerprints per lookup: a list page rarely links more.
BATCH = 1000


class Recrawl:
    """Previous records in, gone records marked at the end (the module docstring)."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.store: PreviousRecords | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.closes: Callable[[], None] | None = None
        self.lookup_failed = False
        self.min_age = crawler.settings.getfloat("RECRAWL_MIN_AGE")
        # The spider's record of a recent child (ListingSpider.recent_child), with a min age.
        self.recent_record: Callable[[Request], PageItem] | None = None
        # listing -> crawl id, of the list pages parsed here; list pages that failed; the
        # children recorded as recent (not asked), each once.
        self.crawl: dict[str, Any] = {"listings": {}, "list_failed": 0, "recent": set()}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        middleware = cls(crawler)
        if crawler.settings.getbool("RECRAWL"):
            crawler.signals.connect(middleware.spider_opened, signal=signals.spider_opened)
            crawler.signals.connect(middleware.spider_closed, signal=signals.spider_closed)
            crawler.signals.connect(middleware.request_done, signal=request_done)
        return middleware

    async def spider_opened(self, spider: Spider) -> None:
        # JOBDIR keeps spider.state: a resumed crawl knows the listings it parsed before.
        state = getattr(spider, "state", None)
        if isinstance(state, dict):
            self.crawl = state.setdefault("recrawl", self.crawl)
            self.crawl.setdefault("recent", set())  # a JOBDIR of an older version
        if self.min_age > 0:
            self.recent_record = getattr(spider, "recent_child", None)
        try:
            store = build_meta_store(self.crawler, self.crawler.settings.get("META_STORE"))
        except Exception:  # the meta pipeline says why, and stops the crawl
            return
        if not hasattr(store, "previous") or not hasattr(store, "mark_gone"):
            logger.info(
                "RECRAWL: %s cannot look up records; every child is fetched whole",
                type(store).__name__,
            )
            return
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="recrawl")
        try:
            await call(self.executor, store.open)
            await call(self.executor, store.previous, [])  # the JSON Lines store loads its index
        except Exception:  # the meta pipeline says why, and stops the crawl
            return
        self.store = cast("PreviousRecords", store)
        self.closes = store.close

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        if response.meta.get(LIST_PAGE) and response.meta.get(LISTING):
            self.crawl["listings"][response.meta[LISTING]] = response.meta.get(CRAWL_ID)
        children: list[Request] = []
        async for out in result:
            if self.store is not None and _is_child(out):
                children.append(out)
                if len(children) >= BATCH:
                    for given in await self._give_previous(children):
                        yield given
                    children = []
            else:
                yield out
        if children:
            for given in await self._give_previous(children):
                yield given

    async def _give_previous(self, children: list[Request]) -> list[Request | LinkedRecords]:
        """Each child's previous record and conditional GET, one lookup for them all; the
        recent children's records in their place, as one item; a lookup that fails leaves
        them to be fetched whole (nothing lost, more fetched)."""
        assert self.store is not None
        keys = [child.cb_kwargs["fingerprint"] for child in children]
        try:
            found: dict[str, Previous] = await call(self.executor, self.store.previous, keys)
        except Exception as exc:
            self.crawler.stats.inc_value("recrawl/lookup_failed", len(children))
            if not self.lookup_failed:
                self.lookup_failed = True
                logger.warning(
                    "Previous records could not be read (%(error)s): children are fetched "
                    "and stored whole until they can",
                    {"error": describe(exc)},
                )
            return list(children)
        self.lookup_failed = False
        given: list[Request | LinkedRecords] = []
        recent: list[PageItem] = []
        now = datetime.now(UTC)
        for child, key in zip(children, keys, strict=True):
            previous = found.get(key)
            if (
                previous is not None
                and self.recent_record is not None
                and previous.checked_within(self.min_age, now)
            ):
                if (record := self._recent(child, key)) is not None:
                    recent.append(record)
                continue
            given.append(child)
            if previous is None:
                continue
            child.meta[PREVIOUS] = list(previous)
            validators = previous.validators()
            if validators:
                for name, value in validators.items():
                    child.headers[name] = value
                allowed = child.meta.get("handle_httpstatus_list", [])
                child.meta["handle_httpstatus_list"] = [*allowed, 304]
        self.crawler.stats.inc_value("recrawl/lookups")
        self.crawler.stats.inc_value("recrawl/found", len(found))
        if recent:
            given.append(LinkedRecords(recent))
        return given

    def _recent(self, child: Request, key: str) -> PageItem | None:
        """A recent child's record in place of its request; None for one recorded before
        in this crawl (dropped as the dupefilter drops a child seen before)."""
        assert self.recent_record is not None
        recent: set[str] = self.crawl["recent"]
        if key in recent:
            self.crawler.signals.send_catch_log(
                signals.request_dropped, request=child, spider=self.crawler.spider
            )
            return None
        recent.add(key)
        return self.recent_record(child)

    def request_done(self, request: Request, list_failed: bool = False) -> None:
        """A list page that failed: the crawl missed its children, so it marks none gone."""
        if list_failed:
            self.crawl["list_failed"] += 1

    async def spider_closed(self, spider: Spider, reason: str) -> None:
        stats = self.crawler.stats
        gone = None
        try:
            if self.store is not None:
                gone = await self._mark_gone(reason)
        finally:
            if self.closes is not None:
                await call(self.executor, self.closes)
            if self.executor is not None:
                self.executor.shutdown(wait=True)
        if gone is not None:
            stats.set_value("listing/children_gone", gone)
        counts = {k: stats.get_value(f"listing/children_{k}", 0) for k in FRESHNESS}
        failed = stats.get_value("listing/child_failed", 0)
        if not any(counts.values()) and not failed:
            return
        recent = counts.pop("recent")
        logger.info(
            "Children: %(new)d new, %(changed)d changed, %(unchanged)d unchanged, "
            "%(recent)s%(failed)d failed; %(gone)s",
            {
                **counts,
                "recent": f"{recent} recent (not asked: RECRAWL_MIN_AGE), " if recent else "",
                "failed": failed,
                "gone": f"{gone} gone (no longer linked, marked gone_at)"
                if gone is not None
                else "none marked gone (the crawl was not complete)",
            },
        )

    async def _mark_gone(self, reason: str) -> int | None:
        """Mark the records this complete crawl did not link; None if it was not complete."""
        assert self.store is not None
        stats = self.crawler.stats
        if reason != "finished" or stats.get_value("listing/max_pages_reached"):
            return None
        crawl = await self._crawl_seen()
        if crawl is None or crawl["list_failed"] or not crawl["listings"]:
            return None
        now = datetime.now(UTC)
        marked = 0
        by_id: dict[str, list[str]] = {}
        for listing, crawl_id in crawl["listings"].items():
            by_id.setdefault(crawl_id, []).append(listing)
        for crawl_id, listings in by_id.items():
            marked += await call(self.executor, self.store.mark_gone, listings, crawl_id, now)
        return marked

    async def _crawl_seen(self) -> dict[str, Any] | None:
        """The listings this crawl parsed and its failed list pages: this node's own, or
        the whole distributed crawl's (from Redis)."""
        if not distributed(self.crawler.settings):
            return self.crawl
        from scraper.distributed.generation import read_generation

        return await read_generation(self.crawler)


FRESHNESS = get_args(Freshness)


def _is_child(out: Any) -> bool:
    return (
        isinstance(out, Request) and "fingerprint" in out.cb_kwargs and not out.meta.get(LIST_PAGE)
    )
