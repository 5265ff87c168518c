"""scrapy seed SPIDER URL [URL ...] [--reset]: start a distributed crawl from list pages."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from redis.asyncio import Redis
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from scraper.commands import redis_url
from scraper.distributed.codec import BadEntry, start_url
from scraper.distributed.queue import CrawlQueue
from scraper.stores import redact

if TYPE_CHECKING:
    pass


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "<spider> <url> [url ...] [--reset]"

    def short_desc(self) -> str:
        return "Add list page URLs to a distributed crawl (<spider>:start_urls in Redis)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--reset",
            action="store_true",
            help="forget the crawl first: queue, dedup set, leases (a re-crawl)",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) < 2:
            raise UsageError("give a spider name and at least one URL")
        spider, urls = args[0], args[1:]
        for url in urls:
            try:
                start_url(url)
            except BadEntry as exc:
                raise UsageError(str(exc)) from None
        assert self.settings is not None
        url = redis_url(self.settings)
        added = asyncio.run(seed(url, spider, urls, opts.reset))
        print(
            f"{spider}:start_urls += {added} URL(s) on {redact(url)}"
            + (" (crawl state reset first)" if opts.reset else "")
        )


async def seed(url: str, spider: str, urls: list[str], reset: bool) -> int:
    redis = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        queue = CrawlQueue(redis, spider)
        if reset:
            await queue.reset()
        await queue.seed(urls)
        return len(urls)
    finally:
        await redis.aclose()
