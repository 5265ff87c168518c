"""The crawl's shared state in Redis, changed only through atomic Lua scripts.

Keys (``<spider>`` is the spider name; the first three as in scrapy-redis):

``<spider>:requests``    ZSET  queued requests; score = -priority * 1e12 + sequence (FIFO
                               within a priority), member = "<sequence> <request JSON>"
``<spider>:dupefilter``  SET   fingerprints of every request ever enqueued (the default)
``<spider>:bloom``       STRING a Bloom filter bitmap instead (REDIS_DUPEFILTER = "bloom"),
                               and ``<spider>:bloom_count`` the requests it let through
``<spider>:start_urls``  LIST  list page URLs (plain, or JSON {"url": ..., "meta": ...})
``<spider>:leases``      ZSET  lease token -> deadline (ms, Redis's clock)
``<spider>:leased``      HASH  lease token -> "<score> <member>" ("start <url>" for a start URL)
``<spider>:attempts``    HASH  sequence -> times its lease expired
``<spider>:dead``        LIST  members whose leases expired REDIS_MAX_ATTEMPTS times
``<spider>:nodes``       HASH  node id -> "<ms> <JSON heartbeat>" (running or closed: heartbeat.py)
``<spider>:seq``         STRING the sequence counter (requests and lease tokens)
``<spider>:sweeper``     STRING the node whose turn it is to check the leases (expires)
``<spider>:canonical``   HASH  canonical URL -> fingerprint of the child holding its body
                               (DEDUP_CANONICAL, scraper/canonical.py)
``<spider>:crawl``       HASH  the crawl's generation: ``id`` (its crawl_id, in every record)
                               and ``list_failed`` (list pages that failed: then the records
                               it did not link are not marked gone, scraper/recrawl.py)
``<spider>:listings``    SET   the listings `scrapy seed` started in this generation

The scripts are in ``lua/``, each naming its KEYS and ARGV at the top.
A request taken by a node is not popped: LEASE moves it to ``leased`` with a deadline,
and only ACK removes it. RECLAIM, run by every node, puts back what a dead node held.
All deadlines use Redis's own clock (TIME), never a node's.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from scraper.config import ConfigError
from scraper.distributed import codec
from scraper.previous import CRAWL_ID, LISTING, new_crawl_id

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from redis.asyncio import Redis

SCORE_SCALE = 10**12


def lua(name: str, *preludes: str) -> str:
    """The script ``lua/<name>.lua`` after its preludes (``now``, ``is_new``): Redis runs
    each script as one atomic step, and a script cannot call another. Read as package
    data, so that it is found in scrapyd's zipped egg too."""
    folder = resources.files(__package__).joinpath("lua")
    return "\n".join(
        folder.joinpath(f"{part}.lua").read_text("utf-8") for part in (*preludes, name)
    )


class BloomFilter:
    """Bit positions of a Bloom filter sized for ``capacity`` requests at ``error_rate``.

    Memory is m bits in one Redis string (at most 2**32 bits, 512 MiB), instead of a
    set holding every fingerprint (~100 bytes each): 1e8 requests at 1e-3 take 180 MB
    instead of ~10 GB. The cost: a new request is taken for a seen one (and skipped)
    with probability ``error_rate``. Positions come from the fingerprint's own bits
    (double hashing), so every node computes the same ones.
    """

    def __init__(self, capacity: int, error_rate: float) -> None:
        if capacity < 1:
            raise ConfigError("REDIS_BLOOM_CAPACITY", f"{capacity}: must be at least 1")
        if not 0 < error_rate < 1:
            raise ConfigError("REDIS_BLOOM_ERROR_RATE", f"{error_rate}: must be between 0 and 1")
        self.bits = math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)
        if self.bits > 2**32:
            raise ConfigError(
                "REDIS_BLOOM_CAPACITY",
                f"a Bloom filter for {capacity} requests at {error_rate} needs "
                f"{self.bits} bits; Redis strings hold 2**32",
            )
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))

    def key(self, fingerprint: str) -> str:
        """The dedup key of a hex fingerprint: ``#`` and its bit positions."""
        h1, h2 = int(fingerprint[:16], 16), int(fingerprint[16:32], 16) | 1
        return "#" + ",".join(str((h1 + i * h2) % self.bits) for i in range(self.hashes))


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one spider's crawl (the module docstring says what each holds)."""

    requests: str
    dupefilter: str
    bloom: str
    bloom_count: str
    start_urls: str
    leases: str
    leased: str
    attempts: str
    dead: str
    nodes: str
    seq: str
    sweeper: str
    canonical: str
    crawl: str
    listings: str

    @classmethod
    def of(cls, spider_name: str) -> Keys:
        return cls(**{f.name: f"{spider_name}:{f.name}" for f in fields(cls)})

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


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


