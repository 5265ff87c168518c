"""The leases one node holds, from the LEASE that gave them to the ACK that ends them.

A lease token names one request in Redis that this node has taken. It is *held* from
the LEASE call (or, for a list page this node found itself, from the moment it is
found) until its request is done, that is stored (see scraper.distributed.tracking);
then it waits in *acks* until the pump sends the acknowledgement. A held lease can be
*lost*: it expired while Redis was out of reach and another node reclaimed it. Its
request, if already in flight, is finished here anyway (stored again, idempotently), and
Redis refuses its late acknowledgement.

Besides held leases, acks carry tokens that end without a request: start URLs (their
list request went to the queue), and entries that are not ours (skipped and logged).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable

#: request.meta key: the lease token of the request (set by the scheduler).
LEASE = "_lease"
#: request.meta key: the lease token of the response whose callback yielded the request.
FOUND_BY = "_found_by"
#: request.meta key: the same, on every request a leased response yields, until the
#: engine hands it to the scheduler (scraper/distributed/tracking.py).
YIELDED_BY = "_yielded_by"


class Leases:
    """The held, lost and to-be-acknowledged lease tokens of this node."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.held: set[str] = set()
        self.lost: set[str] = set()  # held, in flight, but reclaimed by other nodes
        self.acks: list[str] = []
        self._found = itertools.count()
        #: Held leases per site whose requests have not left the downloader yet: what
        #: this node has of each site to start or to fetch (not to store).
        self.per_site: Counter[str] = Counter()
        self._sites: dict[str, str] = {}  # the site of each lease counted in per_site
        #: Leases whose downloads ended since the pump last leased: room freed.
        self.freed = 0

    def __len__(self) -> int:
        return len(self.held)

    def hold(self, token: str, site: str = "") -> None:
        self.held.add(token)
        self._sites[token] = site
        self.per_site[site] += 1

    def hold_found(self, partition: int, site: str) -> str:
        """A new token for a list page found by a request this node holds: leased to this
        node in Redis, in its site's partition, by the next flush."""
        token = f"{partition}/{self.node}:f{next(self._found)}"
        self.hold(token, site)
        return token

    def fetching(self, token: str, site: str) -> None:
        """A held lease's request goes to the downloader again (a retry, a redirect):
        it takes a place of its site again."""
        if token in self.held and token not in self._sites:
            self._sites[token] = site
            self.per_site[site] += 1

    def fetched(self, token: str) -> None:
        """A held lease's request left the downloader: its site has room for the next one
        while this one is parsed and stored. (Counted until the acknowledgement, a site's
        downloader slot sat idle for a pipeline's and a flush's time: bench/RESULTS.md,
        "After d435633".)"""
        if token in self._sites:
            self._release((token,))
            self.freed += 1

    def _release(self, tokens: Iterable[str]) -> None:
        for token in tokens:
            site = self._sites.pop(token, None)
            if site is not None:
                self.per_site[site] -= 1
                if self.per_site[site] <= 0:
                    del self.per_site[site]

    def done(self, token: str | None) -> bool:
        """The request of ``token`` is stored: its acknowledgement is due. False if this
        node does not hold it (no lease, or already done)."""
        if token not in self.held:
            return False
        assert token is not None
        self.held.discard(token)
        self.lost.discard(token)
        self._release((token,))
        self.acks.append(token)
        return True

    def end(self, token: str) -> None:
        """Acknowledge a token that has no request to wait for (a start URL, a bad entry)."""
        self.acks.append(token)

    def take_acks(self) -> list[str]:
        """The acknowledgements due now, in order; give back what was not sent with
        ``unsent``."""
        acks, self.acks = self.acks, []
        return acks

    def unsent(self, acks: list[str]) -> None:
        """Acknowledgements a flush could not send: first in line next time."""
        self.acks[:0] = acks

    def let_go(self) -> int:
        """Acknowledge every held lease (their requests ended without an outcome)."""
        n = len(self.held)
        self.acks.extend(self.held)
        self._release(self.held)
        self.held.clear()
        self.lost.clear()
        return n

    def forget(self, tokens: Iterable[str]) -> None:
        """Leases that turned out not to be this node's (found first by another node)."""
        tokens = set(tokens)
        self._release(tokens & self.held)
        self.held.difference_update(tokens)

    def to_extend(self, not_in_redis_yet: set[str]) -> list[str]:
        """The held leases to extend: not lost, and already written to Redis."""
        return sorted(self.held - self.lost - not_in_redis_yet)

    def lose(self, unstarted: set[str], in_flight: set[str]) -> None:
        """Leases reclaimed by other nodes: those not started are no longer held; those
        in flight are held until done, as lost."""
        self._release(unstarted & self.held)
        self.held -= unstarted
        self.lost |= in_flight
