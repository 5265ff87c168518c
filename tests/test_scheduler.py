"""The distributed scheduler, its leases and its pump, built in this process against the
session's redis-server: what a node acknowledges, when, and what it lets go.

The engine here is a stand-in with the two calls the scheduler makes of Scrapy's
(``crawl`` and ``spider_is_idle``); the pump is driven one step at a time. Whole crawls
through the real engine are in test_distributed.py (nodes as processes) and at the end
of this file (one node, in this process).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from scrapy import Request, signals
from scrapy.utils.defer import deferred_f_from_coro_f, maybe_deferred_to_future
from scrapy.utils.misc import load_object
from scrapy.utils.test import get_crawler

from scraper.addon import LEASE_TRACKER_ORDER
from scraper.distributed.buffers import Buffers
from scraper.distributed.leases import LEASE, YIELDED_BY, Leases
from scraper.distributed.queue import CrawlQueue
from scraper.distributed.scheduler import DistributedScheduler
from scraper.distributed.tracking import LeaseTracker
from scraper.signals import request_done
from scraper.spiders.listing import ListingSpider
from tests.helpers import Site, crawl, project_settings, records, store_settings

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class Engine:
    """What the scheduler asks of Scrapy's engine, and nothing else."""

    def __init__(self, spider: ListingSpider) -> None:
        self.spider = spider
        self.scheduler: DistributedScheduler | None = None
        # The downloader's requests in flight: a heartbeat reports them (none here).
        self.downloader = SimpleNamespace(active=set())

    def crawl(self, request: Request) -> None:
        assert self.scheduler is not None
        self.scheduler.enqueue_request(request)

    def spider_is_idle(self) -> bool:
        return False


class Node:
    """One node's scheduler, opened on the test's Redis, its pump not started."""

    def __init__(self, crawler: Crawler, scheduler: DistributedScheduler) -> None:
        self.crawler, self.scheduler = crawler, scheduler
        assert scheduler.pump is not None and scheduler.queue is not None
        self.pump, self.queue = scheduler.pump, scheduler.queue

    def stat(self, name: str) -> Any:
        assert self.crawler.stats is not None
        return self.crawler.stats.get_value(name, 0)

    def stored(self, request: Request) -> None:
        """The request's outcome is stored (what LeaseTracker signals)."""
        self.crawler.signals.send_catch_log(request_done, request=request)

    def request(self, path: str, priority: int = 0) -> Request:
        """A request the spider could have yielded (its callbacks are its own)."""
        spider = self.scheduler.spider
        assert isinstance(spider, ListingSpider)
        return Request(f"http://127.0.0.1:1{path}", callback=spider.parse_list, priority=priority)

    def take(self, n: int) -> list[Request]:
        """The engine starts ``n`` requests."""
        return [r for _ in range(n) if (r := self.scheduler.next_request()) is not None]


async def open_node(redis_url: str, **settings: Any) -> Node:
    crawler = get_crawler(ListingSpider, {"REDIS_URL": redis_url, **settings})
    spider = ListingSpider.from_crawler(crawler)
    crawler.spider = spider
    engine = Engine(spider)
    crawler.engine = engine  # type: ignore[assignment]
    scheduler = DistributedScheduler.from_crawler(crawler)
    engine.scheduler = scheduler
    await maybe_deferred_to_future(scheduler.open(spider))
    return Node(crawler, scheduler)


async def close_node(node: Node) -> None:
    node.pump.task = asyncio.ensure_future(asyncio.sleep(0))  # as if started: close flushes
    await maybe_deferred_to_future(node.scheduler.close("finished"))


def test_leases_from_lease_to_ack() -> None:
    leases = Leases("node-a")
    leases.hold("t1", "a.test")
    found = leases.hold_found(3, "a.test")
    assert found.startswith("3/node-a:f") and len(leases) == 2
    assert leases.per_site == {"a.test": 2}  # what the node holds of each site
    assert leases.done("t1") and not leases.done("t1")  # acknowledged once
    assert not leases.done("never-held") and not leases.done(None)
    assert leases.take_acks() == ["t1"] and leases.acks == []
    leases.unsent(["t1"])  # a flush that could not send it: first in line again
    leases.end("start-url")
    assert leases.take_acks() == ["t1", "start-url"]
    leases.hold("t2")
    leases.lose(unstarted=set(), in_flight={"t2"})
    assert leases.to_extend(not_in_redis_yet={found}) == []  # lost, or not written yet
    assert leases.let_go() == 2 and sorted(leases.acks) == sorted([found, "t2"])
    assert not leases.per_site  # nothing held, of any site


