"""The main job, end to end on this machine: start the test site, crawl it, check the stores.

    python -m scraper.demo [--pages 2000] [--concurrency 1000] [--latency-ms 100]

Runs ``scrapy crawl listing`` (as a user would) against the bundled test site with
the embedded default stores (``data/meta.jsonl``, ``data/bodies/``), then reads
the stores back and prints what they hold: one meta line per child, one body file
per 2xx child, each byte-equal to what the site served. Exits 1 if anything is off.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from scrapy.utils.project import get_project_settings

from scraper.testsite import Listing, free_port, render_child, wait_for_port


@dataclass
class Check:
    """What the stores hold for one listing."""

    children: int = 0
    meta_lines: int = 0
    fingerprints: set[str] = field(default_factory=set)
    ok_children: int = 0
    bodies_found: int = 0
    bodies_equal: int = 0
    unchanged: int = 0  # found as the last run stored them (a re-run: 304s)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def check_stores(meta_path: Path, body_root: Path, site: str, listing: Listing) -> Check:
    """Compare the stores with what the site serves for ``listing``."""
    check = Check(children=listing.n)
    expected = {f"{site}/page/{i}" for i in range(listing.n)}
    seen_urls: set[str] = set()
    with meta_path.open(encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["url"] not in expected:
                continue
            check.meta_lines += 1
            seen_urls.add(doc["url"])
            check.fingerprints.add(doc["fingerprint"])
            # A re-run re-crawls the same URLs: a 304 keeps the body stored by the last run.
            not_modified = doc["status"] == 304 and doc.get("unchanged")
            if not not_modified and (doc["status"] is None or not 200 <= doc["status"] < 300):
                check.problems.append(f"{doc['url']}: {doc['status']} {doc['error']}")
                continue
            check.unchanged += bool(doc.get("unchanged"))
            check.ok_children += 1
            path = body_root / doc["body_key"] if doc["body_key"] else None
            if path is None or not path.is_file():
                check.problems.append(f"{doc['url']}: no body file")
                continue
            check.bodies_found += 1
            if path.read_bytes() == render_child(doc["url"].rsplit("/", 1)[1]):
                check.bodies_equal += 1
            else:
                check.problems.append(f"{doc['url']}: body differs from what the site served")
    if missing := expected - seen_urls:
        check.problems.append(f"{len(missing)} children have no meta line, e.g. {min(missing)}")
    if check.meta_lines != len(check.fingerprints):
        check.problems.append(f"{check.meta_lines - len(check.fingerprints)} duplicate meta lines")
    return check


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=2000, help="child pages (default 2000)")
    parser.add_argument("--per-page", type=int, default=100, help="links per list page")
    parser.add_argument("--concurrency", type=int, default=1000, help="CONCURRENT_REQUESTS")
    parser.add_argument("--latency-ms", type=float, default=100, help="site latency per request")
    parser.add_argument(
        "--port",
        type=int,
        default=8347,
        help="test site port; fixed so a re-run re-crawls the same URLs (0: any)",
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("SCRAPY_SETTINGS_MODULE", "scraper.settings")
    settings = get_project_settings()
    meta_path, body_root = Path(settings["META_STORE"]), Path(settings["BODY_STORE"])
    if "://" in str(settings["META_STORE"]) + str(settings["BODY_STORE"]):
        print(
            "The demo checks the embedded local stores; unset SCRAPER_BODY_STORE and "
            "SCRAPER_META_STORE to run it.",
            file=sys.stderr,
        )
        return 2

    port = args.port or free_port()
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            print(
                f"Port {port} is taken by another program; pass --port 0 for a free one.",
                file=sys.stderr,
            )
            return 2
    site = f"http://127.0.0.1:{port}"
    listing = Listing(args.pages, args.per_page)
    url = site + listing.query(1)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scraper.testsite",
            "--port",
            str(port),
            "--pages",
            str(args.pages),
            "--latency-ms",
            str(args.latency_ms),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        try:
            wait_for_port(port, server, timeout=15)
        except RuntimeError as exc:
            print(f"The test site did not start: {exc}", file=sys.stderr)
            return 1
        print(f"Crawling {url} at CONCURRENT_REQUESTS={args.concurrency} ...", flush=True)
        started = time.monotonic()
        crawl = subprocess.run(
            [
                sys.executable,
                "-m",
                "scrapy",
                "crawl",
                "listing",
                "-a",
                f"url={url}",
                "-s",
                f"CONCURRENT_REQUESTS={args.concurrency}",
                "-s",
                "LOG_LEVEL=INFO",
                "-s",
                "PROGRESS_INTERVAL=2",
                # The SSRF guard refuses loopback addresses unless allowed: the site is local.
                "-s",
                "ALLOWED_NETWORKS=127.0.0.1/32",
            ],
            check=False,
        )
        elapsed = time.monotonic() - started
    finally:
        server.terminate()
        server.wait(10)
    if crawl.returncode:
        print(f"scrapy crawl exited with code {crawl.returncode}", file=sys.stderr)
        return 1

    check = check_stores(meta_path, body_root, site, listing)
    again = f", {check.unchanged} unchanged since the last run" if check.unchanged else ""
    print(f"""
Stored from {url}
  child pages   {check.children} on {listing.last_page} list pages
  meta records  {check.meta_lines} lines in {meta_path}, {len(check.fingerprints)} fingerprints
  bodies        {check.bodies_found} files under {body_root}/, {check.bodies_equal} byte-equal \
to what the site served{again}
  time          {elapsed:.1f} s for the whole `scrapy crawl` ({check.meta_lines / elapsed:.0f} \
pages/s, start-up included)""")
    if not check.passed:
        print(f"PROBLEMS ({len(check.problems)}):", *check.problems[:20], sep="\n  ")
        return 1
    print("OK: every child page stored once, every body byte-equal.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
