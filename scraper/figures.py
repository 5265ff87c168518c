"""A node's figures, counted one way for the progress line, the progress bar and the
heartbeat that `scrapy status` reads.

Read from the crawl's stats and its engine when asked (a few dict reads): nothing is
counted per page for them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scraper.work import requests_waiting

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

#: Stats whose sum is the errors shown: children and list pages that failed, bodies
#: that could not be stored.
ERROR_STATS = ("listing/child_failed", "listing/list_failed", "body_store/failed")


@dataclass(frozen=True)
class Figures:
    """What one node has done so far, and what it is doing now."""

    written: int  # meta records in the meta store
    spooled: int  # meta records the store refused, kept in the spool for a replay
    errors: int
    discovered: int  # children found (``listing/children``, after dedup)
    in_flight: int  # requests being downloaded
    queued: int  # requests waiting in this node's scheduler

    @property
    def stored(self) -> int:
        """Pages whose record is kept: written, or spooled for a replay."""
        return self.written + self.spooled


def read_figures(crawler: Crawler) -> Figures:
    """The node's figures now."""
    stats = crawler.stats
    assert stats is not None
    engine = crawler.engine
    return Figures(
        written=stats.get_value("meta_store/written", 0),
        spooled=stats.get_value("meta_store/spooled", 0),
        errors=sum(stats.get_value(key, 0) for key in ERROR_STATS),
        discovered=stats.get_value("listing/children", 0),
        in_flight=len(engine.downloader.active) if engine is not None else 0,
        queued=requests_waiting(crawler),
    )


class Rate:
    """Pages per second over the last ``window`` seconds: steadier than the rate between
    two samples a fraction of a second apart, and still current."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, count: int) -> float:
        """Record ``count`` at ``now`` (monotonic seconds); the rate over the window."""
        samples = self.samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        then, before = samples[0]
        return (count - before) / (now - then) if now > then else 0.0
