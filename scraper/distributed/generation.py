"""The distributed crawl's generation, as scraper/recrawl.py reads it at a node's end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from scraper.distributed.queue import CrawlQueue

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


async def read_generation(crawler: Crawler) -> dict[str, Any] | None:
    """The listings of the current generation with its crawl id, and how many of its list
    pages failed; None when Redis cannot say (then nothing is marked gone)."""
    assert crawler.spider is not None
    redis = Redis.from_url(
        crawler.settings["REDIS_URL"], socket_connect_timeout=5, socket_timeout=10
    )
    try:
        crawl_id, listings, failed = await CrawlQueue(redis, crawler.spider.name).generation()
    except RedisError:
        return None
    finally:
        await redis.aclose()
    if crawl_id is None:
        return None
    return {"listings": dict.fromkeys(listings, crawl_id), "list_failed": failed}
