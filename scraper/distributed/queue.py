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
``<spider>:nodes``       HASH  node id -> "<ms> <JSON heartbeat>"
``<spider>:seq``         STRING the sequence counter (requests and lease tokens)
``<spider>:sweeper``     STRING the node whose turn it is to check the leases (expires)
``<spider>:canonical``   HASH  canonical URL -> fingerprint of the child holding its body
                               (DEDUP_CANONICAL, scraper/canonical.py)

A request taken by a node is not popped: LEASE moves it to ``leased`` with a deadline,
and only ACK removes it. RECLAIM, run by every node, puts back what a dead node held.
All deadlines use Redis's own clock (TIME), never a node's.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scraper.distributed.codec import MAX_ENTRY_BYTES

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis

SCORE_SCALE = 10**12

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The dedup check and record, in one step. A key is a fingerprint (SADD to the set), ""
# for dont_filter, or "#p1,p2,..." Bloom filter bit positions: new if any bit was 0.
_IS_NEW = """
local function is_new(key, set_key, bloom_key, bloom_count)
  if key == '' then return true end
  if string.byte(key, 1) == 35 then
    local new = false
    for pos in string.gmatch(key, '%d+') do
      if redis.call('SETBIT', bloom_key, pos, 1) == 0 then new = true end
    end
    if new then redis.call('INCR', bloom_count) end
    return new
  end
  return redis.call('SADD', set_key, key) == 1
end
"""

# KEYS: requests, dupefilter, seq, bloom, bloom_count. ARGV: triples of dedup key,
# priority, request JSON. Returns the positions (from 0) of the entries already seen.
ENQUEUE = _IS_NEW + """
local seen = {}
for i = 1, #ARGV, 3 do
  if is_new(ARGV[i], KEYS[2], KEYS[4], KEYS[5]) then
    local seq = redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[1], -tonumber(ARGV[i + 1]) * 1e12 + seq, seq .. ' ' .. ARGV[i + 2])
  else
    seen[#seen + 1] = (i - 1) / 3
  end
end
return seen
"""

# KEYS: dupefilter, seq, leases, leased, bloom, bloom_count. ARGV: lease_ms, then
# quadruples of dedup key,
# priority, request JSON, token. Like ENQUEUE, but each new request is leased at once to
# the node that found it (under the token it chose) instead of queued: that node crawls
# it now. Returns the tokens of the requests that were already seen (not leased).
ENQUEUE_LEASED = _NOW + _IS_NEW + """
local seen = {}
for i = 2, #ARGV, 4 do
  if is_new(ARGV[i], KEYS[1], KEYS[5], KEYS[6]) then
    local seq = redis.call('INCR', KEYS[2])
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[1]), ARGV[i + 3])
    redis.call('HSET', KEYS[4], ARGV[i + 3],
               (-tonumber(ARGV[i + 1]) * 1e12 + seq) .. ' ' .. seq .. ' ' .. ARGV[i + 2])
  else
    seen[#seen + 1] = ARGV[i + 3]
  end
end
return seen
"""

# KEYS: requests, leases, leased, seq, start_urls. ARGV: n, node, lease_ms, start_n.
# Leases up to n requests, best first, then up to start_n start URLs if the queue was short.
# Returns a flat list of token, kind ("r" or "s"), payload.
LEASE = _NOW + """
local out = {}
local items = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #items, 2 do
  redis.call('ZREM', KEYS[1], items[i])
  local token = ARGV[2] .. ':' .. redis.call('INCR', KEYS[4])
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), token)
  redis.call('HSET', KEYS[3], token, items[i + 1] .. ' ' .. items[i])
  out[#out + 1] = token; out[#out + 1] = 'r'; out[#out + 1] = items[i]
end
if #items == 0 and tonumber(ARGV[4]) > 0 then
  local urls = redis.call('LRANGE', KEYS[5], 0, tonumber(ARGV[4]) - 1)
  if #urls > 0 then redis.call('LTRIM', KEYS[5], #urls, -1) end
  for _, url in ipairs(urls) do
    local token = ARGV[2] .. ':' .. redis.call('INCR', KEYS[4])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), token)
    redis.call('HSET', KEYS[3], token, 'start ' .. url)
    out[#out + 1] = token; out[#out + 1] = 's'; out[#out + 1] = url
  end
end
return out
"""

