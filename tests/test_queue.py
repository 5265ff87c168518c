"""The crawl's Redis scripts on a real redis-server: order, leases, acks, reclaim."""

from __future__ import annotations

import asyncio
import hashlib
import itertools

import pytest
import redis
from redis.asyncio import Redis
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.distributed.bloom import BloomFilter
from scraper.distributed.codec import start_url
from scraper.distributed.queue import CrawlQueue, Pace


async def fresh(redis_url: str) -> tuple[Redis, CrawlQueue]:
    client = Redis.from_url(redis_url)
    return client, CrawlQueue(client, "listing")


@deferred_f_from_coro_f
async def test_priority_first_then_first_in_first_out(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        entries = [
            (f"fp{i}", priority, f"r{i}", "a.test")
            for i, priority in enumerate([0, 0, 1, 0, 5, 1, 0])
        ]
        assert await queue.enqueue(entries) == []  # none seen before
        # Seen: "fp3" (position 0); "" (dont_filter) is never seen.
        assert await queue.enqueue(
            [("fp3", 0, "again", "a.test"), ("", 0, "unfiltered", "a.test")]
        ) == [0]
        leased = await queue.lease(0, "node-a", 100, 60_000, start_n=0)
        assert [e.payload.split(" ", 1)[1] for e in leased] == [
            "r4",
            "r2",
            "r5",
            "r0",
            "r1",
            "r3",
            "r6",
            "unfiltered",
        ]
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_a_batch_sent_again_gets_the_answer_its_first_call_got(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        entries = [("fp1", 0, "r1", "a.test"), ("fp2", 0, "r2", "a.test")]
        assert await queue.enqueue(entries[:1], "node-a:0") == []
        assert await queue.enqueue(entries, "node-b:0") == [0]  # fp1 seen: another batch
        assert await queue.enqueue(entries[:1], "node-a:0") == []  # sent again: as before
        assert await queue.enqueue(entries[:1]) == [0]  # a new batch: seen
        found = [("fp3", 10, "list", "0/node-a:f0", "a.test")]
        assert await queue.enqueue_leased(found, 60_000, "node-a:1") == []
        assert await queue.enqueue_leased(found, 60_000, "node-a:1") == []
        assert await queue.enqueue_leased(found, 60_000) == ["0/node-a:f0"]
        status = await queue.status()
        assert (status.queued, status.leased) == (2, 1)  # each added once
        assert await client.ttl("listing:batch:node-a:0") > 86_000  # kept a day
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_ack_once_and_refuse_after_reclaim(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        await queue.enqueue([(f"fp{i}", 0, f"r{i}", "a.test") for i in range(3)])
        leased = await queue.lease(0, "node-a", 3, 300, start_n=0)
        assert len(leased) == 3
        assert await queue.ack([leased[0].token]) == (1, 0)
        assert await queue.ack([leased[0].token]) == (0, 1)  # twice: refused
        assert await queue.extend([leased[1].token], 60_000) == []  # still ours
        await asyncio.sleep(0.4)
        assert await queue.reclaim(max_attempts=5) == (1, 0)  # only the unextended one
        # The reclaimed lease is no longer ours: extend says so (and does not revive it).
        assert await queue.extend([leased[1].token, leased[2].token], 60_000) == [leased[2].token]
        assert await queue.ack([leased[2].token]) == (0, 1)  # a late ack: refused
        status = await queue.status()
        assert (status.queued, status.leased) == (1, 1)
        again = await queue.lease(0, "node-b", 10, 60_000, start_n=0)
        assert [e.payload for e in again] == [leased[2].payload]  # same entry, same place
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_a_request_that_keeps_losing_its_lease_goes_to_dead(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        await queue.enqueue([("fp", 0, "poison", "a.test")])
        for _ in range(3):
            assert len(await queue.lease(0, "node", 1, 1, start_n=0)) == 1
            await asyncio.sleep(0.01)
            await queue.reclaim(max_attempts=2)
        status = await queue.status()
        assert (status.queued, status.leased, status.dead) == (0, 0, 1)
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_start_urls_are_leased_when_the_queue_is_empty(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        await queue.seed(["http://x/list", "http://y/list"])
        await queue.enqueue([("fp", 0, "r", "a.test")])
        first = await queue.lease(0, "node", 10, 60_000, start_n=10)
        assert [e.kind for e in first] == ["request"]  # requests first
        starts = await queue.lease(0, "node", 10, 60_000, start_n=1)
        assert [(e.kind, start_url(e.payload)[0]) for e in starts] == [("start", "http://x/list")]
        # Each entry names its listing and the crawl's generation (scraper/previous.py).
        assert start_url(starts[0].payload)[1] == {
            "crawl_id": await queue.crawl_id(),
            "listing": "http://x/list",
        }
        assert await queue.release([starts[0].token]) == 1  # handed back to start_urls
        sync = redis.Redis.from_url(redis_url)
        entries = sync.lrange("listing:start_urls", 0, -1)
        assert [start_url(e.decode())[0] for e in entries] == ["http://y/list", "http://x/list"]
        sync.close()
    finally:
        await client.aclose()


def test_bloom_filter_is_sized_from_capacity_and_error_rate() -> None:
    bloom = BloomFilter(100_000_000, 0.001)
    assert (bloom.bits // 8 // 2**20, bloom.hashes) == (171, 10)  # 180 MB, 10 bits per request
    key = bloom.key("0123456789abcdef" * 2 + "01234567")
    assert key.startswith("#") and len(key[1:].split(",")) == 10
    assert all(0 <= int(p) < bloom.bits for p in key[1:].split(","))
    with pytest.raises(ValueError, match="2\\*\\*32"):
        BloomFilter(10**10, 1e-9)


@deferred_f_from_coro_f
async def test_bloom_dedup_in_redis(redis_url: str) -> None:
    """Repeats are always caught; new requests pass but for the set error rate."""
    client = Redis.from_url(redis_url)
    queue = CrawlQueue(client, "listing", BloomFilter(5000, 0.01))
    try:
        fps = [hashlib.sha1(str(i).encode()).hexdigest() for i in range(10000)]
        first = 5000 - len(await queue.enqueue([(fp, 0, "r", "a.test") for fp in fps[:5000]]))
        assert first >= 5000 * 0.98
        repeats = await queue.enqueue([(fp, 0, "r", "a.test") for fp in fps[:5000]])
        assert repeats == list(range(5000))  # every one seen
        fresh_ones = 5000 - len(await queue.enqueue([(fp, 0, "r", "a.test") for fp in fps[5000:]]))
        assert fresh_ones >= 5000 * 0.9  # the filter is now over capacity, still mostly right
        status = await queue.status()
        assert status.seen == first + fresh_ones
        assert await client.exists("listing:dupefilter") == 0  # no set of fingerprints
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_leases_go_round_robin_across_sites_within_each_sites_room(redis_url: str) -> None:
    """One site with 100 queued requests does not crowd out two with 5: each LEASE takes
    at most ``per_site`` of a site, the site leased from longest ago first, and none of a
    site the node has no room for."""
    client, queue = await fresh(redis_url)
    try:
        entries = [(f"a{i}", 0, f"a{i}", "a.test") for i in range(100)]
        entries += [(f"{s}{i}", 0, f"{s}{i}", f"{s}.test") for s in "bc" for i in range(5)]
        await queue.enqueue(entries)
        pace = Pace(per_site=3)
        first = await queue.lease(0, "node", 9, 60_000, pace=pace)
        assert sorted(e.payload.split(" ", 1)[1] for e in first) == [
            "a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"
        ]  # fmt: skip
        # The node holds 3 of a.test and has room for none: b and c get the next turn.
        second = await queue.lease(0, "node", 9, 60_000, pace=pace, room={"a.test": 0})
        assert sorted(e.payload.split(" ", 1)[1][0] for e in second) == list("bbcc")
        status = await queue.status()
        assert (status.queued, status.sites, status.leased) == (97, 1, 13)
        third = await queue.lease(0, "other-node", 100, 60_000, pace=pace)
        assert [e.payload.split(" ", 1)[1] for e in third] == ["a3", "a4", "a5"]
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_a_paced_site_is_leased_with_start_times_shared_by_every_node(
    redis_url: str,
) -> None:
    """DOWNLOAD_DELAY as an interval shared by all nodes: every request leased gets a
    start time one interval after the one before, whichever node leased it, and no more
    are leased than can start within the horizon."""
    client, queue = await fresh(redis_url)
    try:
        await queue.enqueue([(f"p{i}", 0, f"p{i}", "slow.test") for i in range(20)])
        pace = Pace(interval_ms=200, horizon_ms=1000)
        first = await queue.lease(0, "node-a", 100, 60_000, pace=pace)
        assert [e.wait_ms for e in first] == [0, 200, 400, 600, 800, 1000]
        assert await queue.lease(0, "node-b", 100, 60_000, pace=pace) == []  # not yet
        await asyncio.sleep(0.3)
        second = await queue.lease(0, "node-b", 100, 60_000, pace=pace)
        # Its first start is one interval after node-a's last: ~1200 ms after the first.
        assert len(second) >= 1
        assert 850 <= second[0].wait_ms <= 1000
        assert all(b.wait_ms - a.wait_ms == 200 for a, b in itertools.pairwise(second))
        # Per-site intervals (DOWNLOAD_SLOTS) override the default.
        await queue.enqueue([(f"q{i}", 0, f"q{i}", "fast.test") for i in range(5)])
        fast = await queue.lease(
            0, "node-a", 100, 60_000, pace=Pace(interval_ms=200, intervals={"fast.test": 0})
        )
        assert [e.wait_ms for e in fast] == [0] * 5
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_a_paused_site_is_not_leased_until_its_wait_is_over(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        await queue.enqueue([("x", 0, "x", "busy.test"), ("y", 0, "y", "calm.test")])
        await queue.pause("busy.test", 0.5)
        first = await queue.lease(0, "node", 10, 60_000)
        assert [e.payload.split(" ", 1)[1] for e in first] == ["y"]
        status = await queue.status()
        assert (status.sites, status.waiting) == (1, 0)  # under a second: not "waiting"
        await queue.pause("busy.test", 3)
        assert (await queue.status()).waits.keys() == {"busy.test"}
        await client.delete("listing:ready")  # pretend the wait is over
        await client.zadd("listing:sites", {"busy.test": 0})
        assert [e.payload.split(" ", 1)[1] for e in await queue.lease(0, "n", 10, 60_000)] == ["x"]
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_partitions_split_sites_and_the_crawl_agrees_on_their_number(
    redis_url: str,
) -> None:
    """Sites spread over partitions (each one script's keys); the first node's number of
    partitions stands; status sums them; acknowledgements find their partition."""
    client = Redis.from_url(redis_url)
    first = CrawlQueue(client, "listing", partitions=4)
    later = CrawlQueue(client, "listing", partitions=1)
    try:
        assert await first.open() == 4
        assert await later.open() == 4  # the crawl's number, not its own
        sites = [f"site{i}.test" for i in range(12)]
        assert len({later.partition(s) for s in sites}) > 1
        await later.enqueue([(s, 0, s, s) for s in sites])
        assert await later.enqueue([(s, 0, s, s) for s in sites]) == list(range(12))  # seen
        assert (await first.status()).queued == 12
        leased = [e for k in range(4) for e in await first.lease(k, "node", 100, 60_000)]
        assert sorted(e.payload.split(" ", 1)[1] for e in leased) == sorted(sites)
        assert {e.token.split("/")[0] for e in leased} == {str(later.partition(s)) for s in sites}
        assert (await later.status()).leased == 12
        assert await later.ack([e.token for e in leased]) == (12, 0)
        status = await first.status()
        assert status.drained and status.consistent
    finally:
        await client.aclose()
