"""Scrapy commands of the project: `scrapy seed` and `scrapy status` for distributed crawls,
`scrapy replay` for what the stores refused, and `scrapy crawl` with an exit code that says
when the crawl could not start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings


def redis_url(settings: BaseSettings) -> str:
    """REDIS_URL from -s or SCRAPER_REDIS_URL, or a usage error saying how to give it."""
    url = settings.get("REDIS_URL")
    if not url:
        raise UsageError(
            "REDIS_URL is not set: pass -s REDIS_URL=redis://host:6379/0 or set SCRAPER_REDIS_URL"
        )
    return str(url)
