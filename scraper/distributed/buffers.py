"""What a node keeps between the engine and Redis: the requests it will start, and the
requests it found that Redis has not seen yet.

The engine fills and empties these synchronously (DistributedScheduler); the pump moves
them to and from Redis in batches (scraper.distributed.pump). Requests stay here while
Redis is out of reach: nothing is lost meanwhile.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, NamedTuple

from scraper.distributed.leases import LEASE

if TYPE_CHECKING:
    from scrapy import Request


class Outgoing(NamedTuple):
    """A request on its way to the shared queue."""

    fingerprint: str  # "" for dont_filter requests
    priority: int
    data: str  # the request, encoded (scraper.distributed.codec)
    site: str
    request: Request  # signalled as dropped if Redis has seen it


class OutgoingLeased(NamedTuple):
    """A list page this node found and crawls itself, leased to it in Redis."""

    fingerprint: str
    priority: int
    data: str
    token: str
    site: str


class Buffers:
    """``local``: requests this node holds and will start, in order; ``later``: leased
    requests of paced sites, until their start times; ``outbox``: requests for the shared
    queue; ``outbox_leased``: found list pages to write as leased."""

    def __init__(self) -> None:
        self.local: deque[Request] = deque()
        self.later: dict[str, Request] = {}  # lease token -> request, until its start time
        self.outbox: list[Outgoing] = []
        self.outbox_leased: list[OutgoingLeased] = []

    def empty(self) -> bool:
        return not (self.local or self.later or self.outbox or self.outbox_leased)

    def hold(self, request: Request) -> None:
        """Keep a leased request until its start time (the pump's timer takes it back)."""
        self.later[request.meta[LEASE]] = request

    def due(self, token: str) -> Request | None:
        """The held request of ``token``, its start time come; None if it was dropped."""
        return self.later.pop(token, None)

    def unstarted(self) -> int:
        return len(self.local) + len(self.later)

    def keep(self, request: Request) -> None:
        """A request this node holds: list pages (higher priority) before the rest."""
        if self.local and request.priority > self.local[0].priority:
            self.local.appendleft(request)
        else:
            self.local.append(request)

    def unstarted_leases(self) -> list[str]:
        return [r.meta[LEASE] for r in self.local if LEASE in r.meta] + list(self.later)

    def not_in_redis_yet(self) -> set[str]:
        """Leases of found list pages still in the outbox: not written yet, not lost."""
        return {entry.token for entry in self.outbox_leased}

    def drop_unstarted(self, tokens: set[str]) -> set[str]:
        """Take the requests of these leases out of ``local`` (the engine has not started
        them); return their tokens."""
        dropped = {t for r in self.local if (t := r.meta.get(LEASE)) in tokens}
        if dropped:
            self.local = deque(r for r in self.local if r.meta.get(LEASE) not in dropped)
        waiting = tokens & self.later.keys()
        for token in waiting:
            del self.later[token]
        return dropped | waiting
