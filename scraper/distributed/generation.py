"""The distributed crawl's generation: joined by a node's own listings at its start,
read by scraper/recrawl.py at its end."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scraper.config import ConfigError
from scraper.distributed.connection import REDIS_ERRORS
from scraper.distributed.queue import open_queue
from scraper.retry import describe

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


async def join_generation(crawler: Crawler, listings: list[str]) -> str | None:
    """The generation's crawl id, ``listings`` (a node's own ``-a url=``, urls_file,
    sitemap) made its listings as `scrapy seed` makes them; None when Redis cannot say
    (the node then crawls them under a crawl id of its own, and marks none gone)."""
    assert crawler.spider is not None
    try:
        queue = await open_queue(crawler.settings, crawler.spider.name)
        try:
            return await queue.join(listings)
        finally:
            await queue.aclose()
    except ConfigError:
        return None  # the scheduler says why and stops the crawl
    except REDIS_ERRORS as exc:
        logger.warning(
            "The crawl's generation could not be read from Redis (%(error)s): this node's "
            "listings are crawled, but none of their records is marked gone",
            {"error": describe(exc)},
        )
        return None


async def read_generation(crawler: Crawler) -> dict[str, Any] | None:
    """The listings of the current generation with its crawl id, and how many of its list
    pages failed; None when Redis cannot say (then nothing is marked gone)."""
    assert crawler.spider is not None
    try:
        queue = await open_queue(crawler.settings, crawler.spider.name)
    except ConfigError:
        return None
    except REDIS_ERRORS:
        return None
    try:
        crawl_id, listings, failed = await queue.generation()
    except REDIS_ERRORS:
        return None
    finally:
        await queue.aclose()
    if crawl_id is None:
        return None
    return {"listings": dict.fromkeys(listings, crawl_id), "list_failed": failed}