@dataclass
class CrawlStatus:
    """The crawl-wide counts the completion check and `scrapy status` read."""

    queued: int
    leased: int
    start_urls: int
    seen: int
    dead: int
    nodes: dict[str, tuple[int, dict[str, Any]]]
    now_ms: int
    #: Entries of ``<spider>:nodes`` that are not heartbeats: (field, why).
    bad_nodes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def drained(self) -> bool:
        """Nothing queued, leased or waiting to be seeded, anywhere."""
        return self.queued == 0 and self.leased == 0 and self.start_urls == 0


class CrawlQueue:
    """Async access to one crawl's Redis keys; every change is one Lua script."""

    def __init__(self, redis: Redis, spider_name: str, bloom: BloomFilter | None = None) -> None:
        self.redis = redis
        self.keys = Keys.of(spider_name)
        self.bloom = bloom
        self._enqueue = redis.register_script(lua("enqueue", "is_new"))
        self._enqueue_leased = redis.register_script(lua("enqueue_leased", "now", "is_new"))
        self._lease = redis.register_script(lua("lease", "now"))
        self._ack = redis.register_script(lua("ack"))
        self._reclaim = redis.register_script(lua("reclaim", "now"))
        self._extend = redis.register_script(lua("extend", "now"))
        self._heartbeat = redis.register_script(lua("heartbeat", "now"))
        self._sweep = redis.register_script(lua("sweep"))
        self._recrawl = redis.register_script(lua("recrawl"))

    async def enqueue(self, entries: Sequence[tuple[str, int, str]]) -> list[int]:
        """Add (fingerprint or "", priority, JSON) entries not seen before; return the
        positions in ``entries`` of those that were seen (duplicates, not added)."""
        k = self.keys
        args: list[str | int] = []
        for fingerprint, priority, request in entries:
            args += (self._dedup_key(fingerprint), priority, request)
        seen = await self._enqueue(
            keys=[k.requests, k.dupefilter, k.seq, k.bloom, k.bloom_count], args=args
        )
        return [int(i) for i in seen]

    def _dedup_key(self, fingerprint: str) -> str:
        return self.bloom.key(fingerprint) if self.bloom and fingerprint else fingerprint

    async def enqueue_leased(
        self, entries: Sequence[tuple[str, int, str, str]], lease_ms: int
    ) -> list[str]:
        """Add (fingerprint, priority, JSON, token) entries leased to their finder; return
        the tokens of those already seen (their requests are duplicates)."""
        k = self.keys
        args: list[Any] = [
            lease_ms,
            *(x for fp, *rest in entries for x in (self._dedup_key(fp), *rest)),
        ]
        seen = await self._enqueue_leased(
            keys=[k.dupefilter, k.seq, k.leases, k.leased, k.bloom, k.bloom_count], args=args
        )
        return [_text(token) for token in seen]

    async def lease(self, node: str, n: int, lease_ms: int, start_n: int) -> list[Leased]:
        k = self.keys
        flat = await self._lease(
            keys=[k.requests, k.leases, k.leased, k.seq, k.start_urls],
            args=[n, node, lease_ms, start_n],
        )
        return [
            _leased(_text(flat[i]), _text(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)
        ]

    async def ack(self, tokens: list[str]) -> tuple[int, int]:
        k = self.keys
        acked, refused = await self._ack(keys=[k.leases, k.leased, k.attempts], args=tokens)
        return int(acked), int(refused)

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
        returned, dead, bad = await self._run_reclaim([max_attempts, limit])
        for token in bad:
            if on_unreadable is not None:
                on_unreadable(_text(token))
        return returned, dead

    async def release(self, tokens: list[str]) -> int:
        """Hand leases back now (a closing node's requests it did not start)."""
        if not tokens:
            return 0
        returned, _, _ = await self._run_reclaim([0, 0, *tokens])
        return returned

    async def _run_reclaim(self, args: list[Any]) -> tuple[int, int, list[bytes]]:
        k = self.keys
        returned, dead, bad = await self._reclaim(
            keys=[k.leases, k.leased, k.requests, k.attempts, k.dead, k.start_urls], args=args
        )
        return int(returned), int(dead), list(bad)

    async def sweep(self, node: str, every_ms: int) -> tuple[list[str], list[str]]:
        """Drop lease deadlines without data and send lease data without a deadline to dead
        (neither was written by this crawl); return the tokens of each. Does nothing if
        another node swept in the last ``every_ms``."""
        k = self.keys
        dropped, kept = await self._sweep(
            keys=[k.leases, k.leased, k.dead, k.sweeper], args=[node, every_ms]
        )
        return [_text(t) for t in dropped], [_text(t) for t in kept]

    async def forget_nodes(self, names: list[str]) -> None:
        """Remove entries of ``<spider>:nodes``."""
        if names:
            await self.redis.hdel(self.keys.nodes, *names)

    async def extend(self, tokens: list[str], lease_ms: int) -> list[str]:
        """Push the deadlines of these leases; return those that are no longer leased."""
        if not tokens:
            return []
        lost = await self._extend(keys=[self.keys.leases], args=[lease_ms, *tokens])
        return [_text(token) for token in lost]

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
        each time would grow as nodes squared (docs/scaling.md)."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(k.requests)
            pipe.zcard(k.leases)
            pipe.llen(k.start_urls)
            pipe.scard(k.dupefilter)
            pipe.llen(k.dead)
            if nodes:
                pipe.hgetall(k.nodes)
            pipe.time()
            pipe.get(k.bloom_count)
            queued, leased, start_urls, seen, dead, *heartbeats, now, bloomed = await pipe.execute()
        with contextlib.suppress(ValueError):  # a count this crawl did not write: ignored
            seen += int(bloomed or 0)
        parsed, bad = {}, []
        for node, value in (heartbeats[0] if heartbeats else {}).items():
            name = _text(node)
            try:
                parsed[name] = codec.heartbeat(value)
            except ValueError as exc:
                bad.append((name, str(exc)))
        return CrawlStatus(
            queued,
            leased,
            start_urls,
            seen,
            dead,
            parsed,
            int(now[0]) * 1000 + int(now[1]) // 1000,
            bad,
        )

    async def seed(self, urls: list[str]) -> int:
        """Append list page URLs to ``<spider>:start_urls``, each the start of a listing of
        the current generation (started if there is none)."""
        if not urls:
            return 0
        crawl_id = await self.crawl_id()
        entries = [codec.start_entry(url, {CRAWL_ID: crawl_id, LISTING: url}) for url in urls]
        await self.redis.sadd(self.keys.listings, *urls)
        return int(await self.redis.rpush(self.keys.start_urls, *entries))

    async def crawl_id(self) -> str:
        """The current generation's crawl id, a new one if the crawl has none yet."""
        await self.redis.hsetnx(self.keys.crawl, "id", new_crawl_id())
        return _text(await self.redis.hget(self.keys.crawl, "id") or "")

    async def recrawl(self) -> str | None:
        """Start a new generation; its crawl id, or None while the crawl is running."""
        k = self.keys
        crawl_id = new_crawl_id()
        started = await self._recrawl(
            keys=[
                k.requests,
                k.leases,
                k.start_urls,
                k.crawl,
                k.listings,
                k.dupefilter,
                k.bloom,
                k.bloom_count,
                k.canonical,
            ],
            args=[crawl_id],
        )
        return crawl_id if started else None

    async def note_list_failed(self) -> None:
        """A list page of this generation failed: its children were missed."""
        await self.redis.hincrby(self.keys.crawl, "list_failed", 1)

    async def generation(self) -> tuple[str | None, list[str], int]:
        """The current generation: its crawl id, its listings, its failed list pages."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.crawl)
            pipe.smembers(self.keys.listings)
            crawl, listings = await pipe.execute()
        crawl = {_text(k): _text(v) for k, v in crawl.items()}
        try:
            failed = int(crawl.get("list_failed", 0))
        except ValueError:  # not ours: count it as a failure, mark nothing gone
            failed = 1
        return crawl.get("id"), sorted(_text(x) for x in listings), failed

    async def reset(self) -> None:
        """Forget the crawl: queue, dedup set, leases, start URLs, nodes, canonical URLs,
        its generation."""
        await self.redis.delete(*self.keys.all())


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _leased(token: str, kind: str, payload: bytes | str) -> Leased:
    """A leased entry; one that is not UTF-8 text carries the error instead (replacing its
    bytes would make a different URL of it)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Leased(token, _KINDS[kind], "", error=f"not UTF-8 text: {payload[:60]!r}")
    return Leased(token, _KINDS[kind], payload)
