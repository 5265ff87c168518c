"""Contender "bare": the limit. aiohttp fetches every child and discards it; nothing stored.

    python -m bench.bare --url URL --concurrency C --out DIR

Follows the list pages' rel="next" links like the spider, fetches the children
with at most C requests in flight, reads each body whole and drops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

CHILD = re.compile(rb'<a class="child[^"]*" href="([^"]+)"')
NEXT = re.compile(rb'<a rel="next" href="([^"]+)"')


async def crawl(url: str, concurrency: int) -> dict[str, float]:
    started = time.monotonic()
    fetched = nbytes = errors = 0
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def fetch(child: str) -> None:
            nonlocal fetched, nbytes, errors
            async with limit:
                try:
                    async with session.get(child) as response:
                        nbytes += len(await response.read())
                        fetched += 1
                except aiohttp.ClientError:
                    errors += 1

        tasks = []
        next_url: str | None = url
        while next_url:
            async with session.get(next_url) as response:
                page = await response.read()
            base = next_url
            tasks += [
                asyncio.create_task(fetch(urljoin(base, m.decode().replace("&amp;", "&"))))
                for m in CHILD.findall(page)
            ]
            found = NEXT.search(page)
            next_url = (
                urljoin(base, found.group(1).decode().replace("&amp;", "&")) if found else None
            )
        await asyncio.gather(*tasks)
    return {
        "stored": fetched,
        "bytes": nbytes,
        "errors": errors,
        "wall_seconds": time.monotonic() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    report = asyncio.run(crawl(args.url, args.concurrency))
    (args.out / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
