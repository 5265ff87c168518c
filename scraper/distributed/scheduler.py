"""DistributedScheduler: many nodes, one crawl, fed by one Redis.

Switched on by ``-s REDIS_URL=redis://host:port/db`` (see scraper.addon).

The engine talks to the scheduler synchronously and often (several calls per page);
none of those calls touches Redis. They read and fill the node's buffers
(scraper.distributed.buffers), and one background task, the pump
(scraper.distributed.pump), moves batches between the buffers and Redis, each move one
atomic Lua script (scraper.distributed.queue):

- leased requests are prefetched into ``local`` (up to REDIS_PREFETCH, 100: the engine
  starts all it is given, and a thousand requests started together come back together,
  a burst of responses that costs more memory and GC than a steady flow);
- requests the crawl yields go to ``outbox``, enqueued with the dedup check in one call;
- finished requests' lease tokens (scraper.distributed.leases) are acknowledged after
  the outbox, so a list page is acknowledged only once its children are in Redis.

A request is finished when everything it produced is stored (see
scraper.distributed.tracking): that is why an acknowledged request is never lost.

Anything found in Redis that this crawl did not write (a pickle, broken or oversized
JSON, bytes that are not UTF-8, a lease without data, a heartbeat that is not one) is
skipped, logged ("... that is not ours") and counted (``distributed/rejected/<key>``);
nothing read from Redis is ever run as code (see scraper.distributed.codec).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.exceptions import CloseSpider, DontCloseSpider
from scrapy.utils.defer import deferred_from_coro

from scraper.config import ConfigError, stop_crawl
from scraper.distributed.bloom import BloomFilter
from scraper.distributed.buffers import Buffers, Outgoing, OutgoingLeased
from scraper.distributed.codec import encode
from scraper.distributed.connection import (
    REDIS_ERRORS,
    AnyRedis,
    RedisTarget,
    connect,
    redis_target,
)
from scraper.distributed.leases import FOUND_BY, LEASE, Leases
from scraper.distributed.per_site import PerSite
from scraper.distributed.pump import Pump
from scraper.distributed.queue import CrawlQueue, Pace, partitions
from scraper.retry import describe
from scraper.signals import request_done, site_paused
from scraper.sites import ListPageSource, request_site

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)


def _bloom(settings: Any) -> BloomFilter | None:
    """The Bloom filter REDIS_DUPEFILTER asks for, or None for the exact set."""
    kind = settings.get("REDIS_DUPEFILTER", "set")
    if kind == "set":
        return None
    if kind != "bloom":
        raise ConfigError("REDIS_DUPEFILTER", f"use 'set' or 'bloom', not {kind!r}")
    return BloomFilter(
        settings.getint("REDIS_BLOOM_CAPACITY"), settings.getfloat("REDIS_BLOOM_ERROR_RATE")
    )


class DistributedScheduler:
    """A Scrapy scheduler over Redis with leased requests and batched, off-path I/O."""

    def __init__(
        self,
        crawler: Crawler,
        target: RedisTarget | None,
        *,
        prefetch: int = 100,
        lease_seconds: float = 120,
        max_attempts: int = 5,
        idle_timeout: float = 30,
        wait_for_start_urls: bool = False,
        batch: int = 500,
        bloom: BloomFilter | None = None,
        config_error: ConfigError | None = None,
    ) -> None:
        self.crawler = crawler
        self.target = target
        self.config_error = config_error
        self.prefetch = max(1, prefetch)
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.idle_timeout = idle_timeout
        self.wait_for_start_urls = wait_for_start_urls
        self.batch = batch
        self.bloom = bloom
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.buffers = Buffers()
        self.leases = Leases(self.node)
        self.idle_since: float | None = None
        self.spider: Spider | None = None
        self.redis: AnyRedis | None = None
        self.queue: CrawlQueue | None = None
        self.notes: set[asyncio.Task[None]] = set()
        self.pump: Pump | None = None
        self.per_site: PerSite | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        s = crawler.settings
        bloom = target = config_error = None
        try:  # a setting that cannot work stops the crawl at open, with one line
            target = redis_target(s)
            bloom = _bloom(s)
            if target is not None:
                partitions(s, target)
        except ConfigError as exc:
            config_error = exc
        return cls(
            crawler,
            target,
            prefetch=min(
                s.getint("REDIS_PREFETCH") or s.getint("CONCURRENT_REQUESTS"),
                s.getint("CONCURRENT_REQUESTS"),
            ),
            lease_seconds=s.getfloat("REDIS_LEASE_SECONDS"),
            max_attempts=s.getint("REDIS_MAX_ATTEMPTS"),
            idle_timeout=s.getfloat("REDIS_IDLE_TIMEOUT"),
            wait_for_start_urls=s.getbool("REDIS_WAIT_FOR_START_URLS"),
            bloom=bloom,
            config_error=config_error,
        )

    @property
    def stats(self) -> Any:
        return self.crawler.stats

    # --- Scrapy's scheduler interface (synchronous, never touches Redis) ------------------

    def open(self, spider: Spider) -> Deferred[None]:
        return deferred_from_coro(self._open(spider))

    def close(self, reason: str) -> Deferred[None]:
        return deferred_from_coro(self._close(reason))

    def has_pending_requests(self) -> bool:
        return bool(self.buffers.local)

    def __len__(self) -> int:
        return len(self.buffers.local)

    def enqueue_request(self, request: Request) -> bool:
        assert self.spider is not None
        if LEASE in request.meta:
            # A request this node holds: leased (the pump hands it over through
            # engine.crawl), or a retry or redirect of one. It stays here, under its
            # lease, and is acknowledged when it is done.
            self.leases.fetching(request.meta[LEASE], request_site(request))
            self.buffers.keep(request)
            self.stats.inc_value("scheduler/enqueued")
            return True
        fingerprint = (
            ""
            if request.dont_filter
            else self.crawler.request_fingerprinter.fingerprint(request).hex()
        )
        data = encode(request, self.spider)
        site = request_site(request)
        if request.priority > 0 and request.meta.pop(FOUND_BY, None) in self.leases.held:
            # A list page found while crawling one this node holds: it feeds the whole
            # crawl, so this node crawls it now, leased to itself in Redis by the next
            # flush (before the page that found it is acknowledged). A round trip through
            # the queue would stall the list-page chain behind the reactor's backlog
            # (measured: ~100 ms a page). Start requests (`-a url=`, start_urls) are not
            # found pages: they go through the queue's dedup first, or a list page already
            # queued would be crawled twice, and with it its whole chain of next pages.
            partition = self.queue.partition(site) if self.queue else 0
            token = request.meta[LEASE] = self.leases.hold_found(partition, site)
            self.buffers.local.appendleft(request)
            self.buffers.outbox_leased.append(
                OutgoingLeased(fingerprint, request.priority, data, token, site)
            )
            self.stats.inc_value("scheduler/enqueued")
        else:
            self.buffers.outbox.append(Outgoing(fingerprint, request.priority, data, site, request))
        self.stats.inc_value("distributed/enqueued")
        self._wake_pump()
        return True

    def next_request(self) -> Request | None:
        if not self.buffers.local:
            return None
        self.stats.inc_value("distributed/dequeued")
        self.stats.inc_value("scheduler/dequeued")
        return self.buffers.local.popleft()

    # --- lifecycle ------------------------------------------------------------------------

    async def _open(self, spider: Spider) -> None:
        self.spider = spider
        if self.config_error is not None:
            self._stop_once_open(self.config_error.setting, self.config_error)
            return
        target = self.target
        assert target is not None  # else config_error
        self.queue = CrawlQueue(
            connect(target),
            spider.name,
            self.bloom,
            partitions=partitions(self.crawler.settings, target),
            cluster=target.cluster,
        )
        self.redis = self.queue.redis
        try:
            await self.queue.redis.ping()
            n = await self.queue.open()
            pace = await self._pace()
        except REDIS_ERRORS as exc:
            why = f"{target}: {describe(exc)}"
            self._stop_once_open(target.setting, why, reason="redis_unusable")
            return
        self.crawler.signals.connect(self.spider_idle, signal=signals.spider_idle)
        self.crawler.signals.connect(self.request_done, signal=request_done)
        self.crawler.signals.connect(
            self.request_left_downloader, signal=signals.request_left_downloader
        )
        self.crawler.signals.connect(self.site_paused, signal=site_paused)
        logger.info(
            "Distributed crawl: node %(node)s on %(url)s, keys %(prefix)s*%(parts)s",
            {
                "node": self.node,
                "url": str(target),
                "prefix": self.queue.keys.prefix,
                "parts": f" in {n} partitions" if n > 1 else "",
            },
        )
        self.pump = Pump(
            self.crawler,
            spider,
            self.queue,
            self.buffers,
            self.leases,
            prefetch=self.prefetch,
            lease_seconds=self.lease_seconds,
            max_attempts=self.max_attempts,
            batch=self.batch,
            pace=pace,
            on_drained=self.ask_idle,
            on_listings=self.note_listings,
        )
        # The pump hands leased requests to the engine: only once it has opened it all.
        self.crawler.signals.connect(self.pump.start, signal=signals.spider_opened, weak=False)

    async def _pace(self) -> Pace:
        """How this node leases across sites (scraper/distributed/per_site.py), from every
        listing it knows: its own, and those `scrapy seed` gave Redis."""
        assert self.queue is not None and self.spider is not None
        own = self.spider.list_page_urls() if isinstance(self.spider, ListPageSource) else []
        self.per_site = PerSite(self.crawler, own)
        _, listings, _ = await self.queue.generation()
        return self.per_site.pace(listings)

    def note_listings(self, urls: list[str]) -> None:
        """Listings this node learnt of while crawling (Redis's set of them, a start URL it
        leased): a crawl seeded after the node started may turn out to span sites."""
        if self.pump is not None and self.per_site is not None:
            self.pump.pace = self.per_site.learn(self.pump.pace, urls)

    def _stop_once_open(self, setting: str, why: object, reason: str | None = None) -> None:
        """Stop the crawl with one line as soon as the engine has opened it. Stopping from
        the scheduler's own open, before the engine has opened the rest, made Scrapy fail
        its close with a traceback ("Scraper slot not assigned"). Meanwhile nothing is
        sent: without the pump, requests stay in the buffers."""

        def stop() -> None:
            raise stop_crawl(logger, setting, why, reason)

        self.crawler.signals.connect(stop, signal=signals.spider_opened, weak=False)

    async def _close(self, reason: str) -> None:
        if self.pump is None or self.pump.task is None:
            # Never started (stopped at open): nothing to hand back.
            if self.redis is not None:
                await self.redis.aclose()
            return
        await self.pump.stop()
        assert self.queue is not None and self.redis is not None
        # Requests leased but never started go back now; in-flight ones have finished
        # (the engine closes the scheduler last) or their leases will expire.
        unstarted = self.buffers.unstarted_leases()
        try:
            await self.pump.flush()
            returned = await self.queue.release(unstarted)
            self.stats.inc_value("distributed/released", returned)
            # The last heartbeat, with the final figures (scraper/distributed/heartbeat.py).
            await self.queue.heartbeat(
                self.node, self.pump.report("closed"), 3 * self.pump.lease_ms
            )
        except REDIS_ERRORS as exc:
            logger.error(
                "Redis unreachable at close (%(error)s): %(n)d leases will expire and "
                "be crawled by another node",
                {"error": describe(exc), "n": len(self.leases)},
            )
        await self.redis.aclose()

    def site_paused(self, site: str, seconds: float) -> None:
        """Signal handler: a site said to wait (Retry-After): every node waits (in Redis)."""
        if self.queue is not None:
            task = asyncio.ensure_future(self._pause(site, seconds))
            self.notes.add(task)
            task.add_done_callback(self.notes.discard)

    async def _pause(self, site: str, seconds: float) -> None:
        assert self.queue is not None
        try:
            await self.queue.pause(site, seconds)
            self.stats.inc_value("distributed/sites_paused")
        except REDIS_ERRORS as exc:
            logger.warning(
                "%(site)s asked to wait %(s).0f s; other nodes could not be told (Redis: "
                "%(error)s): this node waits alone",
                {"site": site, "s": seconds, "error": describe(exc)},
            )

    def request_left_downloader(self, request: Request, **kwargs: Any) -> None:
        """Signal handler: a download ended (a response or an error): its site has room
        on this node for the next request."""
        token = request.meta.get(LEASE)
        if token is not None:
            self.leases.fetched(token)

    def request_done(self, request: Request, list_failed: bool = False) -> None:
        """Signal handler: the request's outcome is stored; acknowledge its lease. A list
        page that failed is noted in the crawl's generation first (its children were
        missed: scraper/recrawl.py marks nothing gone then)."""
        if list_failed and self.queue is not None:
            task = asyncio.ensure_future(self._note_list_failed(request))
            self.notes.add(task)
            task.add_done_callback(self.notes.discard)
            return
        if self.leases.done(request.meta.get(LEASE)) and len(self.leases.acks) >= self.batch:
            self._wake_pump()

    async def _note_list_failed(self, request: Request) -> None:
        assert self.queue is not None
        try:
            await self.queue.note_list_failed()
        except REDIS_ERRORS as exc:
            logger.error(
                "A failed list page could not be noted in Redis (%(error)s): this crawl may "
                "mark children gone that it missed",
                {"error": describe(exc)},
            )
        self.request_done(request)

    def spider_idle(self) -> None:
        """Close only when the whole crawl is done, not when this node runs dry."""
        if not self.buffers.empty() or self.leases.acks or self.notes:
            raise DontCloseSpider
        if self.leases.held:
            # The engine is idle, so nothing this node holds is in progress: a request
            # ended without an outcome (dropped by a middleware). Let its lease go.
            self.stats.inc_value("distributed/orphan_acks", self.leases.let_go())
            raise DontCloseSpider
        if self.wait_for_start_urls or self.pump is None:
            raise DontCloseSpider
        now = time.monotonic()
        self.idle_since = self.idle_since or now
        if not self.pump.status_is_fresh():
            raise DontCloseSpider  # wait for a status taken after our last acknowledgements
        status = self.pump.status
        assert status is not None
        if status.drained and (status.seen > 0 or now - self.idle_since > self.idle_timeout):
            return
        raise DontCloseSpider

    def ask_idle(self) -> None:
        """Ask the spider_idle question now, as the engine would on its next heartbeat:
        when the engine is idle and no handler says to wait, close the spider. Scrapy has
        no public call to wake the engine; this uses only its public API."""
        engine = self.crawler.engine
        try:
            if self.pump is None or engine.spider is None or not engine.spider_is_idle():
                return
        except RuntimeError:  # the engine has closed the spider already
            return
        results = self.crawler.signals.send_catch_log(
            signals.spider_idle, spider=self.spider, dont_log=(DontCloseSpider, CloseSpider)
        )
        reason = "finished"
        for _, result in results:
            failure = getattr(result, "value", None)
            if isinstance(failure, DontCloseSpider):
                return
            if isinstance(failure, CloseSpider):
                reason = failure.reason
        self.pump.close_spider(reason)

    def _wake_pump(self) -> None:
        if self.pump is not None:
            self.pump.wake.set()
