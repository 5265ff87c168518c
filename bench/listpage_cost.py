"""CPU per list page and per child link: the spider's parse of one list page, offline.

    python -m bench.listpage_cost --links 100 1000 [--baseline REV]

Parses the test site's list page (``render_list``) with ``ListingSpider.parse_list`` (links
sorted, pagination detected, child requests built and fingerprinted), best of 7 rounds
of 10. With ``--baseline REV`` the same runs again with REV's code (a git worktree), in
turn, so the two are compared in the same minutes. Also: ``canonical_url`` and
``extract_title`` per child page.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(links: list[int]) -> dict[str, float]:
    from scrapy import Request
    from scrapy.http import HtmlResponse
    from scrapy.utils.reactor import install_reactor
    from scrapy.utils.test import get_crawler

    from scraper.spiders.listing import ListingSpider
    from scraper.testsite import Listing, render_child, render_list

    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    out: dict[str, float] = {}
    for n in links:
        listing = Listing(100 * n, n)
        body, url = render_list(listing, 5), "http://site.test" + listing.query(5)
        best = float("inf")
        for _ in range(7):
            crawler = get_crawler(ListingSpider, settings_dict={"LISTING_MAX_PAGES": 0})
            crawler.stats.open_spider()
            spider = crawler._create_spider(url="http://site.test/")
            started = time.process_time()
            for _ in range(10):
                list(spider.parse_list(HtmlResponse(url, body=body, request=Request(url))))
            best = min(best, (time.process_time() - started) / 10)
        out[f"list page of {n} links, ms"] = 1000 * best
        out[f"per link ({n}-link page), us"] = 1e6 * best / n
    try:
        from scraper.canonical import canonical_url
    except ImportError:  # before issue 13
        return out
    from scraper.spiders.listing import extract_title

    child = render_child(7)
    response = HtmlResponse(
        "http://site.test/page/7", body=child, headers={"Content-Type": "text/html; charset=utf-8"}
    )
    for name, fn in (
        ("canonical_url", lambda: canonical_url(response)),
        ("extract_title", lambda: extract_title(child, "utf-8")),
    ):
        started = time.process_time()
        for _ in range(20000):
            fn()
        out[f"{name} per child, us"] = 1e6 * (time.process_time() - started) / 20000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--baseline", metavar="REV")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a child run
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.links)))
        return
    runs = {"ours": ROOT}
    if args.baseline:
        from bench.run import OUT, checkout, remove_checkout

        runs[f"ours@{args.baseline}"] = checkout(args.baseline, OUT / f"baseline-{args.baseline}")
    try:
        for name, code in runs.items():
            # Each in its own process, from its own checkout: this file may not exist at REV.
            result = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys, runpy; sys.argv = sys.argv[1:]; "
                    "runpy.run_path(sys.argv[0], run_name='__main__')",
                    __file__,
                    "--json",
                    "--links",
                    *map(str, args.links),
                ],
                cwd=code,
                env={"PYTHONPATH": str(code), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                check=True,
            )
            for key, value in json.loads(result.stdout).items():
                print(f"{name:16} {key:36} {value:8.1f}")
    finally:
        if args.baseline:
            remove_checkout(OUT / f"baseline-{args.baseline}")


if __name__ == "__main__":
    main()
