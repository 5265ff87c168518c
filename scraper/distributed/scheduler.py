"""DistributedScheduler: many nodes, one crawl, fed by one Redis.

Switched on by ``-s REDIS_URL=redis://host:port/db`` (see ListingSpider.update_settings).

The engine talks to the scheduler synchronously and often (several calls per page);
none of those calls touches Redis. They read and fill local buffers, and one
background task (the pump) moves batches between the buffers and Redis, each move one
atomic Lua script (scraper.distributed.queue):

- leased requests are prefetched into ``local`` (up to REDIS_PREFETCH, 100: the engine
  starts all it is given, and a thousand requests started together come back together,
  a burst of responses that costs more memory and GC than a steady flow);
- requests the crawl yields go to ``outbox``, enqueued with the dedup check in one call;
- finished requests' lease tokens go to ``acks``, sent after the outbox, so a list page
  is acknowledged only once its children are in Redis;
- the chores, each on its own clock (``Every``): every second (every 0.2 s while the
  node has nothing) the crawl's status; every second a heartbeat; every lease/3 the
  node's leases are extended; every lease/4 (at most 5 s) expired leases (of dead
  nodes) are put back. A LEASE that finds nothing is asked again after a
  wait that doubles from 20 ms to 1 s, cut short when the status shows work.

Anything found in Redis that this crawl did not write (a pickle, broken or oversized
JSON, bytes that are not UTF-8, a lease without data, a heartbeat that is not one) is
skipped, logged ("... that is not ours") and counted (``distributed/rejected/<key>``);
nothing read from Redis is ever run as code (see scraper.distributed.codec).

If Redis goes away, the pump waits and retries with backoff; the buffers keep
everything meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from scrapy import Request, signals
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.defer import deferred_from_coro

from scraper.config import ConfigError, stop_crawl
from scraper.distributed.codec import BadEntry, decode, encode, entry_request, start_url
from scraper.distributed.queue import BloomFilter, CrawlQueue, CrawlStatus
from scraper.distributed.tracking import FOUND_BY, request_done
from scraper.retry import describe
from scraper.stores import redact

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Spider
    from scrapy.crawler import Crawler
    from twisted.internet.defer import Deferred

logger = logging.getLogger(__name__)

OUTAGE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
#: Seconds between LEASE calls that find nothing, at most (the wait doubles from 20 ms).
IDLE_LEASE_WAIT_MAX = 1.0
#: Seconds between reads of the crawl's status: while this node has requests, and while
#: it has none (it waits for work, or for the crawl to end).
STATUS_EVERY, STATUS_EVERY_IDLE = 1.0, 0.2
#: Seconds between reads of every node's heartbeat (with the status), and between this
#: node's own heartbeats.
NODES_EVERY, HEARTBEAT_EVERY = 5.0, 1.0


class Every:
    """A chore's clock: ``due(now)`` is True, and restarts the clock, once ``seconds``
    have passed since the last time it was."""

    def __init__(self, seconds: float, last: float = float("-inf")) -> None:
        self.seconds = seconds
        self.last = last

    def due(self, now: float, seconds: float | None = None) -> bool:
        if now - self.last < (self.seconds if seconds is None else seconds):
            return False
        self.last = now
        return True


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
        redis_url: str,
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
        self.redis_url = redis_url
        self.config_error = config_error
        self.prefetch = max(1, prefetch)
        self.lease_ms = int(lease_seconds * 1000)
        # How often expired leases are reclaimed and (by one node at a time) swept.
        self.chore_seconds = min(5.0, lease_seconds / 4)
        # The pump's chores, besides moving the buffers (see _cycle).
        self.every_status = Every(STATUS_EVERY)
        self.every_nodes = Every(NODES_EVERY)
        self.every_heartbeat = Every(HEARTBEAT_EVERY)
        self.every_extend = Every(lease_seconds / 3)
        self.every_reclaim = Every(self.chore_seconds)
        self.every_sweep = Every(self.chore_seconds)
        self.max_attempts = max_attempts
        self.idle_timeout = idle_timeout
        self.wait_for_start_urls = wait_for_start_urls
        self.batch = batch
        self.bloom = bloom
        self.node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.local: deque[Request] = deque()
        # (fingerprint, priority, JSON, the request: signalled as dropped if Redis saw it)
        self.outbox: list[tuple[str, int, str, Request]] = []
        self.outbox_leased: list[tuple[str, int, str, str]] = []
        self.found = itertools.count()
        self.acks: list[str] = []
        self.held: set[str] = set()
        self.lost: set[str] = set()  # held, in flight, but reclaimed by other nodes
        self.status: CrawlStatus | None = None
        self.status_at = 0.0
        self.flushed_at = 0.0
        self.idle_since: float | None = None
        self.closing = False
        self.next_lease = 0.0  # monotonic time of the next LEASE call
        self.lease_wait = 0.0
        self.wake = asyncio.Event()
        self.started = time.monotonic()
        self.pump: asyncio.Task[None] | None = None
        self.stopping: asyncio.Future[None] | None = None
        self.spider: Spider | None = None
        self.redis: Redis | None = None
        self.queue: CrawlQueue | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        s = crawler.settings
        try:  # a setting that cannot work stops the crawl at open, with one line
            bloom, config_error = _bloom(s), None
        except ConfigError as exc:
            bloom, config_error = None, exc
        return cls(
            crawler,
            s.get("REDIS_URL"),
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
        return bool(self.local)

    def __len__(self) -> int:
        return len(self.local)

    def enqueue_request(self, request: Request) -> bool:
        assert self.spider is not None
        if "_lease" in request.meta:
            # A retry or redirect of a request this node leased: it stays here, under the
            # same lease, and is acknowledged when it is done.
            self.local.appendleft(request)
            self.stats.inc_value("scheduler/enqueued")
            return True
        fingerprint = (
            ""
            if request.dont_filter
            else self.crawler.request_fingerprinter.fingerprint(request).hex()
        )
        if request.priority > 0 and request.meta.pop(FOUND_BY, None) in self.held:
            # A list page found while crawling one this node holds: it feeds the whole
            # crawl, so this node crawls it now, leased to itself in Redis by the next
            # flush (before the page that found it is acknowledged). A round trip through
            # the queue would stall the list-page chain behind the reactor's backlog
            # (measured: ~100 ms a page). Start requests (`-a url=`, start_urls) are not
            # found pages: they go through the queue's dedup first, or a list page already
            # queued would be crawled twice, and with it its whole chain of next pages.
            token = f"{self.node}:f{next(self.found)}"
            request.meta["_lease"] = token
            self.held.add(token)
            self.local.appendleft(request)
            self.outbox_leased.append(
                (fingerprint, request.priority, encode(request, self.spider), token)
            )
            self.stats.inc_value("distributed/enqueued")
            self.stats.inc_value("scheduler/enqueued")
            self.wake.set()
            return True
        self.outbox.append((fingerprint, request.priority, encode(request, self.spider), request))
        self.stats.inc_value("distributed/enqueued")
        self.wake.set()
        return True

    def next_request(self) -> Request | None:
        if not self.local:
            return None
        self.stats.inc_value("distributed/dequeued")
        self.stats.inc_value("scheduler/dequeued")
        return self.local.popleft()

    # --- lifecycle ------------------------------------------------------------------------

    async def _open(self, spider: Spider) -> None:
        self.spider = spider
        if self.config_error is not None:
            self._stop_once_open(self.config_error.setting, self.config_error)
            return
        self.redis = Redis.from_url(
            self.redis_url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=15
        )
        self.queue = CrawlQueue(self.redis, spider.name, self.bloom)
        try:
            await self.redis.ping()
        except RedisError as exc:
            why = f"{redact(self.redis_url)}: {describe(exc)}"
            self._stop_once_open("REDIS_URL", why, reason="redis_unusable")
            return
        self.crawler.signals.connect(self.spider_idle, signal=signals.spider_idle)
        self.crawler.signals.connect(self.request_done, signal=request_done)
        logger.info(
            "Distributed crawl: node %(node)s on %(url)s, keys %(prefix)s:*",
            {"node": self.node, "url": redact(self.redis_url), "prefix": spider.name},
        )
        self.pump = asyncio.ensure_future(self._pump())

    def _stop_once_open(self, setting: str, why: object, reason: str | None = None) -> None:
        """Stop the crawl with one line as soon as the engine has opened it. Stopping from
        the scheduler's own open, before the engine has opened the rest, made Scrapy fail
        its close with a traceback ("Scraper slot not assigned"). Meanwhile nothing is
        sent: without the pump, requests stay in the buffers."""

        def stop() -> None:
            raise stop_crawl(logger, setting, why, reason)

        self.crawler.signals.connect(stop, signal=signals.spider_opened, weak=False)

    async def _close(self, reason: str) -> None:
        self.closing = True
        if self.pump is None:  # never started (stopped at open): nothing to hand back
            if self.redis is not None:
                await self.redis.aclose()
            return
        await self.pump
        assert self.queue is not None and self.redis is not None
        # Requests leased but never started go back now; in-flight ones have finished
        # (the engine closes the scheduler last) or their leases will expire.
        unstarted = [r.meta["_lease"] for r in self.local if "_lease" in r.meta]
        try:
            await self._flush()
            returned = await self.queue.release(unstarted)
            self.stats.inc_value("distributed/released", returned)
            await self.redis.hdel(self.queue.keys.nodes, self.node)
        except (*OUTAGE, RedisError) as exc:
            logger.error(
                "Redis unreachable at close (%(error)s): %(n)d leases will expire and "
                "be crawled by another node",
                {"error": describe(exc), "n": len(self.held)},
            )
        await self.redis.aclose()

    def request_done(self, request: Request) -> None:
        """Signal handler: the request's outcome is stored; acknowledge its lease."""
        token = request.meta.get("_lease")
        if token in self.held:
            self.held.discard(token)
            self.lost.discard(token)
            self.acks.append(token)
            if len(self.acks) >= self.batch:
                self.wake.set()

    def spider_idle(self) -> None:
        """Close only when the whole crawl is done, not when this node runs dry."""
        if self.local or self.outbox or self.outbox_leased or self.acks:
            raise DontCloseSpider
        if self.held:
            # The engine is idle, so nothing this node holds is in progress: a request
            # ended without an outcome (dropped by a middleware). Let its lease go.
            self.stats.inc_value("distributed/orphan_acks", len(self.held))
            self.acks.extend(self.held)
            self.held.clear()
            self.lost.clear()
            raise DontCloseSpider
        if self.wait_for_start_urls:
            raise DontCloseSpider
        now = time.monotonic()
        self.idle_since = self.idle_since or now
        status = self.status
        if status is None or self.status_at <= self.flushed_at:
            raise DontCloseSpider  # wait for a status taken after our last acknowledgements
        if status.drained and (status.seen > 0 or now - self.idle_since > self.idle_timeout):
            return
        raise DontCloseSpider

    # --- the pump ---------------------------------------------------------------------

    async def _pump(self) -> None:
        backoff, last_warning = 0.5, 0.0
        self.every_extend.last = time.monotonic()  # leases are fresh: extend them in lease/3
        while not self.closing:
            try:
                worked = await self._cycle()
                backoff = 0.5
            except (*OUTAGE, RedisError) as exc:
                # An outage, or a call Redis refused (a key of the wrong type, say): both may
                # be fixed while the node waits with its buffers, so it retries.
                self.stats.inc_value("distributed/redis_errors")
                if time.monotonic() - last_warning > 10:
                    last_warning = time.monotonic()
                    what = "unreachable" if isinstance(exc, OUTAGE) else "refused a call"
                    logger.warning(
                        "Redis %(what)s (%(error)s): retrying; the node keeps its "
                        "buffers, nothing is lost",
                        {"what": what, "error": describe(exc)},
                    )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10)
                continue
            except Exception:
                # A bug: stop the node with the traceback rather than wait forever without
                # the pump (its leases expire and another node takes them).
                logger.exception("Distributed scheduler failed; closing the spider")
                self._stop("distributed_error")
                return
            if worked:
                await asyncio.sleep(0)
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.02)

    async def _cycle(self) -> bool:
        """One round: flush, refill, and the chores that are due. True if it moved
        anything."""
        worked = await self._flush()
        now = time.monotonic()
        if len(self.local) < self.prefetch // 2 + 1 and now >= self.next_lease:
            worked |= await self._lease_more(now)
        if self.every_status.due(now, STATUS_EVERY if self.local else STATUS_EVERY_IDLE):
            await self._read_status(now)
        if self.every_extend.due(now):
            await self._extend_leases()
        if self.every_reclaim.due(now):
            await self._reclaim()
        if self._waiting_for_other_nodes() and self.every_sweep.due(now):
            await self._sweep()
        return worked

    async def _lease_more(self, now: float) -> bool:
        if await self._refill():
            self.lease_wait = 0.0
            return True
        # Nothing to lease: ask less and less often (an idle node asked 50 times a second,
        # measured: most of what 100 idle nodes would cost Redis). Work showing up in the
        # status, or enqueued by this node, asks again at once.
        self.lease_wait = min(max(0.02, 2 * self.lease_wait), IDLE_LEASE_WAIT_MAX)
        self.next_lease = now + self.lease_wait
        return False

    async def _read_status(self, now: float) -> None:
        """The crawl's status, taken after this cycle's flush (the pump is the only one
        that flushes); the heartbeats (read to reject entries that are not ours) only every
        NODES_EVERY; this node's own heartbeat."""
        assert self.queue is not None
        self.status = status = await self.queue.status(nodes=self.every_nodes.due(now))
        self.status_at = now
        if status.queued or status.start_urls:
            self.next_lease = 0.0
        if status.bad_nodes:
            await self._reject_nodes(status.bad_nodes)
        if self.every_heartbeat.due(now):
            await self.queue.heartbeat(self.node, self._heartbeat_info(), 3 * self.lease_ms)
        if status.drained:
            # The engine asks spider_idle again only on its next event or its 5 s
            # heartbeat; the crawl may be complete now, so let it ask now.
            self._wake_engine()

    async def _extend_leases(self) -> None:
        assert self.queue is not None
        # Leases found on list pages wait in the outbox until the flush takes them to
        # Redis: not there yet is not lost.
        pending = {token for *_, token in self.outbox_leased}
        lost = await self.queue.extend(sorted(self.held - self.lost - pending), self.lease_ms)
        if lost:
            self._lost_leases(set(lost))

    async def _reclaim(self) -> None:
        """Put back the expired leases of other nodes (dead or stalled)."""
        assert self.queue is not None
        returned, dead = await self.queue.reclaim(
            self.max_attempts, on_unreadable=self._reject_lease_data
        )
        if returned or dead:
            self.stats.inc_value("distributed/reclaimed", returned)
            logger.info(
                "Reclaimed %(n)d expired leases (a node died or stalled)%(dead)s",
                {"n": returned, "dead": f", {dead} to :dead" if dead else ""},
            )
        if dead:
            self.stats.inc_value("distributed/dead", dead)

    def _waiting_for_other_nodes(self) -> bool:
        """Idle, with nothing queued: the crawl waits only for other nodes' leases (the
        sweep checks that they are leases)."""
        status = self.status
        return (
            status is not None
            and not self.local
            and not self.held
            and bool(status.leased)
            and not status.queued
            and not status.start_urls
        )

    def _lost_leases(self, lost: set[str]) -> None:
        """Leases that expired while this node could not reach Redis (a partition, a long
        pause) and were reclaimed: their requests belong to other nodes now.

        Those not started yet are dropped here (another node crawls them). Those in
        flight are finished (stored again, idempotently: same key, same record) and
        their acknowledgements are sent and refused by Redis, which knows the lease
        token is no longer this node's.
        """
        dropped = self._drop_unstarted(lost)
        self.held -= dropped
        lost -= dropped
        self.lost |= lost
        self.stats.inc_value("distributed/leases_lost", len(dropped) + len(lost))
        logger.warning(
            "%(n)d leases of this node expired (Redis unreachable for longer than "
            "REDIS_LEASE_SECONDS) and were reclaimed by other nodes: %(dropped)d not started "
            "are dropped, %(inflight)d in flight will be stored again (idempotently) and their "
            "acknowledgements refused",
            {"n": len(dropped) + len(lost), "dropped": len(dropped), "inflight": len(lost)},
        )

    def _drop_unstarted(self, tokens: set[str]) -> set[str]:
        """Take the requests of these leases out of ``local`` (the engine has not started
        them); return their tokens."""
        dropped = {token for r in self.local if (token := r.meta.get("_lease")) in tokens}
        if dropped:
            self.local = deque(r for r in self.local if r.meta.get("_lease") not in dropped)
            # They were counted as enqueued for this node; they will not be dequeued.
            self.stats.inc_value("scheduler/enqueued", -len(dropped))
        return dropped

    async def _sweep(self) -> None:
        assert self.queue is not None
        dropped, kept = await self.queue.sweep(self.node, int(self.chore_seconds * 1000))
        for token in dropped:
            self._log_rejected("leases", f"{token!r} has no lease data; dropped")
        for token in kept:
            self._log_rejected(
                "leased", f"{token!r} has no lease deadline; moved to {self.queue.keys.dead}"
            )

    def _reject_lease_data(self, token: str) -> None:
        assert self.queue is not None
        self._log_rejected(
            "leased", f"{token!r} holds unreadable lease data; moved to {self.queue.keys.dead}"
        )

    async def _reject_nodes(self, bad: list[tuple[str, str]]) -> None:
        assert self.queue is not None
        await self.queue.forget_nodes([name for name, _ in bad])
        for name, why in bad:
            self._log_rejected("nodes", f"{name!r}: {why}; removed")

    async def _flush(self) -> bool:
        """Send the outboxes, then the acknowledgements (children before their list page).

        The acknowledgements sent are those queued when the flush began: whatever they
        depend on (a list page's children, a found page's lease) was queued before them,
        so it goes out first, in this flush. Later ones wait for the next.
        """
        assert self.queue is not None
        acks, self.acks = self.acks, []
        try:
            worked = await self._send_outboxes()
            if worked:
                self.next_lease = 0.0  # what it enqueued may be this node's to lease
            while acks:
                batch = acks[: self.batch]
                acked, refused = await self.queue.ack(batch)
                del acks[: len(batch)]
                self.stats.inc_value("distributed/acked", acked)
                self.stats.inc_value("distributed/redis_calls")
                if refused:
                    self.stats.inc_value("distributed/ack_refused", refused)
                    logger.warning(
                        "%(n)d late acknowledgements refused: those leases had "
                        "expired and were reclaimed by other nodes (the pages are "
                        "stored idempotently)",
                        {"n": refused},
                    )
                worked = True
        finally:
            self.acks[:0] = acks  # not sent (Redis went away): first in line next time
        if worked:
            self.flushed_at = time.monotonic()
        return worked

    async def _send_outboxes(self) -> bool:
        """Send what the outboxes held when called, not what arrives meanwhile: a list
        page's callback keeps adding while its children go out, and a pump that chased
        it would not refill until the whole page was parsed (measured: ~1 s idle per
        1,000-link page)."""
        assert self.queue is not None
        leased_n, queued_n = len(self.outbox_leased), len(self.outbox)
        worked = leased_n + queued_n > 0
        while leased_n > 0:
            leased = self.outbox_leased[: min(self.batch, leased_n)]
            seen = await self.queue.enqueue_leased(leased, self.lease_ms)
            del self.outbox_leased[: len(leased)]
            leased_n -= len(leased)
            self.stats.inc_value("distributed/redis_calls")
            if seen:  # found by another node first: it is crawled there
                self.held.difference_update(seen)
                self.stats.inc_value("distributed/filtered", len(seen))
                self._drop_unstarted(set(seen))  # if not started yet, not crawled here too
        while queued_n > 0:
            batch = self.outbox[: min(self.batch, queued_n)]
            positions = await self.queue.enqueue([entry[:3] for entry in batch])
            del self.outbox[: len(batch)]
            queued_n -= len(batch)
            self.stats.inc_value("distributed/filtered", len(positions))
            self.stats.inc_value("distributed/redis_calls")
            for i in positions:  # as Scrapy's engine does when its dupefilter drops a request
                self.crawler.signals.send_catch_log(
                    signals.request_dropped, request=batch[i][3], spider=self.spider
                )
        return worked

    async def _refill(self) -> bool:
        assert self.queue is not None and self.spider is not None
        want = self.prefetch - len(self.local)
        leased = await self.queue.lease(self.node, want, self.lease_ms, start_n=10)
        self.stats.inc_value("distributed/redis_calls")
        if not leased:
            return False
        for entry in leased:
            if entry.error is not None:
                self._reject(
                    entry.token,
                    "start_urls" if entry.kind == "start" else "requests",
                    BadEntry(entry.error),
                )
                continue
            if entry.kind == "start":
                self._start(entry.token, entry.payload)
                continue
            try:
                request = decode(entry_request(entry.payload), self.spider)
            except BadEntry as exc:
                self._reject(entry.token, "requests", exc)
                continue
            request.meta["_lease"] = entry.token
            self.held.add(entry.token)
            if request.priority > 0 and self.local and request.priority > self.local[0].priority:
                self.local.appendleft(request)
            else:
                self.local.append(request)
            self.stats.inc_value("scheduler/enqueued")  # work this node will dequeue
        self.stats.inc_value("distributed/leased", len(leased))
        self._wake_engine()
        return True

    def _start(self, token: str, payload: str) -> None:
        """A start URL: its list request goes to the shared queue, then the URL is acked."""
        assert self.spider is not None
        try:
            url, meta = start_url(payload)
        except BadEntry as exc:
            self._reject(token, "start_urls", exc)
            return
        make = getattr(self.spider, "request_for_start_url", None)
        request = make(url) if make else Request(url)
        request.meta.update(meta)
        self.enqueue_request(request)
        self.acks.append(token)
        self.stats.inc_value("distributed/start_urls")

    def _reject(self, token: str, key: str, exc: BadEntry) -> None:
        self._log_rejected(key, str(exc))
        self.acks.append(token)

    def _log_rejected(self, key: str, why: str) -> None:
        assert self.queue is not None
        logger.error(
            "Skipped an entry of %(key)s that is not ours: %(error)s",
            {"key": getattr(self.queue.keys, key), "error": why},
        )
        self.stats.inc_value(f"distributed/rejected/{key}")

    def _stop(self, reason: str) -> None:
        engine = self.crawler.engine
        if engine is not None and engine.spider is not None:
            self.stopping = asyncio.ensure_future(engine.close_spider_async(reason=reason))

    def _heartbeat_info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "stored": self.stats.get_value("meta_store/written", 0),
            "leased": len(self.held),
            "buffered": len(self.local),
            "up_seconds": round(time.monotonic() - self.started, 1),
        }

    def _wake_engine(self) -> None:
        # The engine asks for requests when something happens or every 5 s; new leases
        # are something happening. (Scrapy has no public hook for this.)
        slot = getattr(self.crawler.engine, "_slot", None)
        if slot is not None:
            slot.nextcall.schedule()
