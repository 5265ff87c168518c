"""Progress: a line every PROGRESS_INTERVAL seconds, and a summary at close; on a
terminal, a live bar as well (PROGRESS_BAR, scraper/progress_bar.py).

Replaces Scrapy's LogStats, whose "pages/min" hides what a fast crawl needs to
see: pages stored per second, requests in flight, errors. The line is logged on a
terminal too (above the bar): the log keeps the crawl's history, the bar its present.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured
from twisted.internet import task

from scraper.figures import read_figures

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

    from scraper.progress_bar import LiveBar

logger = logging.getLogger(__name__)


class Progress:
    """Logs crawl progress and a closing summary; keeps ``progress/*`` stats."""

    def __init__(self, crawler: Crawler, interval: float, bar: LiveBar | None) -> None:
        self.crawler = crawler
        self.interval = interval
        self.bar = bar
        self.started = time.monotonic()
        self.last = (self.started, 0)
        self.loop: task.LoopingCall | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        interval = crawler.settings.getfloat("PROGRESS_INTERVAL")
        on_terminal = (
            crawler.settings.getbool("PROGRESS_BAR")
            and sys.stderr is not None
            and sys.stderr.isatty()
        )
        if interval <= 0 and not on_terminal:
            raise NotConfigured  # switched off on purpose: no warning
        bar = None
        if on_terminal:
            from scraper.progress_bar import LiveBar  # tqdm: loaded only for a terminal

            bar = LiveBar.from_crawler(crawler)
        ext = cls(crawler, interval, bar)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self) -> None:
        self.started = time.monotonic()
        self.last = (self.started, 0)
        if self.interval > 0:
            self.loop = task.LoopingCall(self.log)
            self.loop.start(self.interval, now=False)
        if self.bar is not None:
            self.bar.start()

    def log(self) -> None:
        """One progress line: rate since the last line, in flight, totals."""
        now = time.monotonic()
        figures = read_figures(self.crawler)
        stored = figures.stored
        rate = (stored - self.last[1]) / max(now - self.last[0], 1e-9)
        self.last = (now, stored)
        logger.info(
            "Progress: %(stored)d pages stored (%(rate).0f/s), %(in_flight)d in flight, "
            "%(queued)d queued, %(errors)d errors",
            {
                "stored": stored,
                "rate": rate,
                "in_flight": figures.in_flight,
                "queued": figures.queued,
                "errors": figures.errors,
            },
        )

    def spider_closed(self, reason: str) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.bar is not None:
            self.bar.close()  # before the summary, which then follows the bar's last line
        stats = self.crawler.stats
        assert stats is not None
        elapsed = time.monotonic() - self.started
        figures = read_figures(self.crawler)
        stored, errors = figures.stored, figures.errors
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