def test_a_lease_takes_a_place_of_its_site_until_its_download_ends() -> None:
    leases = Leases("node-a")
    leases.hold("t1", "a.test")
    leases.hold("t2", "a.test")
    leases.fetched("t1")  # downloaded: parsed and stored next, still held
    assert leases.per_site == {"a.test": 1} and leases.held == {"t1", "t2"}
    assert leases.freed == 1
    leases.fetching("t1", "a.test")  # a retry of it: back in the downloader
    leases.fetching("t2", "a.test")  # counted already: no change
    leases.fetching("gone", "a.test")  # not held: not counted
    assert leases.per_site == {"a.test": 2}
    leases.fetched("t1")
    assert leases.done("t1") and leases.done("t2")
    assert not leases.per_site


def test_buffers_keep_list_pages_ahead_and_drop_what_was_not_started() -> None:
    buffers = Buffers()
    for token, priority in [("a", 0), ("b", 0), ("list", 10), ("c", 0)]:
        buffers.keep(Request("http://x/", priority=priority, meta={LEASE: token}))
    assert [r.meta[LEASE] for r in buffers.local] == ["list", "a", "b", "c"]
    assert buffers.drop_unstarted({"a", "c", "elsewhere"}) == {"a", "c"}
    assert buffers.unstarted_leases() == ["list", "b"]


@deferred_f_from_coro_f
async def test_a_request_is_acknowledged_only_once_stored(redis_url: str) -> None:
    node = await open_node(redis_url)
    try:
        for n in range(3):
            node.scheduler.enqueue_request(node.request(f"/item/{n}"))
        assert await node.pump.flush()
        assert await node.pump.refill()
        started = node.take(3)
        assert [r.meta[LEASE] in node.scheduler.leases.held for r in started] == [True] * 3
        node.stored(started[0])
        node.stored(started[0])  # a second signal for it acknowledges nothing more
        await node.pump.flush()
        status = await node.queue.status()
        assert (status.queued, status.leased, node.stat("distributed/acked")) == (0, 2, 1)
    finally:
        await close_node(node)
    # Closed with two requests in flight and not stored: their leases stay, to expire and
    # be crawled by another node; nothing is acknowledged for them.
    client = Redis.from_url(redis_url)
    queue = CrawlQueue(client, "listing")
    assert (await queue.status()).leased == 2
    await client.aclose()


@deferred_f_from_coro_f
async def test_a_list_page_is_acknowledged_after_its_children_are_in_redis(
    redis_url: str,
) -> None:
    node = await open_node(redis_url)
    queued_at_ack: list[int] = []
    ack = node.queue.ack

    async def ack_watching(tokens: list[str]) -> tuple[int, int]:
        queued_at_ack.append((await node.queue.status()).queued)
        return await ack(tokens)

    node.queue.ack = ack_watching  # type: ignore[method-assign]
    try:
        node.scheduler.enqueue_request(node.request("/list", priority=10))
        await node.pump.flush()
        await node.pump.refill()
        (list_page,) = node.take(1)
        # Its callback yields 50 children, and its last item is stored, before any flush.
        for n in range(50):
            node.scheduler.enqueue_request(node.request(f"/item/{n}"))
        node.stored(list_page)
        await node.pump.flush()
        assert queued_at_ack == [50]
        assert node.stat("distributed/acked") == 1
    finally:
        await close_node(node)


