"""Garbage-collector thresholds for a crawl with a thousand requests in flight.

Python runs a young-generation collection every 700 net allocations. A crawl at
c=1000 keeps hundreds of thousands of objects alive (requests, responses, Deferreds,
items waiting for their batch), and each collection walks the young ones again: the
measured cost is ~10% of the CPU per page (bench/RESULTS.md). GC_THRESHOLDS raises
the threshold while the engine runs and restores Python's on stop, and counts the
collections and the seconds they took in the stats (``gc/collections/gen<N>``,
``gc/seconds/gen<N>``): a full collection walks every live object, so a crawl that holds
more of them pays here first.
"""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector


class GcThresholds:
    """Extension: ``gc.set_threshold(*GC_THRESHOLDS)`` between engine start and stop."""

    def __init__(self, thresholds: tuple[int, ...], stats: StatsCollector) -> None:
        self.thresholds = thresholds
        self.saved = gc.get_threshold()
        self.stats = stats
        self.began = 0.0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        thresholds = tuple(int(t) for t in crawler.settings.getlist("GC_THRESHOLDS"))
        if not thresholds:
            raise NotConfigured
        ext = cls(thresholds, crawler.stats)
        crawler.signals.connect(ext.engine_started, signal=signals.engine_started)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    def engine_started(self) -> None:
        self.saved = gc.get_threshold()
        gc.set_threshold(*self.thresholds)
        gc.callbacks.append(self._collection)

    def engine_stopped(self) -> None:
        gc.set_threshold(*self.saved)
        if self._collection in gc.callbacks:
            gc.callbacks.remove(self._collection)

    def _collection(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.began = time.perf_counter()
            return
        generation = f"gen{info['generation']}"
        self.stats.inc_value(f"gc/collections/{generation}")
        seconds = time.perf_counter() - self.began
        key = f"gc/seconds/{generation}"
        self.stats.set_value(key, self.stats.get_value(key, 0.0) + seconds)
