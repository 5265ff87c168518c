"""The names of a crawl's Redis keys, and which partition a site's requests live in.

A crawl's queue is split into ``P`` partitions (``REDIS_PARTITIONS``; the first node
stores the number in ``<spider>:crawl`` and every later node uses that one). Each site's
requests, their leases and their dedup entries live in one partition, chosen by a hash of
the site's name, so that every Lua script touches the keys of one partition only. On a
Redis Cluster each partition's keys share a hash tag (``{listing}``, ``{listing:1}``, ...),
so a partition lives on one shard and the partitions spread over the shards.

Partition 0 also holds what belongs to the whole crawl: start URLs, heartbeats, the
generation, the canonical URLs.

On one Redis there is one partition by default, named as scrapy-redis names its keys
(``listing:start_urls``, ``listing:dupefilter``, ...).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one partition of a spider's crawl (scraper/distributed/queue.py
    says what each holds). ``prefix`` + ``q:<site>`` is a site's queue."""

    prefix: str
    sites: str
    queued: str
    version: str
    ready: str
    dupefilter: str
    bloom: str
    bloom_count: str
    leases: str
    leased: str
    attempts: str
    dead: str
    seq: str
    sweeper: str
    # The crawl's own keys: used in partition 0 only.
    start_urls: str
    nodes: str
    crawl: str
    listings: str
    canonical: str

    @classmethod
    def of(cls, spider_name: str, partition: int = 0, cluster: bool = False) -> Keys:
        """The keys of ``partition``; on a cluster, hash-tagged by partition."""
        if cluster:
            tag = spider_name if partition == 0 else f"{spider_name}:{partition}"
            prefix = f"{{{tag}}}:"
        else:
            prefix = f"{spider_name}:" if partition == 0 else f"{spider_name}:{partition}:"
        names = (f.name for f in fields(cls) if f.name != "prefix")
        return cls(prefix, **{name: prefix + name for name in names})

    def queue(self, site: str) -> str:
        """The queue of one site's requests."""
        return f"{self.prefix}q:{site}"

    def batch(self, batch_id: str) -> str:
        """The answer kept of one enqueue batch (lua/answer.lua)."""
        return f"{self.prefix}batch:{batch_id}"

    def fixed(self) -> list[str]:
        """Every key of the partition but the sites' queues."""
        return [getattr(self, f.name) for f in fields(self) if f.name != "prefix"]


def partition_of(site: str, partitions: int) -> int:
    """The partition of a site's requests: the same on every node."""
    return zlib.crc32(site.encode("utf-8", "surrogatepass")) % partitions if partitions > 1 else 0


def token_partition(token: str) -> int:
    """The partition a lease token belongs to: tokens are ``<partition>/<node>:<n>``."""
    head, _, _ = token.partition("/")
    try:
        return int(head)
    except ValueError:
        return 0  # not one of ours: partition 0's scripts refuse it like any unknown token
