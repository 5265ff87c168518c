"""Contender "ours": the listing crawl through Scrapy's CrawlerProcess, as `scrapy crawl` runs it.

    python -m bench.run_ours --url URL --concurrency C --out DIR [--no-storage]
        [--body-store URI] [--meta-store URI] [--mongomock] [-s NAME=VALUE ...]

Writes DIR/report.json with what the crawl stored and how long it took from spider
open to close. With --mongomock, MongoDB is mongomock in this process (the report
then carries the document count, since the data dies with the process).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from scrapy.crawler import AsyncCrawlerProcess
from scrapy.utils.project import get_project_settings

from bench.servers import use_mongomock
from scraper.spiders.listing import ListingSpider


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-storage", action="store_true")
    parser.add_argument("--body-store")
    parser.add_argument("--meta-store")
    parser.add_argument("--mongomock", action="store_true")
    parser.add_argument("-s", dest="settings", action="append", default=[])
    args = parser.parse_args()

    os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "scraper.settings")
    settings = get_project_settings()
    overrides: dict[str, Any] = {
        "CONCURRENT_REQUESTS": args.concurrency,
        "BODY_STORE": args.body_store or str(args.out / "bodies"),
        "META_STORE": args.meta_store or str(args.out / "meta.jsonl"),
        "META_STORE_SPOOL": str(args.out / "spool.jsonl"),
        "LOG_LEVEL": "WARNING",
        # The test site is on 127.0.0.1, which the SSRF guard refuses unless allowed.
        "ALLOWED_NETWORKS": ["127.0.0.1/32"],
    }
    if args.no_storage:
        overrides["ITEM_PIPELINES"] = {}
        overrides["CHECKS_ENABLED"] = False  # stores nothing by design: not checks_failed
    for pair in args.settings:
        name, value = pair.split("=", 1)
        overrides[name] = json.loads(value) if value[:1] in "{[" else value
    settings.setdict(overrides, priority="cmdline")
    client = use_mongomock() if args.mongomock else None

    # As `scrapy crawl` runs it with the asyncio reactor (scrapy/cmdline.py): the crawl
    # starts inside the running event loop (a download handler built on asyncio, such as
    # aiohttp's, needs one; with CrawlerProcess the engine starts before the loop runs).
    process = AsyncCrawlerProcess(settings)
    crawler = process.create_crawler(ListingSpider)
    process.crawl(crawler, url=args.url)
    process.start()

    stats = crawler.stats.get_stats()
    stored = (
        stats.get("item_scraped_count", 0)
        if args.no_storage
        else stats.get("meta_store/written", 0)
    )
    report = {
        "stored": stored,
        "started_at": stats["start_time"].timestamp(),
        "finished_at": stats["finish_time"].timestamp(),
        "redis": {k: v for k, v in stats.items() if k.startswith("distributed/")},
        "gc": {k: v for k, v in stats.items() if k.startswith("gc/")},
        "wall_seconds": stats.get("progress/elapsed_seconds") or stats["elapsed_time_seconds"],
        "errors": stats.get("listing/child_failed", 0) + stats.get("body_store/failed", 0),
        "finish_reason": stats.get("finish_reason"),
    }
    if client is not None:
        report["meta_docs"] = (
            client(settings["META_STORE"])
            .get_default_database()[settings["META_STORE_COLLECTION"]]
            .count_documents({})
        )
    (args.out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
