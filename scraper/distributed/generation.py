"""The distributed crawl's generation, as scraper/recrawl.py reads it at a node's end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scraper.config import ConfigError
from scraper.distributed.connection import REDIS_ERRORS
from scraper.distributed.queue import open_queue

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


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
