"""The pump: one background task per node that moves the buffers to and from Redis.

Each round (``_cycle``) flushes the outboxes and the acknowledgements, leases more when
``local`` runs low (from each partition in turn, round-robin across its sites: queue.Pace), and
runs the chores that are due, each on its own clock (``Every``):

- every STATUS_EVERY (STATUS_EVERY_IDLE while the node holds no lease) the crawl's status,
  with every NODES_EVERY the heartbeats of all nodes, and every HEARTBEAT_EVERY this
  node's own heartbeat;
- every lease/3 the node's leases are extended;
- every lease/4 (at most 5 s) expired leases (of dead nodes) are put back, and, while
  the crawl waits only for other nodes, leftovers of crashed scripts are swept.

A LEASE that finds nothing is asked again after a wait that doubles from 20 ms to
IDLE_LEASE_WAIT_MAX, cut short when the status shows work. With many sites, a node
takes of each site only what its downloader slot can start soon (``_room``: twice the
site's concurrency, less what is queued or downloading there); a download that ends frees
a place, and the pump leases again (at most every ROOM_LEASE_GAP) without waiting for the
page to be stored and acknowledged.

If Redis goes away, the pump waits and retries with backoff; the buffers keep everything
meanwhile. A bug (any other exception) closes the spider with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Literal

from scrapy import Request, signals

from scraper.distributed.codec import BadEntry, decode, entry_request, start_url
from scraper.distributed.connection import REDIS_ERRORS, is_outage
from scraper.distributed.heartbeat import NodeReport, NodeState
from scraper.distributed.leases import LEASE
from scraper.distributed.upkeep import LeaseUpkeep
from scraper.figures import Rate, read_figures
from scraper.retry import describe
from scraper.sites import request_site

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy import Spider
    from scrapy.crawler import Crawler

    from scraper.distributed.buffers import Buffers
    from scraper.distributed.counts import CrawlStatus
    from scraper.distributed.leases import Leases
    from scraper.distributed.queue import CrawlQueue, Leased, Pace

logger = logging.getLogger(__name__)

#: Seconds between LEASE calls that find nothing, at most (the wait doubles from 20 ms).
IDLE_LEASE_WAIT_MAX = 1.0
#: Seconds between reads of the crawl's status: while this node holds leases, and while
#: it holds none (it waits for work, or for the crawl to end). On a cluster a read is a
#: call per partition (24), so the busy cadence is most of what a node asks of Redis.
STATUS_EVERY, STATUS_EVERY_IDLE = 1.0, 0.2
#: Seconds between reads of every node's heartbeat (with the status), and between this
#: node's own heartbeats.
NODES_EVERY, HEARTBEAT_EVERY = 5.0, 1.0
#: Seconds over which a heartbeat's pages/s is measured.
RATE_WINDOW = 5.0
#: Seconds between LEASE calls, at least, when downloads ending free room for sites that
#: were full (many sites: a site's room is its share of the node, scraper/sites.py).
ROOM_LEASE_GAP = 0.05
#: Start URLs taken per LEASE call, besides requests.
START_URLS_PER_LEASE = 10


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


class Pump:
    """Moves one node's buffers and leases to and from its crawl's queue in Redis."""

    def __init__(
        self,
        crawler: Crawler,
        spider: Spider,
        queue: CrawlQueue,
        buffers: Buffers,
        leases: Leases,
        *,
        prefetch: int,
        lease_seconds: float,
        max_attempts: int,
        batch: int,
        pace: Pace,
        on_drained: Callable[[], None],
        on_listings: Callable[[list[str]], None],
    ) -> None:
        self.crawler, self.spider, self.queue = crawler, spider, queue
        self.buffers, self.leases = buffers, leases
        self.prefetch = prefetch
        self.lease_ms = int(lease_seconds * 1000)
        self.batch = batch
        self.pace = pace
        self.next_partition = 0  # the partition the next LEASE round starts with
        self.enqueued_to: set[int] = set()  # partitions this node queued into since the status
        self.on_drained = on_drained
        self.on_listings = on_listings
        self.listings_seen = -1  # the size of the crawl's set of listings at the last look
        # How often expired leases are reclaimed and (by one node at a time) swept.
        self.chore_seconds = min(5.0, lease_seconds / 4)
        self.every_status = Every(STATUS_EVERY)
        self.every_nodes = Every(NODES_EVERY)
        self.every_heartbeat = Every(HEARTBEAT_EVERY)
        self.every_extend = Every(lease_seconds / 3)
        self.every_reclaim = Every(self.chore_seconds)
        self.every_sweep = Every(self.chore_seconds)
        self.upkeep = LeaseUpkeep(
            queue,
            leases,
            buffers,
            crawler.stats,
            lease_ms=self.lease_ms,
            max_attempts=max_attempts,
            sweep_ms=int(self.chore_seconds * 1000),
        )
        self.status: CrawlStatus | None = None
        self.status_at = 0.0
        self.flushed_at = 0.0
        self.next_lease = 0.0  # monotonic time of the next LEASE call
        self.leased_at = 0.0  # monotonic time of the last one
        # Outbox batches sent and not answered yet (_next_batch), and their ids' counter.
        self.unanswered: dict[str, tuple[str, int]] = {}
        self.batch_ids = itertools.count()
        self.lease_wait = 0.0
        self.started = time.monotonic()
        self.rate = Rate(RATE_WINDOW)
        self.wake = asyncio.Event()
        self.stopping = False
        self.task: asyncio.Task[None] | None = None
        self.closing_spider: asyncio.Future[None] | None = None

    @property
    def stats(self) -> Any:
        return self.crawler.stats

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            await self.task
        self.stats.set_value("distributed/redis_calls", self.queue.calls.n)

    def status_is_fresh(self) -> bool:
        """A status was read after this node's last flush (its acknowledgements count)."""
        return self.status is not None and self.status_at > self.flushed_at

    async def _run(self) -> None:
        backoff, last_warning = 0.5, 0.0
        self.every_extend.last = time.monotonic()  # leases are fresh: extend them in lease/3
        while not self.stopping:
            try:
                worked = await self._cycle()
                backoff = 0.5
            except REDIS_ERRORS as exc:
                # An outage, or a call Redis refused (a key of the wrong type, say): both may
                # be fixed while the node waits with its buffers, so it retries.
                self.stats.inc_value("distributed/redis_errors")
                if time.monotonic() - last_warning > 10:
                    last_warning = time.monotonic()
                    what = "unreachable" if is_outage(exc) else "refused a call"
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
                self.close_spider("distributed_error")
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
        worked = await self.flush()
        now = time.monotonic()
        if self.buffers.unstarted() < self.prefetch // 2 + 1 and (
            now >= self.next_lease or self._room_freed(now)
        ):
            worked |= await self._lease_more(now)
        # Busy: it holds requests, whether still here or already in the downloader (with
        # many sites the engine takes them at once into its slots' queues).
        busy = self.buffers.unstarted() > 0 or bool(self.leases.held)
        if self.every_status.due(now, STATUS_EVERY if busy else STATUS_EVERY_IDLE):
            await self._read_status(now)
        if self.every_extend.due(now):
            await self.upkeep.extend()
        if self.every_reclaim.due(now):
            await self.upkeep.reclaim()
        if self._waiting_for_other_nodes() and self.every_sweep.due(now):
            await self.upkeep.sweep()
        self.stats.set_value("distributed/redis_calls", self.queue.calls.n)
        return worked

    # --- moving requests ----------------------------------------------------------------

    async def flush(self) -> bool:
        """Send the outboxes, then the acknowledgements (children before their list page).

        The acknowledgements sent are those queued when the flush began: whatever they
        depend on (a list page's children, a found page's lease) was queued before them,
        so it goes out first, in this flush. Later ones wait for the next.
        """
        acks = self.leases.take_acks()
        try:
            worked = await self._send_outboxes()
            if worked:
                self.next_lease = 0.0  # what it enqueued may be this node's to lease
            while acks:
                batch = acks[: self.batch]
                acked, refused = await self.queue.ack(batch)
                del acks[: len(batch)]
                self.stats.inc_value("distributed/acked", acked)
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
            self.leases.unsent(acks)  # not sent (Redis went away): first in line next time
        if worked:
            self.flushed_at = time.monotonic()
        return worked

    async def _send_outboxes(self) -> bool:
        """Send what the outboxes held when called, not what arrives meanwhile: a list
        page's callback keeps adding while its children go out, and a pump that chased
        it would not refill until the whole page was parsed (measured: ~1 s idle per
        1,000-link page)."""
        buffers = self.buffers
        leased_n, queued_n = len(buffers.outbox_leased), len(buffers.outbox)
        worked = leased_n + queued_n > 0
        while leased_n > 0:
            batch_id, size = self._next_batch("leased", leased_n)
            leased = buffers.outbox_leased[:size]
            seen = await self.queue.enqueue_leased(leased, self.lease_ms, batch_id)
            del self.unanswered["leased"]  # answered
            del buffers.outbox_leased[: len(leased)]
            leased_n -= len(leased)
            if seen:  # found by another node first: it is crawled there
                self.leases.forget(seen)
                self.stats.inc_value("distributed/filtered", len(seen))
                self.upkeep.drop_unstarted(set(seen))  # if not started yet, not crawled here too
        while queued_n > 0:
            batch_id, size = self._next_batch("queued", queued_n)
            batch = buffers.outbox[:size]
            positions = await self.queue.enqueue([entry[:4] for entry in batch], batch_id)
            self.enqueued_to.update(self.queue.partition(entry.site) for entry in batch)
            del self.unanswered["queued"]  # answered
            del buffers.outbox[: len(batch)]
            queued_n -= len(batch)
            self.stats.inc_value("distributed/filtered", len(positions))
            for i in positions:  # as Scrapy's engine does when its dupefilter drops a request
                self.crawler.signals.send_catch_log(
                    signals.request_dropped, request=batch[i].request, spider=self.spider
                )
        return worked

    def _next_batch(self, outbox: Literal["leased", "queued"], waiting: int) -> tuple[str, int]:
        """The id and size of an outbox's next batch: the one sent last, if Redis's answer
        to it was lost (an outage). Only the pump takes from the outboxes, so that batch
        is still at their head; sent again under its id, it gets the answer Redis kept
        (lua/answer.lua), not "seen" for the requests its first call added."""
        if outbox not in self.unanswered:
            batch_id = f"{self.leases.node}:{next(self.batch_ids)}"
            self.unanswered[outbox] = (batch_id, min(self.batch, waiting))
        return self.unanswered[outbox]

    async def _lease_more(self, now: float) -> bool:
        if await self.refill():
            self.lease_wait = 0.0
            return True
        # Nothing to lease: ask less and less often (an idle node asked 50 times a second,
        # measured: most of what 100 idle nodes would cost Redis). Work showing up in the
        # status, or enqueued by this node, asks again at once.
        self.lease_wait = min(max(0.02, 2 * self.lease_wait), IDLE_LEASE_WAIT_MAX)
        self.next_lease = now + self.lease_wait
        return False

    def _room_freed(self, now: float) -> bool:
        """Many sites: downloads ended since the last LEASE, so sites that were full have
        room; lease again without waiting out the idle backoff, at most every
        ROOM_LEASE_GAP."""
        return (
            self.leases.freed > 0
            and self.pace.per_site < self.prefetch
            and now - self.leased_at >= ROOM_LEASE_GAP
        )

    async def refill(self) -> bool:
        """Lease requests (and start URLs) up to ``prefetch`` from the partitions in turn,
        and hand them to the engine: through ``engine.crawl``, which also wakes it."""
        self.leases.freed, self.leased_at = 0, time.monotonic()
        want = self.prefetch - self.buffers.unstarted()
        got, parts = 0, len(self.queue.parts)
        for i in range(parts):
            k = (self.next_partition + i) % parts
            if not self._may_have_work(k):
                continue
            leased = await self.queue.lease(
                k,
                self.leases.node,
                want - got,
                self.lease_ms,
                start_n=START_URLS_PER_LEASE,
                pace=self.pace,
                room=self._room(),
            )
            self._take(leased)
            got += len(leased)
            if got >= want:
                self.next_partition = (k + 1) % parts
                break
        return got > 0

    def _may_have_work(self, partition: int) -> bool:
        """Whether a LEASE in ``partition`` may find anything: it had work at the last
        status, or this node queued requests there since (a crawl on a cluster has 24
        partitions; a one-site crawl's requests are all in one)."""
        status = self.status
        if status is None or len(self.queue.parts) == 1:
            return True
        return partition in status.busy or partition in self.enqueued_to

    def _room(self) -> dict[str, int]:
        """What this node can still take of each site it holds requests of: none of a
        site with ``per_site`` queued or downloading here (the rest stays in Redis for
        other nodes)."""
        per_site = self.pace.per_site
        if per_site >= self.prefetch:  # one site: no limit
            return {}
        return {site: max(0, per_site - n) for site, n in self.leases.per_site.items()}

    def _take(self, leased: list[Leased]) -> None:
        """Hand leased entries to the engine; a paced site's wait until their start."""
        loop = asyncio.get_running_loop()
        for entry in leased:
            if entry.error is not None:
                key = "start_urls" if entry.kind == "start" else "requests"
                self._reject(entry.token, key, BadEntry(entry.error))
            elif entry.kind == "start":
                self._start(entry.token, entry.payload)
            else:
                try:
                    request = decode(entry_request(entry.payload), self.spider)
                except BadEntry as exc:
                    self._reject(entry.token, "requests", exc)
                    continue
                request.meta[LEASE] = entry.token
                self.leases.hold(entry.token, request_site(request))
                if entry.wait_ms > 0:  # a paced site's: handed over at its start time
                    self.buffers.hold(request)
                    loop.call_later(entry.wait_ms / 1000, self._start_later, entry.token)
                else:
                    self.crawler.engine.crawl(request)
        self.stats.inc_value("distributed/leased", len(leased))

    def _start_later(self, token: str) -> None:
        request = self.buffers.due(token)
        if request is not None and not self.stopping:  # else released at close
            self.crawler.engine.crawl(request)

    def _start(self, token: str, payload: str) -> None:
        """A start URL: its list request goes to the shared queue, then the URL is acked."""
        try:
            url, meta = start_url(payload)
        except BadEntry as exc:
            self._reject(token, "start_urls", exc)
            return
        self.on_listings([url])
        make = getattr(self.spider, "request_for_start_url", None)
        request = make(url) if make else Request(url)
        request.meta.update(meta)
        self.crawler.engine.crawl(request)
        self.leases.end(token)
        self.stats.inc_value("distributed/start_urls")

    # --- the chores ---------------------------------------------------------------------

    async def _read_status(self, now: float) -> None:
        """The crawl's status, taken after this cycle's flush (the pump is the only one
        that flushes); the heartbeats (read to reject entries that are not ours) only every
        NODES_EVERY; this node's own heartbeat."""
        self.enqueued_to = set()  # (before the read: what is queued meanwhile counts again)
        self.status = status = await self.queue.status(nodes=self.every_nodes.due(now))
        self.status_at = now
        if status.listings != self.listings_seen:  # a crawl seeded after the node started
            self.listings_seen = status.listings
            _, listings, _ = await self.queue.generation()
            self.on_listings(listings)
        if status.sites or status.start_urls:
            self.next_lease = 0.0
        if status.bad_nodes:
            await self._reject_nodes(status.bad_nodes)
        if self.every_heartbeat.due(now):
            await self.queue.heartbeat(self.leases.node, self.report("running"), 3 * self.lease_ms)
        if status.drained:
            # The crawl may be complete: the scheduler asks now rather than wait for
            # the engine's next event or its 5 s heartbeat.
            self.on_drained()

    def _waiting_for_other_nodes(self) -> bool:
        """Idle, with nothing queued: the crawl waits only for other nodes' leases (the
        sweep checks that they are leases)."""
        status = self.status
        return (
            status is not None
            and not self.buffers.unstarted()
            and not self.leases.held
            and bool(status.leased)
            and not status.sites
            and not status.start_urls
        )

    # --- entries that are not ours --------------------------------------------------------

    def _reject(self, token: str, key: str, exc: BadEntry) -> None:
        self.upkeep.log_rejected(key, str(exc))
        self.leases.end(token)

    async def _reject_nodes(self, bad: list[tuple[str, str]]) -> None:
        await self.queue.forget_nodes([name for name, _ in bad])
        for name, why in bad:
            self.upkeep.log_rejected("nodes", f"{name!r}: {why}; removed")

    # --- the engine -------------------------------------------------------------------

    def report(self, state: NodeState) -> dict[str, Any]:
        """This node's heartbeat (scraper/distributed/heartbeat.py); a closed node's rate
        is the average of its whole run."""
        now = time.monotonic()
        figures = read_figures(self.crawler)
        up = now - self.started
        rate = (
            self.rate.add(now, figures.written)
            if state == "running"
            else figures.written / max(up, 1e-9)
        )
        return NodeReport(
            pid=os.getpid(),
            host=socket.gethostname(),
            state=state,
            stored=figures.written,
            rate=round(rate, 1),
            errors=figures.errors,
            leased=len(self.leases),
            in_flight=figures.in_flight,
            buffered=self.buffers.unstarted(),
            up_seconds=round(up, 1),
        ).info()

    def close_spider(self, reason: str) -> None:
        engine = self.crawler.engine
        if engine is not None and engine.spider is not None:
            self.closing_spider = asyncio.ensure_future(engine.close_spider_async(reason=reason))
