"""The crawl's Redis scripts on a real redis-server: order, leases, acks, reclaim."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import redis
from redis.asyncio import Redis
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.distributed.codec import start_url
from scraper.distributed.queue import BloomFilter, CrawlQueue


async def fresh(redis_url: str) -> tuple[Redis, CrawlQueue]:
    client = Redis.from_url(redis_url)
    return client, CrawlQueue(client, "listing")


@deferred_f_from_coro_f
async def test_priority_first_then_first_in_first_out(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        entries = [
            (f"fp{i}", priority, f"r{i}") for i, priority in enumerate([0, 0, 1, 0, 5, 1, 0])
        ]
        assert await queue.enqueue(entries) == []  # none seen before
        # Seen: "fp3" (position 0); "" (dont_filter) is never seen.
        assert await queue.enqueue([("fp3", 0, "again"), ("", 0, "unfiltered")]) == [0]
        leased = await queue.lease("node-a", 100, 60_000, start_n=0)
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
async def test_ack_once_and_refuse_after_reclaim(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        await queue.enqueue([(f"fp{i}", 0, f"r{i}") for i in range(3)])
        leased = await queue.lease("node-a", 3, 300, start_n=0)
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
        again = await queue.lease("node-b", 10, 60_000, start_n=0)
        assert [e.payload for e in again] == [leased[2].payload]  # same entry, same place
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_a_request_that_keeps_losing_its_lease_goes_to_dead(redis_url: str) -> None:
    client, queue = await fresh(redis_url)
    try:
        await queue.enqueue([("fp", 0, "poison")])
        for _ in range(3):
            assert len(await queue.lease("node", 1, 1, start_n=0)) == 1
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
        await queue.enqueue([("fp", 0, "r")])
        first = await queue.lease("node", 10, 60_000, start_n=10)
        assert [e.kind for e in first] == ["request"]  # requests first
        starts = await queue.lease("node", 10, 60_000, start_n=1)
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
        first = 5000 - len(await queue.enqueue([(fp, 0, "r") for fp in fps[:5000]]))
        assert first >= 5000 * 0.98
        repeats = await queue.enqueue([(fp, 0, "r") for fp in fps[:5000]])
        assert repeats == list(range(5000))  # every one seen
        fresh_ones = 5000 - len(await queue.enqueue([(fp, 0, "r") for fp in fps[5000:]]))
        assert fresh_ones >= 5000 * 0.9  # the filter is now over capacity, still mostly right
        status = await queue.status()
        assert status.seen == first + fresh_ones
        assert await client.exists("listing:dupefilter") == 0  # no set of fingerprints
    finally:
        await client.aclose()
