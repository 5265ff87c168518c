"""Upkeep of leases: extended while held, taken back from dead nodes, let go when lost.

Every lease has a deadline in Redis. A live node extends its own (``extend``); any node
puts back the expired leases of others (``reclaim``: a node died or stalled; a request
leased REDIS_MAX_ATTEMPTS times goes to ``:dead``); while the crawl waits only for other
nodes, one node at a time sweeps what a crashed script may have left (``sweep``). A node
that finds its own leases reclaimed (it could not reach Redis for longer than a lease)
lets them go (``lost``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scraper.distributed.buffers import Buffers
    from scraper.distributed.leases import Leases
    from scraper.distributed.queue import CrawlQueue

logger = logging.getLogger(__name__)


def log_rejected(queue: CrawlQueue, stats: Any, key: str, why: str) -> None:
    """An entry of ``key`` that this crawl did not write: skipped, logged and counted."""
    name = getattr(queue.keys, key, None) or f"{queue.keys.prefix}q:<site>"  # "requests"
    logger.error(
        "Skipped an entry of %(key)s that is not ours: %(error)s", {"key": name, "error": why}
    )
    stats.inc_value(f"distributed/rejected/{key}")


class LeaseUpkeep:
    """The lease chores of one node (the pump decides when)."""

    def __init__(
        self,
        queue: CrawlQueue,
        leases: Leases,
        buffers: Buffers,
        stats: Any,
        *,
        lease_ms: int,
        max_attempts: int,
        sweep_ms: int,
    ) -> None:
        self.queue, self.leases, self.buffers, self.stats = queue, leases, buffers, stats
        self.lease_ms, self.max_attempts, self.sweep_ms = lease_ms, max_attempts, sweep_ms

    async def extend(self) -> None:
        held = self.leases.to_extend(self.buffers.not_in_redis_yet())
        lost = await self.queue.extend(held, self.lease_ms)
        if lost:
            self.lost(set(lost))

    async def reclaim(self) -> None:
        """Put back the expired leases of other nodes (dead or stalled)."""
        returned, dead = await self.queue.reclaim(
            self.max_attempts, on_unreadable=self._reject_lease_data
        )
        if returned or dead:
            self.stats.inc_value("distributed/reclaimed", returned)
            logger.info(
                "Reclaimed %(n)d expired leases (a node died or stalled)%(dead)s",
                {"n": returned, "dead": f", {dead} to :dead" if dead else ""},
            )
        if dead:
            self.stats.inc_value("distributed/dead", dead)

    async def sweep(self) -> None:
        dropped, kept = await self.queue.sweep(self.leases.node, self.sweep_ms)
        for token in dropped:
            self.log_rejected("leases", f"{token!r} has no lease data; dropped")
        for token in kept:
            self.log_rejected(
                "leased", f"{token!r} has no lease deadline; moved to {self.queue.keys.dead}"
            )

    def lost(self, lost: set[str]) -> None:
        """Leases that expired while this node could not reach Redis (a partition, a long
        pause) and were reclaimed: their requests belong to other nodes now.

        Those not started yet are dropped here (another node crawls them). Those in
        flight are finished (stored again, idempotently: same key, same record) and
        their acknowledgements are sent and refused by Redis, which knows the lease
        token is no longer this node's.
        """
        dropped = self.drop_unstarted(lost)
        in_flight = lost - dropped
        self.leases.lose(dropped, in_flight)
        self.stats.inc_value("distributed/leases_lost", len(lost))
        logger.warning(
            "%(n)d leases of this node expired (Redis unreachable for longer than "
            "REDIS_LEASE_SECONDS) and were reclaimed by other nodes: %(dropped)d not started "
            "are dropped, %(inflight)d in flight will be stored again (idempotently) and their "
            "acknowledgements refused",
            {"n": len(lost), "dropped": len(dropped), "inflight": len(in_flight)},
        )

    def drop_unstarted(self, tokens: set[str]) -> set[str]:
        dropped = self.buffers.drop_unstarted(tokens)
        # They were counted as enqueued on this node; they will not be dequeued.
        self.stats.inc_value("scheduler/enqueued", -len(dropped))
        return dropped

    def _reject_lease_data(self, token: str) -> None:
        self.log_rejected(
            "leased", f"{token!r} holds unreadable lease data; moved to {self.queue.keys.dead}"
        )

    def log_rejected(self, key: str, why: str) -> None:
        log_rejected(self.queue, self.stats, key, why)
