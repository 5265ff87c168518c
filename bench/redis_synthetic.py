"""Redis alone under the distributed scripts' load: a node's calls, no crawler, no site.

    python -m bench.redis_synthetic --pages 300000 --procs 2 --section redis-synthetic

Driver processes run the real scripts (ENQUEUE 500, LEASE 100, ACK 100 per loop) as fast
as they can on a fresh redis-server; the INFO deltas (bench/redis_probe.py) say what Redis
alone carries. The same as ``python -m bench.distributed --synthetic PAGES``, the command
bench/RESULTS.md records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.redis_probe import deltas, snapshot
from bench.report import write_section
from bench.run import OUT, measure
from bench.servers import ROOT, redis_server


def _sample_entry(i: int) -> tuple[str, int, str]:
    """(fingerprint, priority, JSON) of child i, as a crawl enqueues it (~360 bytes)."""
    from scrapy import Request
    from scrapy.utils.request import RequestFingerprinter

    from scraper.distributed.codec import encode
    from scraper.spiders.listing import ListingSpider

    spider = ListingSpider(url="http://127.0.0.1:40000/list")
    fingerprint = (
        RequestFingerprinter().fingerprint(Request(f"http://127.0.0.1:40000/page/{i}")).hex()
    )
    request = Request(
        f"http://127.0.0.1:40000/page/{i}",
        callback=spider.parse_child,
        errback=spider.child_failed,
        cb_kwargs={
            "listing_url": "http://127.0.0.1:40000/list?n=10000&per_page=1000&page=1",
            "fingerprint": fingerprint,
        },
    )
    return fingerprint, 0, encode(request, spider)


def drive(
    url: str, pages: int, worker: int, tasks: int = 4, batch: int = 500, prefetch: int = 100
) -> None:
    """One process of the synthetic load: the node's calls (ENQUEUE of 500, LEASE of 100,
    ACK of 100) on the real scripts, without crawling; ``tasks`` loops share the work."""
    import asyncio
    import hashlib

    from redis.asyncio import Redis

    from scraper.distributed.queue import CrawlQueue

    _, _, payload = _sample_entry(0)

    async def loop(q: CrawlQueue, node: str, start: int, n: int) -> None:
        for first in range(start, start + n, batch):
            count = min(batch, start + n - first)
            await q.enqueue(
                [
                    (hashlib.sha1(f"{worker}/{i}".encode()).hexdigest(), 0, payload, "site.test")
                    for i in range(first, first + count)
                ]
            )
            while True:
                leased = await q.lease(0, node, prefetch, 120_000)
                if not leased:
                    break
                await q.ack([entry.token for entry in leased])

    async def main() -> None:
        clients = [Redis.from_url(url) for _ in range(tasks)]
        share = pages // tasks
        await asyncio.gather(
            *(
                loop(CrawlQueue(c, "listing"), f"w{worker}.{t}", t * share, share)
                for t, c in enumerate(clients)
            )
        )
        for c in clients:
            await c.aclose()

    asyncio.run(main())


def synthetic_run(pages: int, procs: int, logs: Path) -> dict[str, Any]:
    """Redis alone under the scripts' load at the highest rate ``procs`` drivers reach."""
    server = redis_server(logs / "redis.log")
    port = server.port
    client = redis.Redis(port=port)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        before = snapshot(client)
        started = time.monotonic()
        results = measure(
            [
                [
                    sys.executable,
                    "-c",
                    "import sys; from bench.redis_synthetic import "
                    f"drive; drive({url!r}, {pages // procs}, int(sys.argv[1]))",
                    str(i),
                ]
                for i in range(procs)
            ],
            logs / "synthetic.log",
            600,
        )
        wall = time.monotonic() - started
        d = deltas(before, snapshot(client))
        d.update(
            {
                "pages": pages // procs * procs,
                "procs": procs,
                "wall_seconds": wall,
                "exit": [code for code, *_ in results],
                "driver_cpu_seconds": sum(u.ru_utime + u.ru_stime for _, u, _, _ in results),
                "seen": client.scard("listing:dupefilter"),
            }
        )
        return d
    finally:
        client.close()
        server.stop()


def report(
    pages: int, procs: int, logs: Path, rows: Path, results: Path, section: str, command: str
) -> int:
    """Drive Redis; append the row, write the section of ``results``."""
    d = synthetic_run(pages, procs, logs)
    with rows.open("a") as f:
        f.write(json.dumps({"synthetic": d}) + "\n")
    n = d["pages"]
    text = (
        f"{n} pages by {d['procs']} driver processes in {d['wall_seconds']:.1f} s: "
        f"**{n / d['wall_seconds']:,.0f} pages/s** (noisy), exit codes {d['exit']}, "
        f"{d['seen']} fingerprints in the set; Redis CPU {d['cpu_seconds']:.2f} s = "
        f"{100 * d['cpu_seconds'] / d['wall_seconds']:.0f}% of one core, "
        f"{1000 * d['cpu_seconds'] / n:.3f} ms per page; command time "
        f"{d['command_usec'] / n:.1f} usec per page; {d['round_trips'] / n:.3f} round "
        f"trips and {d['inside'] / n:.2f} commands inside per page; net in/out "
        f"{d['net_in'] / n:.0f}/{d['net_out'] / n:.0f} B per page; the drivers' CPU "
        f"{1000 * d['driver_cpu_seconds'] / n:.3f} ms per page."
    )
    print(text, flush=True)
    write_section(
        results,
        section,
        f"Measured with:\n\n    {command}\n\n"
        "Each driver process: 4 connections, each looping ENQUEUE of 500 "
        "entries (a real encoded child request, ~360 B, distinct fingerprints), "
        "then LEASE 100 / ACK 100 until the queue is empty: the calls a node "
        "makes per page, with no crawling.\n\n" + text,
    )
    return 0 if d["exit"] == [0] * d["procs"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=300_000)
    parser.add_argument("--procs", type=int, default=2, help="driver processes")
    parser.add_argument("--rows", type=Path, default=OUT / "distributed-rows.jsonl")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--section", default="redis-synthetic")
    args = parser.parse_args(argv)
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.redis_synthetic " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    return report(args.pages, args.procs, logs, args.rows, args.results, args.section, command)


if __name__ == "__main__":
    sys.exit(main())