# KEYS: leases, leased, attempts. ARGV: tokens. A token no longer leased (it expired and
# was reclaimed) is refused: the request is someone else's now. Returns {acked, refused}.
ACK = """
local acked, refused = 0, 0
for _, token in ipairs(ARGV) do
  local data = redis.call('HGET', KEYS[2], token)
  if data then
    redis.call('HDEL', KEYS[2], token)
    redis.call('ZREM', KEYS[1], token)
    local seq = string.match(data, '^%S+ (%d+) ')
    if seq then redis.call('HDEL', KEYS[3], seq) end
    acked = acked + 1
  else
    refused = refused + 1
  end
end
return {acked, refused}
"""

# KEYS: leases, leased, requests, attempts, dead, start_urls. ARGV: max_attempts, limit,
# then (for RELEASE) tokens. Without tokens: every lease past its deadline goes back.
# With tokens: those leases go back now (a node handing back what it will not start),
# without counting an attempt. Lease data that is not "<score> <member>" or "start <url>"
# was not written by these scripts: it goes to dead as it is, and its token is returned.
# Returns {returned, dead, tokens of unreadable lease data}.
RECLAIM = _NOW + """
local tokens = {}
if #ARGV > 2 then
  for i = 3, #ARGV do tokens[#tokens + 1] = ARGV[i] end
else
  tokens = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
end
local returned, dead, bad = 0, 0, {}
for _, token in ipairs(tokens) do
  local data = redis.call('HGET', KEYS[2], token)
  redis.call('ZREM', KEYS[1], token)
  if data then
    redis.call('HDEL', KEYS[2], token)
    local score, member = string.match(data, '^(%S+) (.*)$')
    local number = tonumber(score)
    if score == 'start' then
      redis.call('RPUSH', KEYS[6], member)
      returned = returned + 1
    elseif not number or number ~= number then
      redis.call('RPUSH', KEYS[5], data)
      bad[#bad + 1] = token
    else
      local seq = string.match(member, '^(%d+) ')
      local n = 0
      if #ARGV == 2 and seq then
        if not tonumber(redis.call('HGET', KEYS[4], seq) or '0') then
          redis.call('HDEL', KEYS[4], seq)
        end
        n = redis.call('HINCRBY', KEYS[4], seq, 1)
      end
      if n > tonumber(ARGV[1]) then
        redis.call('RPUSH', KEYS[5], member)
        redis.call('HDEL', KEYS[4], seq)
        dead = dead + 1
      else
        redis.call('ZADD', KEYS[3], number, member)
        returned = returned + 1
      end
    end
  end
end
return {returned, dead, bad}
"""

# KEYS: leases, leased, dead, sweeper. ARGV: node, ms. Every script writes a lease's
# deadline and its data together, so a deadline without data, or data without a deadline,
# was put there by someone else: the first would hold the crawl open forever, the second
# is never read. Deadlines without data are dropped, data without a deadline goes to dead.
# One sweep per ms crawl-wide (it reads every lease): the first node to ask takes the turn.
# Returns {dropped, sent to dead}.
SWEEP = """
if not redis.call('SET', KEYS[4], ARGV[1], 'NX', 'PX', ARGV[2]) then return {{}, {}} end
local dropped, kept = {}, {}
for _, token in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HEXISTS', KEYS[2], token) == 0 then
    redis.call('ZREM', KEYS[1], token)
    dropped[#dropped + 1] = token
  end
end
for _, token in ipairs(redis.call('HKEYS', KEYS[2])) do
  if not redis.call('ZSCORE', KEYS[1], token) then
    redis.call('RPUSH', KEYS[3], redis.call('HGET', KEYS[2], token))
    redis.call('HDEL', KEYS[2], token)
    kept[#kept + 1] = token
  end
end
return {dropped, kept}
"""

