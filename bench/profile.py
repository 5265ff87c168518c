"""Where a crawl's CPU goes: py-spy (GIL-holding samples) over bench.run_ours, summarized.

    python -m bench.profile --n 10000 --concurrency 1000 --latency-ms 100 [-s NAME=VALUE]

Starts the test site, records the crawl with ``py-spy record --gil`` (only samples of
the thread holding the GIL: the Python CPU), and prints the share of samples under
each top-level package and the functions of ours (scraper/*) with their inclusive
share, as a Markdown block for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.run import OUT, scratch_dir
from bench.servers import site_server
from scraper.testsite import Listing

PACKAGE = re.compile(
    r"\((?:.*?/site-packages/|.*?/lib/python3\.\d+/|.*?/work/main/)?"
    r"([\w.-]+)"
)


def summarize(raw: Path, top: int = 15) -> str:
    packages: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, n = stack.split(";"), int(count)
        total += n
        leaf = PACKAGE.search(frames[-1])
        packages[leaf.group(1).split("/")[0] if leaf else "?"] += n
        seen = set()
        for frame in frames:
            if "scraper/" in frame and "bench/" not in frame:
                name = frame.split(" (")[0] + " (" + frame.split("scraper/")[1].split(":")[0] + ")"
                if name not in seen:
                    seen.add(name)
                    ours[name] += n
    lines = [
        f"{total} samples holding the GIL.",
        "",
        "| leaf frame's package | share |",
        "|---|---|",
    ]
    lines += [f"| {p} | {100 * n / total:.1f}% |" for p, n in packages.most_common(top)]
    lines += ["", "| our function (inclusive: with what it calls) | share |", "|---|---|"]
    lines += [f"| `{f}` | {100 * n / total:.1f}% |" for f, n in ours.most_common(top)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--per-page", type=int, default=100, help="links per list page")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("-s", dest="settings", action="append", default=[])
    args = parser.parse_args()
    out = scratch_dir("scraper-profile")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    site = site_server(
        OUT / "profile-site.log", "--pages", str(args.n), "--latency-ms", str(args.latency_ms)
    )
    raw = OUT / "profile.txt"  # kept: the raw stacks, for a closer look
    try:
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [
            str(spy) if spy.exists() else "py-spy",
            "record",
            "--gil",
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            sys.executable,
            "-m",
            "bench.run_ours",
            "--url",
            site.url + Listing(args.n, args.per_page).query(1),
            "--concurrency",
            str(args.concurrency),
            "--out",
            str(out),
        ]
        for setting in args.settings:
            cmd += ["-s", setting]
        subprocess.run(cmd, check=True, capture_output=True)
    finally:
        site.stop()
        shutil.rmtree(out, ignore_errors=True)
    print(summarize(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
