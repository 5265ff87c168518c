"""scrapy status SPIDER [--watch SECONDS]: the state of a distributed crawl, from Redis."""

from __future__ import annotations

import argparse
import asyncio
import time

from redis.asyncio import Redis
from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from scraper.commands import redis_url
from scraper.distributed.queue import CrawlQueue, CrawlStatus
from scraper.stores import redact


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "<spider> [--watch SECONDS]"

    def short_desc(self) -> str:
        return "Show a distributed crawl: queue, leases, live nodes, dedup size, pages/s"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--watch", type=float, default=0, help="print again every SECONDS until interrupted"
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give the spider name, e.g. `scrapy status listing`")
        assert self.settings is not None
        url = redis_url(self.settings)
        print(f"{args[0]} on {redact(url)}")
        asyncio.run(show(url, args[0], opts.watch))


def render(status: CrawlStatus, previous: tuple[float, int] | None) -> tuple[str, int]:
    """Text of one status; also the crawl-wide stored count, for pages/s next time."""
    stored = sum(int(info.get("stored", 0)) for _, info in status.nodes.values())
    lines = [
        f"queued {status.queued}  leased {status.leased}  start_urls {status.start_urls}  "
        f"seen (dedup) {status.seen}  dead {status.dead}  stored {stored}"
    ]
    if previous is not None:
        seconds = time.monotonic() - previous[0]
        lines[0] += f"  {(stored - previous[1]) / max(seconds, 1e-9):.0f} pages/s"
    for node, (seen_ms, info) in sorted(status.nodes.items()):
        age = (status.now_ms - seen_ms) / 1000
        lines.append(
            f"  node {node}: last heartbeat {age:.1f}s ago, stored {info.get('stored')}, "
            f"leased {info.get('leased')}, buffered {info.get('buffered')}, "
            f"up {info.get('up_seconds')}s"
        )
    if not status.nodes:
        lines.append("  no live node")
    return "\n".join(lines), stored


async def show(url: str, spider: str, watch: float) -> None:
    redis = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=10)
    try:
        queue = CrawlQueue(redis, spider)
        previous = None
        while True:
            text, stored = render(await queue.status(), previous)
            print(text, flush=True)
            if not watch:
                return
            previous = (time.monotonic(), stored)
            await asyncio.sleep(watch)
    finally:
        await redis.aclose()