# KEYS: leases. ARGV: lease_ms, tokens. Pushes the deadlines of leases still held; returns
# the tokens that are no longer leased (they expired and another node reclaimed them).
EXTEND = _NOW + """
local lost = {}
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[i])
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""

# KEYS: nodes. ARGV: node, heartbeat JSON, stale_ms. Records this node, forgets stale ones.
HEARTBEAT = _NOW + """
redis.call('HSET', KEYS[1], ARGV[1], now .. ' ' .. ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local seen = tonumber(string.match(all[i + 1], '^(%d+)'))
  if seen and now - seen > tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], all[i]) end
end
return now
"""


class BloomFilter:
    """Bit positions of a Bloom filter sized for ``capacity`` requests at ``error_rate``.

    Memory is m bits in one Redis string (at most 2**32 bits, 512 MiB), instead of a
    set holding every fingerprint (~100 bytes each): 1e8 requests at 1e-3 take 180 MB
    instead of ~10 GB. The cost: a new request is taken for a seen one (and skipped)
    with probability ``error_rate``. Positions come from the fingerprint's own bits
    (double hashing), so every node computes the same ones.
    """

    def __init__(self, capacity: int, error_rate: float) -> None:
        if capacity < 1 or not 0 < error_rate < 1:
            raise ValueError("REDIS_BLOOM_CAPACITY must be >= 1 and REDIS_BLOOM_ERROR_RATE "
                             "between 0 and 1")
        self.bits = math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)
        if self.bits > 2**32:
            raise ValueError(f"a Bloom filter for {capacity} requests at {error_rate} needs "
                             f"{self.bits} bits; Redis strings hold 2**32")
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))

    def key(self, fingerprint: str) -> str:
        """The dedup key of a hex fingerprint: ``#`` and its bit positions."""
        h1, h2 = int(fingerprint[:16], 16), int(fingerprint[16:32], 16) | 1
        return "#" + ",".join(str((h1 + i * h2) % self.bits) for i in range(self.hashes))


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one spider's crawl."""

    prefix: str

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return f"{self.prefix}:{name}"


