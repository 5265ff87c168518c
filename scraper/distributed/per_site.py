"""How one node of a distributed crawl treats each site: the crawl's site mode, and the
delay between requests to a site, which every node shares.

- **The mode** (scraper/sites.py): one site, or many with CONCURRENT_REQUESTS_PER_SITE
  each. A node knows its own listings (``-a url=``, ``-a urls_file=``) at the start; the
  crawl's may come later (`scrapy seed` after the nodes started), so the mode is decided
  again when the node learns of listings on new sites: its downloader follows, and each
  LEASE takes at most twice the per-site limit of one site (the next requests at hand, the
  rest in Redis for other nodes).
- **The pace**: DOWNLOAD_DELAY (and a site's DOWNLOAD_SLOTS delay) is one interval for the
  whole crawl, kept in Redis: LEASE gives each request of a paced site its start time
  (scraper/distributed/lua/lease.lua). The node's own downloader slots then keep no delay
  of their own (scraper/downloader.py): their randomized delay made some requests late,
  and the next ones bunched up behind them at the site.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from scraper.distributed.queue import Pace
from scraper.downloader import Downloader
from scraper.sites import SiteMode, apply_to_downloader, site_of

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class PerSite:
    """One node's site mode and pace, from the listings it knows of."""

    def __init__(self, crawler: Crawler, own: list[str]) -> None:
        self.crawler = crawler
        self.mode = SiteMode.decide(own, crawler.settings)
        self.listings = set(own)

    def pace(self, listings: list[str]) -> Pace:
        """The node's first Pace, with the crawl's ``listings`` known at its start."""
        settings = self.crawler.settings
        delay = settings.getfloat("DOWNLOAD_DELAY")
        intervals = {
            site: int(float(slot["delay"]) * 1000)
            for site, slot in settings.getdict("DOWNLOAD_SLOTS").items()
            if "delay" in slot
        }
        if delay or intervals:
            self._share_pace(delay)
        return self.learn(Pace(interval_ms=int(delay * 1000), intervals=intervals), listings)

    def learn(self, pace: Pace, urls: list[str]) -> Pace:
        """``pace`` with the per-site limit of the crawl's mode, decided again if ``urls``
        name new sites (the downloader's slots follow a change, and the log says it)."""
        known = set(self.mode.sites)
        new = [url for url in urls if site_of(url) not in known]
        if new:
            self.listings.update(new)
            mode = SiteMode.decide(sorted(self.listings), self.crawler.settings)
            if mode != self.mode:
                self.mode = mode
                apply_to_downloader(mode, self.crawler)
                logger.info("%(line)s (the crawl's listings in Redis)", {"line": mode.start_line})
        mode = self.mode
        per_site = 2 * mode.per_site if mode.many or mode.user_set else Pace.per_site
        return replace(pace, per_site=per_site)

    def _share_pace(self, delay: float) -> None:
        downloader = self.crawler.engine.downloader
        if self.crawler.settings.getbool("AUTOTHROTTLE_ENABLED") or not isinstance(
            downloader, Downloader
        ):
            logger.warning(
                "DOWNLOAD_DELAY is paced across nodes in Redis, and each node's downloader "
                "keeps its own delay too (AutoThrottle, or another DOWNLOADER): requests "
                "may come slower than the delay says"
            )
            return
        downloader.shared_pace()
        logger.info(
            "Distributed crawl: DOWNLOAD_DELAY %(delay)s s per site (DOWNLOAD_SLOTS: their own) "
            "is kept by the whole crawl, every node's requests paced from Redis",
            {"delay": delay},
        )
