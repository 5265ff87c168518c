"""Scrapy's in-memory stats, without the cost of its deprecation shim on every access.

Scrapy 2.19's StatsCollector defines ``__getattribute__`` to wrap its methods in a
warning about the deprecated ``spider`` argument: every attribute read of the collector
(``self._stats`` inside ``inc_value`` included) runs that Python function. A crawl
updates a dozen stats per page; at c=1000 the shim alone took 3.2% of the crawl's CPU
(py-spy, bench/RESULTS.md). This collector reads its attributes as any object does; the
methods, their arguments and the stats are Scrapy's own.
"""

from __future__ import annotations

from scrapy.statscollectors import MemoryStatsCollector


class StatsCollector(MemoryStatsCollector):
    """MemoryStatsCollector with plain attribute access."""

    __getattribute__ = object.__getattribute__