@deferred_f_from_coro_f
async def test_children_whose_enqueue_answer_was_lost_are_not_counted_as_seen(
    redis_url: str,
) -> None:
    """Redis ran the ENQUEUE, then the connection dropped before its answer arrived (a
    restart): sent again, the same batch is answered as the first time, not "seen"."""
    node = await open_node(redis_url)
    dropped: list[Request] = []
    node.crawler.signals.connect(
        lambda request, **_: dropped.append(request), signal=signals.request_dropped, weak=False
    )
    enqueue = node.queue.enqueue
    calls: list[str | None] = []

    async def answer_lost(entries: Any, batch: str | None = None) -> list[int]:
        calls.append(batch)
        seen = await enqueue(entries, batch)
        if len(calls) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return seen

    node.queue.enqueue = answer_lost  # type: ignore[method-assign]
    try:
        for n in range(30):
            node.scheduler.enqueue_request(node.request(f"/item/{n}"))
        with pytest.raises(RedisConnectionError):
            await node.pump.flush()
        node.scheduler.enqueue_request(node.request("/item/30"))  # more, meanwhile
        await node.pump.flush()
        assert dropped == [] and node.stat("distributed/filtered") == 0
        assert (await node.queue.status()).queued == 31  # each once
        assert calls[0] == calls[1] and calls[2] != calls[0]  # the same batch, then a new one
        # A request the crawl had indeed seen is still dropped.
        node.scheduler.enqueue_request(node.request("/item/3"))
        await node.pump.flush()
        assert [r.url for r in dropped] == ["http://127.0.0.1:1/item/3"]
    finally:
        await close_node(node)


@deferred_f_from_coro_f
async def test_a_site_gets_more_as_its_downloads_end_not_once_they_are_stored(
    redis_url: str,
) -> None:
    """Per-site limits: a node leases of a site twice its concurrency; a download that
    ends makes room for the next request while its page is still parsed and stored."""
    node = await open_node(redis_url, CONCURRENT_REQUESTS_PER_DOMAIN=2)
    spider = node.scheduler.spider
    try:
        for n in range(10):
            node.scheduler.enqueue_request(node.request(f"/item/{n}"))
        await node.pump.flush()
        assert await node.pump.refill()
        first = node.take(10)
        assert len(first) == 4  # 2 downloading, 2 waiting in the site's downloader slot
        assert not await node.pump.refill()  # the rest stays in Redis, for other nodes
        assert not node.pump._room_freed(time.monotonic() + 1)
        for request in first[:3]:
            node.crawler.signals.send_catch_log(
                signals.request_left_downloader, request=request, spider=spider
            )
        # Not stored, not acknowledged, and the pump leases again (at most every 50 ms).
        assert node.stat("distributed/acked") == 0
        assert node.pump._room_freed(time.monotonic() + 1)
        assert await node.pump.refill()
        assert len(node.take(10)) == 3
        # A retry of a downloaded request goes back to the downloader: a place again.
        node.scheduler.enqueue_request(first[0].replace(dont_filter=True))
        assert node.scheduler.leases.per_site == {"127.0.0.1": 5}
    finally:
        await close_node(node)


@deferred_f_from_coro_f
async def test_redis_calls_counts_every_round_trip_of_the_node(redis_url: str) -> None:
    """distributed/redis_calls: the node's scripts as Redis counts them, the status
    reads, heartbeats and lease upkeep included, and a script reloaded after NOSCRIPT."""
    probe = Redis.from_url(redis_url)

    async def scripts_run() -> int:
        stats = await probe.info("commandstats")
        return sum(
            stats.get(f"cmdstat_{name}", {}).get(kind, 0)
            for name in ("evalsha", "eval", "script|load")
            for kind in ("calls", "rejected_calls")  # a failed call is among the calls
        )

    node = await open_node(redis_url)
    try:
        before, counted = await scripts_run(), node.queue.calls.n
        for n in range(3):
            node.scheduler.enqueue_request(node.request(f"/item/{n}"))
        await node.pump.flush()
        await node.pump.refill()
        await node.queue.status(nodes=False)
        await probe.script_flush()  # as after a restart of Redis: every script reloads
        await node.pump.upkeep.extend()
        await node.queue.heartbeat("node-a", {"state": "running"}, 1000)
        node.stored(node.take(1)[0])
        await node.pump.flush()
        sent = node.queue.calls.n - counted
        assert sent == await scripts_run() - before
        assert sent >= 9  # 6 calls, 3 of them after NOSCRIPT: the call, the load, again
        await node.pump._cycle()
        assert node.stat("distributed/redis_calls") == node.queue.calls.n
    finally:
        await close_node(node)
        await probe.aclose()


