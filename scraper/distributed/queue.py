"""The crawl's shared state in Redis, changed only through atomic Lua scripts.

Keys of each partition (scraper/distributed/keys.py: on one Redis ``<spider>:<name>``;
each site's requests live in one partition):

``q:<site>``     ZSET  one site's queued requests; score = -priority * 1e12 + sequence (FIFO
                       within a priority), member = "<sequence> <request JSON>"
``sites``        ZSET  sites with queued requests -> when one may be leased next (ms, Redis's
                       clock): leases go round-robin across the sites ready now
``ready``        HASH  site -> the earliest start of its next request (a shared pace, or a
                       Retry-After wait), for sites that have one
``queued``       STRING requests queued in all the ``q:<site>``
``version``      STRING changes with every change of the queues or leases (status.lua)
``dupefilter``   SET   fingerprints of every request ever enqueued (the default)
``bloom``        STRING a Bloom filter bitmap instead (REDIS_DUPEFILTER = "bloom"),
                       and ``bloom_count`` the requests it let through
``leases``       ZSET  lease token -> deadline (ms, Redis's clock)
``leased``       HASH  lease token -> "<score> <site> <entry>" ("start <url>" for a start URL)
``attempts``     HASH  sequence -> times its lease expired
``dead``         LIST  entries whose leases expired REDIS_MAX_ATTEMPTS times
``seq``          STRING the sequence counter (requests and lease tokens)
``sweeper``      STRING the node whose turn it is to check the leases (expires)
``batch:<id>``   STRING the answer of one ENQUEUE call, for a day: a node whose answer was
                       lost in an outage sends the batch again and gets the same answer
                       (lua/answer.lua); ids are ``<node>:<n>``, a node's id is unique

Keys of the whole crawl, in partition 0:

``start_urls``   LIST  list page URLs (plain, or JSON {"url": ..., "meta": ...}), as in
                       scrapy-redis
``nodes``        HASH  node id -> "<ms> <JSON heartbeat>" (running or closed: heartbeat.py)
``canonical``    HASH  canonical URL -> fingerprint of the child holding its body
                       (DEDUP_CANONICAL, scraper/canonical.py)
``crawl``        HASH  ``partitions`` (how many; the first node's REDIS_PARTITIONS), the
                       generation's ``id`` (its crawl_id, in every record) and
                       ``list_failed`` (list pages that failed: then the records it did
                       not link are not marked gone, scraper/recrawl.py)
``listings``     SET   the listings of this generation: seeded, or a node's own ``-a url``

The scripts are in ``lua/``, each naming its KEYS and ARGV at the top.
A request taken by a node is not popped: LEASE moves it to ``leased`` with a deadline,
and only ACK removes it. RECLAIM, run by every node, puts back what a dead node held.
All deadlines use Redis's own clock (TIME), never a node's.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from scraper.config import ConfigError
from scraper.distributed import codec
from scraper.distributed.bloom import BloomFilter
from scraper.distributed.connection import CallCount, RedisTarget, connect, redis_target
from scraper.distributed.counts import CrawlStatus, heartbeats, sum_reads
from scraper.distributed.keys import Keys, partition_of, token_partition
from scraper.previous import CRAWL_ID, LISTING, new_crawl_id

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_T = TypeVar("_T")


def lua(name: str, *preludes: str) -> str:
    """The script ``lua/<name>.lua`` after its preludes (``now``, ``is_new``): Redis runs
    each script as one atomic step, and a script cannot call another. Read as package
    data, so that it is found in scrapyd's zipped egg too."""
    folder = resources.files(__package__).joinpath("lua")
    return "\n".join(
        folder.joinpath(f"{part}.lua").read_text("utf-8") for part in (*preludes, name)
    )


#: What a lease holds: a queued request's entry, or a start URL (list page) to seed from.
LeaseKind = Literal["request", "start"]
_KINDS: dict[str, LeaseKind] = {"r": "request", "s": "start"}  # as lease.lua returns them


@dataclass
class Leased:
    """One leased entry: a request's queue entry, or a start URL."""

    token: str
    kind: LeaseKind
    payload: str
    error: str | None = None  # why the entry cannot be read (then payload is "")
    wait_ms: int = 0  # how long before its start time (a paced site's), Redis's clock


