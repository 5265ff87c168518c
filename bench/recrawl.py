"""What a re-crawl costs next to the first crawl of the same listing (issue 16).

    python -m bench.recrawl --n 10000 --concurrency 1000 --profiles local s3 --repeats 3 \
        [--section NAME]

Each repeat is one process (``--one``) that crawls the test site's listing three times
into the same stores: ``first`` (empty stores), ``unchanged`` (the site answers 304 to
every conditional GET) and ``changed-5%`` (5% of the pages changed in between); then
once more unchanged without item pipelines (no record written: the request path alone),
and once with ``RECRAWL_MIN_AGE`` of an hour (no child asked, each only marked linked). Per crawl:
pages/s, CPU per page (this process: the crawl and its stores' clients), body bytes the
site sent, PUTs the S3 sink took, bodies stored. Profiles: ``local`` (folder + JSON
Lines), ``s3`` (bench/s3sink.py + JSON Lines, or the MongoDB of SCRAPER_BENCH_MONGO_URI;
not mongomock, which scans every document to find one). The goal: an unchanged
re-crawl costs at most 30% of the first crawl's CPU and makes no PUT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench.servers import s3_client, s3sink_server, site_server
from scraper.testsite import Listing

ROOT = Path(__file__).resolve().parent.parent
#: After the three crawls, the unchanged re-crawl again without item pipelines (records
#: not written: what the request path alone costs), and with a re-visit policy.
PHASES = ("first", "unchanged", "changed-5%", "unchanged-no-pipelines", "min-age-1h")
#: Above the overrides' "cmdline" (40).
PHASE_PRIORITY = 50
#: The settings of a phase that differ from the others'.
PHASE_SETTINGS: dict[str, dict[str, Any]] = {
    "unchanged-no-pipelines": {"ITEM_PIPELINES": {}, "CHECKS_ENABLED": False},  # stores nothing
    "min-age-1h": {"RECRAWL_MIN_AGE": 3600},
}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one(args: argparse.Namespace) -> None:
    """The PHASES' crawls in this process, one after the other; a JSON row per crawl."""
    from scrapy.crawler import AsyncCrawlerProcess, Crawler
    from scrapy.utils.project import get_project_settings

    from scraper.spiders.listing import ListingSpider

    os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "scraper.settings")
    settings = get_project_settings()
    out = Path(args.out)
    overrides: dict[str, Any] = {
        "CONCURRENT_REQUESTS": args.concurrency,
        "BODY_STORE": str(out / "bodies"),
        "META_STORE": str(out / "meta.jsonl"),
        "META_STORE_SPOOL": str(out / "spool.jsonl"),
        "BODY_STORE_SPOOL": str(out / "body-spool"),
        "LOG_LEVEL": "WARNING",
        "PROGRESS_INTERVAL": 0,
        "ALLOWED_NETWORKS": ["127.0.0.1/32"],
    }
    if args.sink:
        overrides |= {
            "BODY_STORE": f"s3://{args.bucket}/recrawl/",
            "AWS_ENDPOINT_URL": args.sink,
            "AWS_REGION_NAME": "us-east-1",
            **CREDENTIALS,
        }
        # mongomock finds a document by scanning them all: a re-crawl of 10,000 pages
        # through it measures mongomock. A real server if there is one, else JSON Lines.
        mongo = os.environ.get("SCRAPER_BENCH_MONGO_URI")
        if mongo:
            overrides["META_STORE"] = f"{mongo.rstrip('/')}/bench_{uuid.uuid4().hex[:8]}"
    settings.setdict(overrides, priority="cmdline")
    process = AsyncCrawlerProcess(settings)
    rows: list[dict[str, Any]] = []

    async def drive() -> None:
        try:
            for phase in PHASES:
                if phase == "changed-5%":
                    get_json(f"{args.site}/_change?percent=5&seed={args.seed}")
                rows.append(await crawl(phase))
        finally:
            await process.stop()
            reactor.stop()

    async def crawl(phase: str) -> dict[str, Any]:
        site = get_json(f"{args.site}/_stats?reset=1")
        puts = get_json(f"{args.sink}/_stats")["puts"] if args.sink else 0
        crawler = process.create_crawler(ListingSpider)
        if phase in PHASE_SETTINGS:
            # Scrapy merges the process's settings into a Crawler given to it, each one
            # that the Crawler has at the same or a lower priority: the phase's own are
            # set above the project's and the overrides' (a dict would be the project's).
            own = settings.copy()
            own.setdict(PHASE_SETTINGS[phase], priority=PHASE_PRIORITY)
            crawler = Crawler(ListingSpider, own)
        started_cpu, started = cpu(), time.monotonic()
        await process.crawl(crawler, url=args.url)
        wall, used = time.monotonic() - started, cpu() - started_cpu
        site = get_json(f"{args.site}/_stats")
        stats = crawler.stats.get_stats() if crawler.stats else {}
        return {
            "phase": phase,
            "finish_reason": stats.get("finish_reason"),
            "records": stats.get("meta_store/written", 0),
            "stored": stats.get("body_store/stored", 0),
            "unchanged": stats.get("listing/children_unchanged", 0),
            "recent": stats.get("listing/children_recent", 0),
            "wall_seconds": wall,
            "cpu_seconds": used,
            "body_bytes": site["child_bytes"],
            "not_modified": site["not_modified"],
            "puts": (get_json(f"{args.sink}/_stats")["puts"] - puts) if args.sink else None,
        }

    from twisted.internet import reactor

    reactor.callWhenRunning(lambda: asyncio.ensure_future(drive()))
    process.start(stop_after_crawl=False)
    print(json.dumps(rows))