@deferred_f_from_coro_f
async def test_leases_lost_in_a_partition_are_let_go(redis_url: str) -> None:
    node = await open_node(redis_url, REDIS_LEASE_SECONDS=0.3)
    other = CrawlQueue(Redis.from_url(redis_url), "listing")
    try:
        for n in range(3):
            node.scheduler.enqueue_request(node.request(f"/item/{n}"))
        await node.pump.flush()
        await node.pump.refill()
        (in_flight,) = node.take(1)
        await asyncio.sleep(0.4)  # the node could not reach Redis for longer than a lease
        assert await other.reclaim(max_attempts=5) == (3, 0)  # another node took them back
        await node.pump.upkeep.extend()
        # The two not started are no longer this node's; the one in flight finishes here
        # and its late acknowledgement is refused (another node crawls and acks it).
        assert len(node.scheduler) == 0
        assert node.scheduler.leases.held == {in_flight.meta[LEASE]}
        assert node.stat("distributed/leases_lost") == 3
        node.stored(in_flight)
        await node.pump.flush()
        assert node.stat("distributed/ack_refused") == 1
        assert (await other.status()).queued == 3
    finally:
        await close_node(node)
        await other.redis.aclose()


@deferred_f_from_coro_f
async def test_one_node_in_this_process_crawls_everything_once(
    site: Site, redis_url: str, tmp_path: Path
) -> None:
    crawler = await crawl(site.listing_url(40), REDIS_URL=redis_url, **store_settings(tmp_path))
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    children = [r for r in records(tmp_path) if r.get("kind", "child") == "child"]
    assert sorted({r["url"] for r in children}) == sorted(r["url"] for r in children)
    assert len(children) == 40
    # Every lease it took was acknowledged: nothing left behind in Redis.
    assert stats["distributed/acked"] == stats["distributed/leased"]
    client = Redis.from_url(redis_url)
    status = await CrawlQueue(client, "listing").status()
    await client.aclose()
    assert (status.queued, status.leased, status.drained) == (0, 0, True)


def wired(**settings: Any) -> Any:
    """The settings a crawl of the project runs with, once the add-on has wired them."""
    project = dict(project_settings().items())
    return get_crawler(ListingSpider, {**project, **settings}).settings


def test_redis_url_wires_the_shared_queue_and_nothing_else_does(redis_url: str) -> None:
    distributed = wired(REDIS_URL=redis_url, SCHEDULER="scrapy_redis.scheduler.Scheduler")
    # REDIS_URL wins over a SCHEDULER left in the project's settings (scrapy-redis's).
    assert load_object(distributed["SCHEDULER"]) is DistributedScheduler
    assert distributed.getdict("SPIDER_MIDDLEWARES")[LeaseTracker] == LEASE_TRACKER_ORDER
    in_memory = wired()
    assert load_object(in_memory["SCHEDULER"]) is not DistributedScheduler
    assert LeaseTracker not in in_memory.getdict("SPIDER_MIDDLEWARES")
    assert "scraper.distributed.tracking.LeaseTracker" not in in_memory.getdict(
        "SPIDER_MIDDLEWARES"
    )


@deferred_f_from_coro_f
async def test_a_list_page_is_done_only_once_its_last_request_reached_the_scheduler() -> None:
    """Scrapy hands a callback's output on through a queue: the output can be exhausted
    while its last requests still wait there. A node killed then must not have
    acknowledged the list page (its last children would be lost)."""
    crawler = get_crawler(ListingSpider)
    tracker = LeaseTracker.from_crawler(crawler)
    done: list[Request] = []
    crawler.signals.connect(lambda request: done.append(request), signal=request_done, weak=False)
    list_page = Request("http://x/list", meta={LEASE: "token-1"})
    children = [Request(f"http://x/page/{n}") for n in range(3)]

    async def output() -> Any:
        for child in children:
            yield child

    response = SimpleNamespace(request=list_page)
    passed = [r async for r in tracker.process_spider_output(response, output())]  # type: ignore[arg-type]
    assert passed == children
    assert done == []  # exhausted, but no child has reached the scheduler yet
    for child in children[:2]:
        crawler.signals.send_catch_log(signals.request_scheduled, request=child, spider=None)
    assert done == []
    crawler.signals.send_catch_log(signals.request_scheduled, request=children[2], spider=None)
    assert done == [list_page]
    assert all(YIELDED_BY not in child.meta for child in children)  # not sent to Redis
