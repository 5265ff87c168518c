"""Scrapy's in-memory stats, without the cost of its deprecation shim on every access,
and written as JSON at the end of a crawl when ``STATS_FILE`` names a file.

Scrapy 2.19's StatsCollector defines ``__getattribute__`` to wrap its methods in a
warning about the deprecated ``spider`` argument: every attribute read of the collector
(``self._stats`` inside ``inc_value`` included) runs that Python function. A crawl
updates a dozen stats per page; at c=1000 the shim alone took 3.2% of the crawl's CPU
(py-spy, bench/RESULTS.md). This collector reads its attributes as any object does; the
methods, their arguments and the stats are Scrapy's own.

``STATS_FILE``: what Scrapy logs as "Dumping Scrapy stats", as one JSON object (times as
ISO 8601 text), for whatever runs the crawl (a scheduler, CI, the tests) to read instead
of parsing the log. Written to a temporary name and renamed: a reader never sees half.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from scrapy.statscollectors import MemoryStatsCollector


class StatsCollector(MemoryStatsCollector):
    """MemoryStatsCollector with plain attribute access, and the ``STATS_FILE`` dump."""

    __getattribute__ = object.__getattribute__

    def _persist_stats(self, stats: dict[str, Any]) -> None:
        super()._persist_stats(stats)
        path = self._crawler.settings.get("STATS_FILE")
        if path:
            write_json(Path(path), stats)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(data, default=_plain, sort_keys=True, indent=1))
    partial.replace(path)


def _plain(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
