"""scrapy status SPIDER [--json] [--watch SECONDS]: a distributed crawl at a glance, from
Redis.

The shared queue's counts, then one row per node from its heartbeat (what it stored,
how fast, its errors, the leases it holds, when it was last heard of) and the totals.
``--json`` prints the same as one JSON object (one per line with ``--watch``) for scripts
and alerting; the password in REDIS_URL is never shown.

A node is "running", "silent" (a running node not heard of for SILENT_AFTER seconds:
busy, stuck or gone; its leases expire and go to other nodes if it is gone), or "closed"
(its last heartbeat, with its final figures). Totals of stored pages and errors add up
every node listed, closed ones included, so at the end of a crawl they are the crawl's;
pages/s adds up the running nodes only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from scrapy.commands import ScrapyCommand
from scrapy.exceptions import UsageError

from scraper.commands import redis_target
from scraper.distributed.heartbeat import NodeReport
from scraper.distributed.queue import open_queue

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from scraper.distributed.connection import RedisTarget
    from scraper.distributed.counts import CrawlStatus

#: Seconds without a heartbeat after which a running node is shown "silent" (a node
#: writes one about every second).
SILENT_AFTER = 10.0
#: Per-node figures summed into the totals.
SUMMED = ("stored", "errors", "leased", "in_flight", "buffered")


class Command(ScrapyCommand):
    requires_project = True

    def syntax(self) -> str:
        return "<spider> [--json] [--watch SECONDS]"

    def short_desc(self) -> str:
        return "Show a distributed crawl: queue, leases, dedup size, and each node's figures"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--watch", type=float, default=0, help="print again every SECONDS until interrupted"
        )
        parser.add_argument(
            "--json",
            action="store_true",
            help="one JSON object: the counts, every node's figures and the totals",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if len(args) != 1:
            raise UsageError("give the spider name, e.g. `scrapy status listing`")
        assert self.settings is not None
        target = redis_target(self.settings)
        if not opts.json:
            print(f"{args[0]} on {target}")
        with contextlib.suppress(KeyboardInterrupt):  # how --watch is stopped: no traceback
            asyncio.run(show(self.settings, target, args[0], opts.watch, opts.json))


def view(spider: str, status: CrawlStatus) -> dict[str, Any]:
    """The crawl's status as plain data: what ``--json`` prints and the table shows."""
    nodes = []
    for name, (seen_ms, info) in sorted(status.nodes.items()):
        report = NodeReport.of(info)
        age = max(0.0, (status.now_ms - seen_ms) / 1000)
        state = "silent" if report.state == "running" and age > SILENT_AFTER else report.state
        nodes.append(
            {"node": name, **report.info(), "state": state, "last_heard_seconds": round(age, 1)}
        )
    totals: dict[str, Any] = {
        "nodes": len(nodes),
        **{s: sum(n["state"] == s for n in nodes) for s in ("running", "silent", "closed")},
        **{key: sum(n[key] for n in nodes) for key in SUMMED},
        "rate": round(sum(n["rate"] for n in nodes if n["state"] == "running"), 1),
    }
    return {
        "spider": spider,
        "queued": status.queued,
        "leased": status.leased,
        "start_urls": status.start_urls,
        "seen": status.seen,
        "dead": status.dead,
        "sites": status.sites,
        "sites_waiting": status.waiting,
        "waits": {site: round(seconds, 1) for site, seconds in status.waits.items()},
        "nodes": nodes,
        "totals": totals,
    }


def render(crawl: dict[str, Any]) -> str:
    """The view as text: the queue's counts, then a table of the nodes and their totals."""
    counts = (
        f"queued {crawl['queued']}  leased {crawl['leased']}  start_urls {crawl['start_urls']}  "
        f"seen (dedup) {crawl['seen']}  dead {crawl['dead']}  sites {crawl['sites']}"
    )
    if crawl["sites_waiting"]:
        shown = ", ".join(f"{site} {s:.0f} s" for site, s in crawl["waits"].items())
        more = crawl["sites_waiting"] - len(crawl["waits"])
        counts += (
            f"\nslowed: {crawl['sites_waiting']} sites wait (Retry-After or pace): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
    nodes, totals = crawl["nodes"], crawl["totals"]
    if not nodes:
        return f"{counts}\nno node has sent a heartbeat"
    header = ["node", "state", "pages/s", "stored", "errors", "leases", "in flight", "last heard"]
    rows = [
        [
            n["node"],
            n["state"],
            f"{n['rate']:.0f}",
            str(n["stored"]),
            str(n["errors"]),
            str(n["leased"]),
            str(n["in_flight"]),
            f"{n['last_heard_seconds']:.1f}s ago",
        ]
        for n in nodes
    ]
    running = f"{totals['running']} of {totals['nodes']} running"
    rows.append(
        [
            "total",
            running,
            f"{totals['rate']:.0f}",
            *(str(totals[key]) for key in ("stored", "errors", "leased", "in_flight")),
            "",
        ]
    )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join([counts, "", line(header), *map(line, rows)])


async def show(
    settings: BaseSettings, target: RedisTarget, spider: str, watch: float, as_json: bool
) -> None:
    queue = await open_queue(settings, spider, target=target)
    try:
        while True:
            crawl = view(spider, await queue.status())
            text = json.dumps(crawl, separators=(",", ":")) if as_json else render(crawl)
            print(text, flush=True)
            if not watch:
                return
            if not as_json:
                print(flush=True)
            await asyncio.sleep(watch)
    finally:
        await queue.aclose()
