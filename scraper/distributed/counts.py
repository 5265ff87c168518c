"""The crawl's counts as nodes and `scrapy status` read them: summed over the partitions
(scraper/distributed/lua/status.lua gives one partition's), heartbeats parsed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scraper.distributed import codec


@dataclass
class CrawlStatus:
    """The crawl-wide counts the completion check and `scrapy status` read (summed over the
    partitions)."""

    queued: int
    leased: int
    start_urls: int
    seen: int
    dead: int
    nodes: dict[str, tuple[int, dict[str, Any]]]
    now_ms: int
    #: Entries of ``<spider>:nodes`` that are not heartbeats: (field, why).
    bad_nodes: list[tuple[str, str]] = field(default_factory=list)
    #: Sites with queued requests, and those of them waiting (Retry-After, or a pace).
    sites: int = 0
    waiting: int = 0
    #: Up to 10 waiting sites: site -> seconds until they are leased from again.
    waits: dict[str, float] = field(default_factory=dict)
    #: Listings seeded in this generation (`scrapy seed`).
    listings: int = 0
    #: The partitions with requests queued (or, partition 0, start URLs).
    busy: set[int] = field(default_factory=set)
    #: False when the partitions were read at different moments and may disagree (a
    #: request leased in one while its children went to another): then not ``drained``.
    consistent: bool = True

    @property
    def drained(self) -> bool:
        """Nothing queued, leased or waiting to be seeded, anywhere."""
        return self.consistent and self.sites == 0 and self.leased == 0 and self.start_urls == 0


def sum_reads(reads: list[list[Any]]) -> CrawlStatus:
    """The crawl's status from each partition's status.lua reply, in partition order."""
    status = CrawlStatus(0, 0, 0, 0, 0, {}, 0)
    for k, read in enumerate(reads):
        (
            queued,
            sites,
            leases,
            seen,
            dead,
            bloomed,
            _,
            start_urls,
            now,
            waiting,
            waits,
            listings,
        ) = read
        status.listings += int(listings)
        if int(sites) or int(start_urls):
            status.busy.add(k)
        status.queued += max(0, _int(queued))  # a count for people: `sites` decides
        status.sites += int(sites)
        status.leased += int(leases)
        status.seen += int(seen) + _int(bloomed)  # a count this crawl did not write: 0
        status.dead += int(dead)
        status.start_urls += int(start_urls)
        status.now_ms = max(status.now_ms, int(now))
        status.waiting += int(waiting)
        for i in range(0, len(waits), 2):
            if len(status.waits) < 10:
                status.waits[_text(waits[i])] = int(waits[i + 1]) / 1000
    return status


def _int(value: bytes | str | int) -> int:
    try:
        return int(value)
    except ValueError:
        return 0


def heartbeats(
    entries: dict[Any, Any],
) -> tuple[dict[str, tuple[int, dict[str, Any]]], list[tuple[str, str]]]:
    parsed, bad = {}, []
    for node, value in entries.items():
        name = _text(node)
        try:
            parsed[name] = codec.heartbeat(value)
        except ValueError as exc:
            bad.append((name, str(exc)))
    return parsed, bad


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
