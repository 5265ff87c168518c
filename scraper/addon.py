"""The project's add-on (Scrapy's ADDONS, in scraper/settings.py): the one place that
wires components from the settings a crawl is given, for every spider of the project.

- **One site**: a listing crawl is one site, so the per-domain concurrency follows
  CONCURRENT_REQUESTS unless it was set at the same or a higher priority (both on the
  command line, say).
- **Distributed mode**, when REDIS_URL is set: the shared queue in Redis
  (DistributedScheduler) and LeaseTracker, the spider middleware that says when a
  leased request is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scraper.distributed.scheduler import DistributedScheduler
from scraper.distributed.tracking import LeaseTracker

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

#: SPIDER_MIDDLEWARES order of LeaseTracker: closest to the engine, so that it sees what
#: every other middleware let through.
LEASE_TRACKER_ORDER = 1


class ListingCrawl:
    """Scrapy add-on: the settings that follow from other settings."""

    def update_settings(self, settings: BaseSettings) -> None:
        total = settings.getint("CONCURRENT_REQUESTS")
        total_priority = settings.getpriority("CONCURRENT_REQUESTS") or 0
        if (settings.getpriority("CONCURRENT_REQUESTS_PER_DOMAIN") or 0) < total_priority:
            settings.set("CONCURRENT_REQUESTS_PER_DOMAIN", total, priority=total_priority)
        if settings.get("REDIS_URL"):
            # At the spider's priority, above the project's: a SCHEDULER left in settings.py
            # (scrapy-redis's, say) must not silently replace the queue REDIS_URL asks for.
            settings.set("SCHEDULER", DistributedScheduler, priority="spider")
            settings.set_in_component_priority_dict(
                "SPIDER_MIDDLEWARES", LeaseTracker, LEASE_TRACKER_ORDER
            )
