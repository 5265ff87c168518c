"""scrapy seed SPIDER URL [URL ...] [--recrawl | --reset]: start a distributed crawl from
list pages, or crawl them again."""

from __future__ import annotations

import argparse
import asyncio
from typing import TYPE_CHECKING

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from scraper.commands import redis_target
from scraper.distributed.codec import BadEntry, start_url
from scraper.distributed.queue import open_queue

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from scraper.distributed.connection import RedisTarget


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "<spider> <url> [url ...] [--recrawl | --reset]"

    def short_desc(self) -> str:
        return "Add list page URLs to a distributed crawl (<spider>:start_urls in Redis)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        what = parser.add_mutually_exclusive_group()
        what.add_argument(
            "--recrawl",
            action="store_true",
            help="crawl the listings again as a new generation: list pages and children "
            "fetched again (unchanged ones cheaply), children no longer linked marked gone; "
            "refused while the crawl is still running",
        )
        what.add_argument(
            "--reset",
            action="store_true",
            help="forget the crawl first: queue, dedup set, leases, generation",
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
        target = redis_target(self.settings)
        added, crawl_id, seen = asyncio.run(
            seed(self.settings, target, spider, urls, opts.reset, opts.recrawl)
        )
        if crawl_id is None:
            self.exitcode = 1
            print(
                f"{spider} is still crawling on {target} (requests queued or leased): "
                "--recrawl starts a new generation once it has finished; nothing added"
            )
            return
        when = " (crawl state reset first)" if opts.reset else ""
        when = " (a new generation)" if opts.recrawl else when
        print(f"{spider}:start_urls += {added} URL(s) on {target}, crawl {crawl_id}{when}")
        if seen and not opts.recrawl:
            print(
                f"The crawl has seen {seen} requests already: those are not fetched again "
                "in this generation. To crawl the listings again, seed with --recrawl."
            )


async def seed(
    settings: BaseSettings,
    target: RedisTarget,
    spider: str,
    urls: list[str],
    reset: bool,
    recrawl: bool = False,
) -> tuple[int, str | None, int]:
    """Seed ``urls``: how many, the generation's crawl id (None: --recrawl was refused),
    and the requests the generation had seen before."""
    queue = await open_queue(settings, spider, target=target)
    try:
        if reset:
            await queue.reset()
        if recrawl and await queue.recrawl() is None:
            return 0, None, 0
        seen = (await queue.status(nodes=False)).seen
        await queue.seed(urls)
        return len(urls), await queue.crawl_id(), seen
    finally:
        await queue.aclose()