@dataclass
class Leased:
    """One leased entry: a request's JSON, or a start URL."""

    token: str
    kind: str  # "r": request, "s": start URL
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
        self.keys = Keys(spider_name)
        self.bloom = bloom
        self._enqueue = redis.register_script(ENQUEUE)
        self._enqueue_leased = redis.register_script(ENQUEUE_LEASED)
        self._lease = redis.register_script(LEASE)
        self._ack = redis.register_script(ACK)
        self._reclaim = redis.register_script(RECLAIM)
        self._extend = redis.register_script(EXTEND)
        self._heartbeat = redis.register_script(HEARTBEAT)
        self._sweep = redis.register_script(SWEEP)

    async def enqueue(self, entries: list[tuple[str, int, str]]) -> list[int]:
        """Add (fingerprint or "", priority, JSON) entries not seen before; return the
        positions in ``entries`` of those that were seen (duplicates, not added)."""
        k = self.keys
        args = [x for fp, *rest in entries for x in (self._dedup_key(fp), *rest)]
        seen = await self._enqueue(
            keys=[k.requests, k.dupefilter, k.seq, k.bloom, k.bloom_count], args=args)
        return [int(i) for i in seen]

    def _dedup_key(self, fingerprint: str) -> str:
        return self.bloom.key(fingerprint) if self.bloom and fingerprint else fingerprint

    async def enqueue_leased(self, entries: list[tuple[str, int, str, str]],
                             lease_ms: int) -> list[str]:
        """Add (fingerprint, priority, JSON, token) entries leased to their finder; return
        the tokens of those already seen (their requests are duplicates)."""
        k = self.keys
        args: list[Any] = [lease_ms, *(x for fp, *rest in entries
                                       for x in (self._dedup_key(fp), *rest))]
        seen = await self._enqueue_leased(
            keys=[k.dupefilter, k.seq, k.leases, k.leased, k.bloom, k.bloom_count], args=args)
        return [_text(token) for token in seen]

    async def lease(self, node: str, n: int, lease_ms: int, start_n: int) -> list[Leased]:
        k = self.keys
        flat = await self._lease(keys=[k.requests, k.leases, k.leased, k.seq, k.start_urls],
                                 args=[n, node, lease_ms, start_n])
        return [_leased(_text(flat[i]), _text(flat[i + 1]), flat[i + 2])
                for i in range(0, len(flat), 3)]

    async def ack(self, tokens: list[str]) -> tuple[int, int]:
        k = self.keys
        acked, refused = await self._ack(keys=[k.leases, k.leased, k.attempts], args=tokens)
        return int(acked), int(refused)

    async def reclaim(self, max_attempts: int, limit: int = 1000,
                      on_unreadable: Callable[[str], None] | None = None) -> tuple[int, int]:
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
            keys=[k.leases, k.leased, k.requests, k.attempts, k.dead, k.start_urls], args=args)
        return int(returned), int(dead), list(bad)

    async def sweep(self, node: str, every_ms: int) -> tuple[list[str], list[str]]:
        """Drop lease deadlines without data and send lease data without a deadline to dead
        (neither was written by this crawl); return the tokens of each. Does nothing if
        another node swept in the last ``every_ms``."""
        k = self.keys
        dropped, kept = await self._sweep(keys=[k.leases, k.leased, k.dead, k.sweeper],
                                          args=[node, every_ms])
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
        return int(await self._heartbeat(keys=[self.keys.nodes],
                                         args=[node, json.dumps(info), stale_ms]))

    async def status(self, nodes: bool = True) -> CrawlStatus:
        """The crawl's counts; ``nodes=False`` leaves out the heartbeats (``nodes`` is then
        empty): every node reads the status up to 5 times a second, and all heartbeats
        each time would grow as nodes squared (docs/scaling.md)."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zcard(k.requests).zcard(k.leases).llen(k.start_urls).scard(k.dupefilter)
            pipe.llen(k.dead)
            if nodes:
                pipe.hgetall(k.nodes)
            pipe.time().get(k.bloom_count)
            queued, leased, start_urls, seen, dead, *heartbeats, now, bloomed = \
                await pipe.execute()
        with contextlib.suppress(ValueError):  # a count this crawl did not write: ignored
            seen += int(bloomed or 0)
        parsed, bad = {}, []
        for node, value in (heartbeats[0] if heartbeats else {}).items():
            name = _text(node)
            try:
                parsed[name] = _heartbeat_of(value)
            except ValueError as exc:
                bad.append((name, str(exc)))
        return CrawlStatus(queued, leased, start_urls, seen, dead, parsed,
                           int(now[0]) * 1000 + int(now[1]) // 1000, bad)

    async def seed(self, urls: list[str]) -> int:
        """Append list page URLs to ``<spider>:start_urls``."""
        return int(await self.redis.rpush(self.keys.start_urls, *urls)) if urls else 0

    async def reset(self) -> None:
        """Forget the crawl: queue, dedup set, leases, start URLs, nodes, canonical URLs."""
        k = self.keys
        await self.redis.delete(k.requests, k.dupefilter, k.start_urls, k.leases, k.leased,
                                k.attempts, k.dead, k.nodes, k.seq, k.bloom, k.bloom_count,
                                k.sweeper, k.canonical)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _leased(token: str, kind: str, payload: bytes | str) -> Leased:
    """A leased entry; one that is not UTF-8 text carries the error instead (replacing its
    bytes would make a different URL of it)."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Leased(token, kind, "", error=f"not UTF-8 text: {payload[:60]!r}")
    return Leased(token, kind, payload)


def _heartbeat_of(value: bytes | str) -> tuple[int, dict[str, Any]]:
    """A ``<spider>:nodes`` value: "<ms> <JSON object>"; ValueError saying why not."""
    if len(value) > MAX_ENTRY_BYTES:
        raise ValueError(f"not a heartbeat: {len(value)} bytes is over {MAX_ENTRY_BYTES}")
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        seen_ms, _, info = text.partition(" ")
        parsed = int(seen_ms), json.loads(info)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise ValueError(f"not a heartbeat: {value[:60]!r}") from None
    if not isinstance(parsed[1], dict):
        raise ValueError(f"not a heartbeat: {value[:60]!r}")
    return parsed