def run_profile(
    profile: str, url: str, site: str, sink: str, n: int, c: int, repeat: int
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="recrawl-") as out:
        cmd = [sys.executable, "-m", "bench.recrawl", "--one", "--url", url, "--site", site]
        cmd += ["--concurrency", str(c), "--out", out, "--seed", str(repeat + 1)]
        get_json(f"{site}/_change?reset=1")
        if profile == "s3":
            bucket = f"recrawl-{uuid.uuid4().hex[:10]}"
            s3_client(sink, CREDENTIALS).create_bucket(Bucket=bucket)
            cmd += ["--sink", sink, "--bucket", bucket]
        result = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
        )
        get_json(f"{site}/_change?reset=1")
    if result.returncode != 0:
        raise SystemExit(f"{profile} repeat {repeat} failed:\n{result.stderr[-3000:]}")
    rows: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    for row in rows:
        row |= {"profile": profile, "repeat": repeat, "n": n, "c": c}
        row["pages_per_second"] = n / row["wall_seconds"]
        row["cpu_ms_per_page"] = 1000 * row["cpu_seconds"] / n
    return rows


def table(rows: list[dict[str, Any]], command: str) -> str:
    """Medians per profile and crawl, with the CPU ratio to the first crawl."""
    lines = [
        f"`{command}`",
        "",
        "| profile | crawl | pages/s | CPU ms/page | CPU vs first | body MB downloaded "
        "| 304s | PUTs | bodies stored | records |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for profile in dict.fromkeys(r["profile"] for r in rows):
        mine = [r for r in rows if r["profile"] == profile]
        first_cpu = statistics.median(r["cpu_ms_per_page"] for r in mine if r["phase"] == "first")
        for phase in PHASES:
            these = [r for r in mine if r["phase"] == phase]

            def med(key: str, these: list[dict[str, Any]] = these) -> float:
                return statistics.median(r[key] or 0 for r in these)

            lines.append(
                f"| {profile} | {phase} | {med('pages_per_second'):.0f} "
                f"| {med('cpu_ms_per_page'):.2f} | {med('cpu_ms_per_page') / first_cpu:.2f}x "
                f"| {med('body_bytes') / 1e6:.1f} | {med('not_modified'):.0f} "
                f"| {med('puts'):.0f} | {med('stored'):.0f} | {med('records'):.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--per-page", type=int, default=1000)
    parser.add_argument("--profiles", nargs="+", default=["local", "s3"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--child-padding-kb", type=int, default=0, help="the test site's pages this much bigger"
    )
    parser.add_argument("--section", help="append the table to bench/RESULTS.md under this")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--url", "--site", "--sink", "--bucket", "--out"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        one(args)
        return
    logs = Path(tempfile.mkdtemp(prefix="recrawl-logs-"))
    site = site_server(logs / "site.log", "--child-padding-kb", str(args.child_padding_kb))
    sink = s3sink_server(logs / "sink.log")
    rows: list[dict[str, Any]] = []
    try:
        url = site.url + Listing(args.n, args.per_page).query(1)
        for repeat in range(args.repeats):
            for profile in args.profiles:  # side by side in each repeat
                rows += run_profile(
                    profile, url, site.url, sink.url, args.n, args.concurrency, repeat
                )
                print(json.dumps(rows[-len(PHASES) :]), flush=True)
    finally:
        site.stop()
        sink.stop()
    command = "python -m bench.recrawl " + shlex.join(sys.argv[1:])
    text = table(rows, command)
    print(text)
    if args.section:
        with (ROOT / "bench" / "RESULTS.md").open("a", encoding="utf-8") as f:
            f.write(f"\n## {args.section}\n\n{text}\n")


if __name__ == "__main__":
    main()
