"""Scrapy commands of the project: `scrapy seed` and `scrapy status` for distributed crawls,
`scrapy replay` for what the stores refused, and `scrapy crawl` with an exit code that says
when the crawl could not start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from scraper.distributed.connection import RedisTarget


def redis_target(settings: BaseSettings) -> RedisTarget:
    """The Redis of REDIS_URL (from -s or SCRAPER_REDIS_URL) or REDIS_CLUSTER_NODES, or a
    usage error saying how to give it."""
    from scraper.config import ConfigError
    from scraper.distributed.connection import redis_target as target_of

    try:
        target = target_of(settings)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if target is None:
        raise UsageError(
            "REDIS_URL is not set: pass -s REDIS_URL=redis://host:6379/0 (a cluster: "
            "redis+cluster://host:port,host:port) or set SCRAPER_REDIS_URL"
        )
    return target
