"""JOBDIR (Scrapy's own resume folder), guarded against the one case it silently loses
pages: a crawl that was killed (SIGKILL, OOM killer, power loss) leaves the requests it
had *seen* in ``requests.seen`` but not the queue of those it had yet to crawl (Scrapy
saves the queue's state at close). Started again with that JOBDIR, the crawl skips every
page it saw and ends "finished" with pages missing: measured here, 388 records of 2,000.

So while a crawl runs, its JOBDIR holds a marker, removed when it closes; a crawl that
finds the marker stops at once with one line (``JOBDIR unusable``, exit 1) instead.
A SIGTERM (or scrapyd's cancel) closes the crawl: the queue is saved and the next run
resumes it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import NotConfigured

from scraper.config import stop_crawl

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

MARKER = "scraper.running"


class JobdirGuard:
    """Extension: refuses a JOBDIR whose last crawl never closed; marks the running one."""

    def __init__(self, jobdir: str) -> None:
        self.marker = Path(jobdir) / MARKER
        self.killed = self.marker.exists()  # read before this crawl marks it
        self.marked = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        jobdir = crawler.settings.get("JOBDIR")
        if not jobdir:
            raise NotConfigured
        guard = cls(jobdir)
        crawler.signals.connect(guard.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(guard.spider_closed, signal=signals.spider_closed)
        return guard

    def spider_opened(self) -> None:
        if self.killed:
            raise stop_crawl(
                logger,
                "JOBDIR",
                f"{self.marker.parent}: the crawl that used it was killed before it could "
                "save its queue, so the pages it had seen would be skipped, never fetched. "
                "Start again with a new JOBDIR (records are upserts: nothing is stored "
                f"twice), or delete {self.marker} to resume what was saved anyway",
            )
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"{os.getpid()}\n")
        self.marked = True

    def spider_closed(self) -> None:
        if self.marked:  # this crawl closed: its queue is saved
            self.marker.unlink(missing_ok=True)
