"""Garbage-collector thresholds for a crawl with a thousand requests in flight.

Python runs a young-generation collection every 700 net allocations. A crawl at
c=1000 keeps hundreds of thousands of objects alive (requests, responses, Deferreds,
items waiting for their batch), and each collection walks the young ones again: the
measured cost is ~10% of the CPU per page (bench/RESULTS.md). GC_THRESHOLDS raises
the threshold while the engine runs and restores Python's on stop.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler


class GcThresholds:
    """Extension: ``gc.set_threshold(*GC_THRESHOLDS)`` between engine start and stop."""

    def __init__(self, thresholds: tuple[int, ...]) -> None:
        self.thresholds = thresholds
        self.saved = gc.get_threshold()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        thresholds = tuple(int(t) for t in crawler.settings.getlist("GC_THRESHOLDS"))
        if not thresholds:
            raise NotConfigured
        ext = cls(thresholds)
        crawler.signals.connect(ext.engine_started, signal=signals.engine_started)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    def engine_started(self) -> None:
        self.saved = gc.get_threshold()
        gc.set_threshold(*self.thresholds)

    def engine_stopped(self) -> None:
        gc.set_threshold(*self.saved)