@dataclass(frozen=True)
class Pace:
    """How a node leases across sites (passed to every LEASE call).

    ``per_site``: requests of one site leased per call, at most (and ``room`` per site,
    what this node can still start of it); ``interval_ms``: the time between two requests
    to one site, shared by every node (DOWNLOAD_DELAY), ``intervals`` per site
    (DOWNLOAD_SLOTS); ``horizon_ms``: a paced site's requests are leased only that long
    before their start times.
    """

    per_site: int = 1_000_000
    interval_ms: int = 0
    intervals: dict[str, int] = field(default_factory=dict)
    horizon_ms: int = 2000


class CrawlQueue:
    """Async access to one crawl's Redis keys; every change is one Lua script on one
    partition."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        spider_name: str,
        bloom: BloomFilter | None = None,
        *,
        partitions: int = 1,
        cluster: bool = False,
    ) -> None:
        self.redis = redis
        self.calls = CallCount(redis)
        self.spider_name = spider_name
        self.cluster = cluster
        self.bloom = bloom
        self.keys = Keys.of(spider_name, 0, cluster)
        self.parts: list[Keys] = []
        self._set_partitions(partitions)
        script = redis.register_script
        self._enqueue = script(lua("enqueue", "queue_site", "is_new", "answer"))
        self._enqueue_leased = script(lua("enqueue_leased", "now", "is_new", "answer"))
        self._lease = script(lua("lease", "now"))
        self._ack = script(lua("ack"))
        self._reclaim = script(lua("reclaim", "now", "queue_site"))
        self._extend = script(lua("extend", "now"))
        self._heartbeat = script(lua("heartbeat", "now"))
        self._sweep = script(lua("sweep"))
        self._recrawl = script(lua("recrawl"))
        self._status = script(lua("status", "now"))
        self._pause = script(lua("pause", "now"))

    def _set_partitions(self, n: int) -> None:
        self.parts = [Keys.of(self.spider_name, k, self.cluster) for k in range(max(1, n))]

    async def open(self, create: bool = True) -> int:
        """Agree with the crawl on the number of partitions: the first node's stands (a
        node that split sites differently would break their dedup); ``create=False`` only
        reads it. Returns it."""
        wanted = len(self.parts)
        if create:
            await self.redis.hsetnx(self.keys.crawl, "partitions", wanted)
        try:
            stored = int(await self.redis.hget(self.keys.crawl, "partitions") or wanted)
        except ValueError:  # not ours: ours stands
            stored = wanted
        if stored != wanted and stored >= 1:
            self._set_partitions(stored)
        if self.bloom is not None and stored > 1:
            self.bloom = self.bloom.split(stored)
        return len(self.parts)

    async def aclose(self) -> None:
        await self.redis.aclose()

    def partition(self, site: str) -> int:
        return partition_of(site, len(self.parts))

    def _by_partition(self, items: Iterable[_T], site: Callable[[_T], str]) -> dict[int, list[_T]]:
        groups: dict[int, list[_T]] = {}
        for item in items:
            groups.setdefault(self.partition(site(item)), []).append(item)
        return groups

    def _tokens_by_partition(self, tokens: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        n = len(self.parts)
        for token in tokens:
            k = token_partition(token)
            groups.setdefault(k if k < n else 0, []).append(token)
        return groups

    async def enqueue(
        self, entries: Sequence[tuple[str, int, str, str]], batch: str | None = None
    ) -> list[int]:
        """Add (fingerprint or "", priority, JSON, site) entries not seen before; return
        the positions in ``entries`` of those that were seen (duplicates, not added).
        ``batch``: the batch's id, the same when it is sent again after an answer was lost
        (Redis answers as the first time: lua/answer.lua); a new one by default."""
        batch = batch or uuid.uuid4().hex
        seen: list[int] = []
        positions = self._by_partition(range(len(entries)), lambda i: entries[i][3])
        for k, indexes in positions.items():
            p = self.parts[k]
            args: list[str | int] = [p.prefix]
            for i in indexes:
                fingerprint, priority, request, site = entries[i]
                args += (self._dedup_key(fingerprint), priority, request, site)
            found = await self._enqueue(
                keys=[
                    p.sites,
                    p.dupefilter,
                    p.seq,
                    p.bloom,
                    p.bloom_count,
                    p.queued,
                    p.version,
                    p.ready,
                    p.batch(batch),
                ],
                args=args,
            )
            seen += (indexes[int(i)] for i in found)
        return sorted(seen)

    def _dedup_key(self, fingerprint: str) -> str:
        return self.bloom.key(fingerprint) if self.bloom and fingerprint else fingerprint

    async def enqueue_leased(
        self,
        entries: Sequence[tuple[str, int, str, str, str]],
        lease_ms: int,
        batch: str | None = None,
    ) -> list[str]:
        """Add (fingerprint, priority, JSON, token, site) entries leased to their finder;
        return the tokens of those already seen (their requests are duplicates). Each
        token names its site's partition (Leases.hold_found). ``batch`` as for enqueue."""
        batch = batch or uuid.uuid4().hex
        seen: list[str] = []
        for k, group in self._tokens_by_partition(e[3] for e in entries).items():
            p, tokens = self.parts[k], set(group)
            args: list[Any] = [lease_ms]
            for fp, priority, request, token, site in entries:
                if token in tokens:
                    args += (self._dedup_key(fp), priority, request, token, site)
            found = await self._enqueue_leased(
                keys=[
                    p.dupefilter,
                    p.seq,
                    p.leases,
                    p.leased,
                    p.bloom,
                    p.bloom_count,
                    p.version,
                    p.batch(batch),
                ],
                args=args,
            )
            seen += (_text(token) for token in found)
        return seen

    async def lease(
        self,
        partition: int,
        node: str,
        n: int,
        lease_ms: int,
        *,
        start_n: int = 0,
        pace: Pace | None = None,
        room: dict[str, int] | None = None,
    ) -> list[Leased]:
        """Lease up to ``n`` requests of one partition, round-robin across its sites (and
        start URLs from partition 0 when its queues gave none)."""
        pace = pace or Pace()
        p = self.parts[partition]
        room = room or {}
        args: list[Any] = [
            p.prefix,
            n,
            node,
            lease_ms,
            start_n if partition == 0 else 0,
            pace.per_site,
            pace.horizon_ms,
            pace.interval_ms,
            partition,
            len(room),
            *(x for pair in room.items() for x in pair),
            len(pace.intervals),
            *(x for pair in pace.intervals.items() for x in pair),
        ]
        flat = await self._lease(
            keys=[p.sites, p.leases, p.leased, p.seq, p.start_urls, p.queued, p.version, p.ready],
            args=args,
        )
        return [
            _leased(_text(flat[i]), _text(flat[i + 1]), flat[i + 2], int(flat[i + 3]))
            for i in range(0, len(flat), 4)
        ]

    async def ack(self, tokens: list[str]) -> tuple[int, int]:
        acked = refused = 0
        for k, group in self._tokens_by_partition(tokens).items():
            p = self.parts[k]
            a, r = await self._ack(keys=[p.leases, p.leased, p.attempts, p.version], args=group)
            acked, refused = acked + int(a), refused + int(r)
        return acked, refused

    async def reclaim(
        self,
        max_attempts: int,
        limit: int = 1000,
        on_unreadable: Callable[[str], None] | None = None,
    ) -> tuple[int, int]:
        """Put back every lease past its deadline; return (returned, moved to dead).

        Lease data these scripts did not write goes to dead too; ``on_unreadable`` is
        called with each such token.
        """
        returned = dead = 0
        for k in range(len(self.parts)):
            r, d, bad = await self._run_reclaim(k, [max_attempts, limit])
            returned, dead = returned + r, dead + d
            for token in bad:
                if on_unreadable is not None:
                    on_unreadable(_text(token))
        return returned, dead

    async def release(self, tokens: list[str]) -> int:
        """Hand leases back now (a closing node's requests it did not start)."""
        returned = 0
        for k, group in self._tokens_by_partition(tokens).items():
            r, _, _ = await self._run_reclaim(k, [0, 0, *group])
            returned += r
        return returned

    async def _run_reclaim(self, k: int, args: list[Any]) -> tuple[int, int, list[bytes]]:
        p = self.parts[k]
        returned, dead, bad = await self._reclaim(
            keys=[
                p.leases,
                p.leased,
                p.attempts,
                p.dead,
                self.keys.start_urls if k == 0 else p.start_urls,
                p.sites,
                p.queued,
                p.version,
                p.ready,
            ],
            args=[p.prefix, *args],
        )
        return int(returned), int(dead), list(bad)

    async def sweep(self, node: str, every_ms: int) -> tuple[list[str], list[str]]:
        """Drop lease deadlines without data and send lease data without a deadline to dead
        (neither was written by this crawl); return the tokens of each. A partition swept
        by another node in the last ``every_ms`` is left alone."""
        dropped: list[str] = []
        kept: list[str] = []
        for p in self.parts:
            d, k = await self._sweep(
                keys=[p.leases, p.leased, p.dead, p.sweeper, p.version], args=[node, every_ms]
            )
            dropped += (_text(t) for t in d)
            kept += (_text(t) for t in k)
        return dropped, kept

    async def forget_nodes(self, names: list[str]) -> None:
        """Remove entries of ``<spider>:nodes``."""
        if names:
            await self.redis.hdel(self.keys.nodes, *names)

    async def extend(self, tokens: list[str], lease_ms: int) -> list[str]:
        """Push the deadlines of these leases; return those that are no longer leased."""
        lost: list[str] = []
        for k, group in self._tokens_by_partition(tokens).items():
            found = await self._extend(keys=[self.parts[k].leases], args=[lease_ms, *group])
            lost += (_text(token) for token in found)
        return lost

    async def pause(self, site: str, seconds: float) -> None:
        """A site said to wait (Retry-After): no node leases its requests before then."""
        p = self.parts[self.partition(site)]
        await self._pause(keys=[p.sites, p.ready], args=[site, int(seconds * 1000)])

    async def heartbeat(self, node: str, info: dict[str, Any], stale_ms: int) -> int:
        return int(
            await self._heartbeat(
                keys=[self.keys.nodes],
                args=[node, json.dumps(info, separators=(",", ":")), stale_ms],
            )
        )

    async def status(self, nodes: bool = True) -> CrawlStatus:
        """The crawl's counts; ``nodes=False`` leaves out the heartbeats (``nodes`` is then
        empty): every node reads the status up to 5 times a second, and all heartbeats
        each time would grow as nodes squared (docs/scaling.md).

        Each partition is read in one step, the partitions one after another. When they
        all look drained, they are read again: only if no partition changed in between
        is the crawl drained (a request leased in one partition may have put its
        children in another, and been acknowledged, between the two reads).
        """
        reads = [await self._read(p) for p in self.parts]
        status = sum_reads(reads)
        if len(self.parts) > 1 and status.drained:
            again = [await self._read(p) for p in self.parts]
            status.consistent = [r[6] for r in reads] == [r[6] for r in again]
        if nodes:
            status.nodes, status.bad_nodes = heartbeats(await self.redis.hgetall(self.keys.nodes))
        return status

    async def _read(self, p: Keys) -> list[Any]:
        return list(
            await self._status(
                keys=[
                    p.sites,
                    p.leases,
                    p.dupefilter,
                    p.dead,
                    p.bloom_count,
                    p.queued,
                    p.version,
                    self.keys.start_urls if p is self.parts[0] else p.start_urls,
                    p.listings,
                ]
            )
        )

    async def seed(self, urls: list[str]) -> int:
        """Append list page URLs to ``<spider>:start_urls``, each the start of a listing of
        the current generation (started if there is none)."""
        if not urls:
            return 0
        crawl_id = await self.join(urls)
        entries = [codec.start_entry(url, {CRAWL_ID: crawl_id, LISTING: url}) for url in urls]
        return int(await self.redis.rpush(self.keys.start_urls, *entries))

    async def join(self, listings: list[str]) -> str:
        """Make ``listings`` listings of the current generation (started if there is none):
        when it ends complete, their records it did not link are marked gone. Its crawl id."""
        crawl_id = await self.crawl_id()
        if listings:
            await self.redis.sadd(self.keys.listings, *listings)
        return crawl_id

    async def crawl_id(self) -> str:
        """The current generation's crawl id, a new one if the crawl has none yet."""
        await self.redis.hsetnx(self.keys.crawl, "id", new_crawl_id())
        return _text(await self.redis.hget(self.keys.crawl, "id") or "")

    async def recrawl(self) -> str | None:
        """Start a new generation; its crawl id, or None while the crawl is running."""
        if not (await self.status(nodes=False)).drained:
            return None
        crawl_id = new_crawl_id()
        # Partition 0 last: it starts the generation once the others forgot the last one.
        for k in [*range(1, len(self.parts)), 0]:
            p = self.parts[k]
            started = await self._recrawl(
                keys=[
                    p.sites,
                    p.leases,
                    p.start_urls,
                    p.crawl,
                    p.listings,
                    p.dupefilter,
                    p.bloom,
                    p.bloom_count,
                    p.canonical,
                ],
                args=[crawl_id if k == 0 else ""],
            )
            if not started:
                return None
        return crawl_id

    async def note_list_failed(self) -> None:
        """A list page of this generation failed: its children were missed."""
        await self.redis.hincrby(self.keys.crawl, "list_failed", 1)

    async def generation(self) -> tuple[str | None, list[str], int]:
        """The current generation: its crawl id, its listings, its failed list pages."""
        crawl = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self.keys.crawl)).items()}
        listings = await self.redis.smembers(self.keys.listings)
        try:
            failed = int(crawl.get("list_failed", 0))
        except ValueError:  # not ours: count it as a failure, mark nothing gone
            failed = 1
        return crawl.get("id"), sorted(_text(x) for x in listings), failed

    async def reset(self) -> None:
        """Forget the crawl: queues, dedup sets, leases, start URLs, nodes, canonical URLs,
        its generation."""
        for p in reversed(self.parts):  # partition 0 (and its count of partitions) last
            sites: list[Any] = await self.redis.zrange(p.sites, 0, -1)
            queues = [p.queue(_text(site)) for site in sites]
            for i in range(0, len(queues), 500):
                await self.redis.delete(*queues[i : i + 500])
            await self.redis.delete(*p.fixed())


