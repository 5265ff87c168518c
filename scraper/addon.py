"""The project's add-on (Scrapy's ADDONS, in scraper/settings.py): the one place that
wires components from the settings a crawl is given, for every spider of the project.

- **Sites** (scraper/sites.py): one site (every list page on one host) runs
  CONCURRENT_REQUESTS at once on it; several sites get CONCURRENT_REQUESTS_PER_SITE each
  and the fair scheduler queue; a CONCURRENT_REQUESTS_PER_DOMAIN of the user's wins.
  Decided here because Scrapy (2.19, ``Crawler.crawl``) builds the spider, with its
  arguments, before it loads the add-ons and freezes the settings: the list pages are
  known while the downloader's and scheduler's settings can still change.
- **Distributed mode**, when REDIS_URL is set: the shared queue in Redis
  (DistributedScheduler) and LeaseTracker, the spider middleware that says when a
  leased request is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scraper.distributed.connection import distributed
from scraper.distributed.scheduler import DistributedScheduler
from scraper.distributed.tracking import LeaseTracker
from scraper.sites import ListPageSource, SiteMode

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: SPIDER_MIDDLEWARES order of LeaseTracker: closest to the engine, so that it sees what
#: every other middleware let through.
LEASE_TRACKER_ORDER = 1


class ListingCrawl:
    """Scrapy add-on: the settings that follow from other settings."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def update_settings(self, settings: BaseSettings) -> None:
        spider = self.crawler.spider  # built already, with its arguments
        urls: list[str] = spider.list_page_urls() if isinstance(spider, ListPageSource) else []
        SiteMode.decide(urls, settings).configure(settings)
        if distributed(settings):
            # At the spider's priority, above the project's: a SCHEDULER left in settings.py
            # (scrapy-redis's, say) must not silently replace the queue REDIS_URL asks for.
            settings.set("SCHEDULER", DistributedScheduler, priority="spider")
            settings.set_in_component_priority_dict(
                "SPIDER_MIDDLEWARES", LeaseTracker, LEASE_TRACKER_ORDER
            )
