"""Progress: a line every PROGRESS_INTERVAL seconds, and a summary at close.

Replaces Scrapy's LogStats, whose "pages/min" hides what a fast crawl needs to
see: pages stored per second, requests in flight, errors.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet import task

from scraper.work import requests_waiting

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class Progress:
    """Logs crawl progress and a closing summary; keeps ``progress/*`` stats."""

    def __init__(self, crawler: Crawler, interval: float) -> None:
        self.crawler = crawler
        self.interval = interval
        self.started = time.monotonic()
        self.last = (self.started, 0)
        self.loop: task.LoopingCall | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        interval = crawler.settings.getfloat("PROGRESS_INTERVAL")
        if interval <= 0:
            raise NotConfigured  # switched off on purpose: no warning
        ext = cls(crawler, interval)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self) -> None:
        self.started = time.monotonic()
        self.last = (self.started, 0)
        self.loop = task.LoopingCall(self.log)
        self.loop.start(self.interval, now=False)

    def _counts(self) -> tuple[int, int, int]:
        stats = self.crawler.stats
        assert stats is not None
        stored = stats.get_value("meta_store/written", 0) + stats.get_value("meta_store/spooled", 0)
        errors = sum(
            stats.get_value(key, 0)
            for key in ("listing/child_failed", "listing/list_failed", "body_store/failed")
        )
        return stored, errors, requests_waiting(self.crawler)

    def log(self) -> None:
        """One progress line: rate since the last line, in flight, totals."""
        now = time.monotonic()
        stored, errors, queued = self._counts()
        rate = (stored - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, stored)
        engine = self.crawler.engine
        in_flight = len(engine.downloader.active) if engine else 0
        logger.info(
            "Progress: %(stored)d pages stored (%(rate).0f/s), %(in_flight)d in flight, "
            "%(queued)d queued, %(errors)d errors",
            {
                "stored": stored,
                "rate": rate,
                "in_flight": in_flight,
                "queued": queued,
                "errors": errors,
            },
        )

    def spider_closed(self, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        stats = self.crawler.stats
        assert stats is not None
        elapsed = time.monotonic() - self.started
        stored, errors, _ = self._counts()
        stats.set_value("progress/elapsed_seconds", round(elapsed, 3))
        stats.set_value("progress/pages_per_second", round(stored / max(elapsed, 1e-9), 1))
        logger.info(
            "Finished (%(reason)s): %(stored)d pages stored in %(elapsed).1fs (%(rate).0f/s), "
            "%(bodies)d bodies (%(mb).1f MB), %(errors)d errors",
            {
                "reason": reason,
                "stored": stored,
                "elapsed": elapsed,
                "rate": stored / max(elapsed, 1e-9),
                "bodies": stats.get_value("body_store/stored", 0),
                "mb": stats.get_value("body_store/bytes", 0) / 1e6,
                "errors": errors,
            },
        )
