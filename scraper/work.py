"""How much work this node has left, read from the engine, never from stats.

Stats are counters for people; the pipelines (flush the last batch at once) and the
progress line ask the engine what is waiting and what is on its way instead. In
distributed mode the scheduler's length is this node's local buffer: work in Redis is
the crawl's, not this node's (see DistributedScheduler.spider_idle for the crawl's end).
"""

from __future__ import annotations

from collections.abc import Sized
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


def requests_waiting(crawler: Crawler) -> int:
    """Requests this node's scheduler holds and has not handed to the downloader."""
    engine = crawler.engine
    scheduler = engine.scheduler if engine is not None else None
    if scheduler is None:
        return 0
    if isinstance(scheduler, Sized):  # Scrapy's and ours; the interface does not require it
        return len(scheduler)
    return int(scheduler.has_pending_requests())


def nothing_on_the_way(crawler: Crawler) -> bool:
    """Nothing is being downloaded or waits in the scheduler: no item is on its way."""
    engine = crawler.engine
    if engine is None or engine.scheduler is None or engine.downloader.active:
        return False
    return not engine.scheduler.has_pending_requests()