#: Partitions of a crawl on a Redis Cluster unless REDIS_PARTITIONS says: about 8 per
#: master of a 3-master cluster, so that the partitions spread evenly (docs/scaling.md).
CLUSTER_PARTITIONS = 24


def partitions(settings: Any, target: RedisTarget) -> int:
    """How many partitions a new crawl gets: REDIS_PARTITIONS, else 1 on one Redis (one
    server runs every script anyway) and CLUSTER_PARTITIONS on a cluster."""
    wanted = settings.getint("REDIS_PARTITIONS") if settings.get("REDIS_PARTITIONS") else 0
    if wanted < 0:
        raise ConfigError("REDIS_PARTITIONS", f"{wanted}: must be 1 or more")
    return wanted or (CLUSTER_PARTITIONS if target.cluster else 1)


async def open_queue(
    settings: Any,
    spider_name: str,
    *,
    create: bool = False,
    bloom: BloomFilter | None = None,
    target: RedisTarget | None = None,
) -> CrawlQueue:
    """The crawl's queue on the Redis the settings name, its partitions agreed (see
    CrawlQueue.open). ConfigError if the settings name no usable Redis; close it with
    ``aclose``."""
    target = target or redis_target(settings)
    if target is None:
        raise ConfigError("REDIS_URL", "REDIS_URL is not set (nor REDIS_CLUSTER_NODES)")
    queue = CrawlQueue(
        connect(target),
        spider_name,
        bloom,
        partitions=partitions(settings, target),
        cluster=target.cluster,
    )
    try:
        await queue.open(create)
    except BaseException:
        await queue.aclose()
        raise
    return queue


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _leased(token: str, kind: str, payload: bytes | str, wait_ms: int) -> Leased:
    """A leased entry; one that is not UTF-8 text carries the error instead (replacing its
    bytes would make a different URL of it)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Leased(token, _KINDS[kind], "", error=f"not UTF-8 text: {payload[:60]!r}")
    return Leased(token, _KINDS[kind], payload, wait_ms=wait_ms)
