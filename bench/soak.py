"""Soak: one long crawl at high concurrency, its memory sampled from start to end.

    python -m bench.soak --n 100000 --concurrency 1000 [--latency-ms 100] [--bound 0.15]
        [--redis --section soak-distributed]

Runs ours (bench/run_ours.py, the embedded local stores on tmpfs) over the test site,
samples the RSS of the crawl's process tree and the pages stored every second, and
checks that once steady (after ``--warmup`` of the pages) the RSS grows by no more
than ``--bound`` (a fraction of the steady-state RSS) up to the end. The stores are
checked too (N records, 50 bodies byte-equal). Writes the "soak" block of
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import write_section
from bench.run import OUT, tree_rss_mb
from bench.servers import ROOT, redis_server, site_server
from scraper.testsite import Listing, render_child


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def crawl(
    url: str,
    c: int,
    out: Path,
    timeout: float,
    settings: list[str],
) -> tuple[int, list[tuple[float, int, float]]]:
    """Run the crawl; return its exit code and samples (seconds, pages stored, RSS MB)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.run_ours",
        "--url",
        url,
        "--concurrency",
        str(c),
        "--out",
        str(out),
        *(x for setting in settings for x in ("-s", setting)),
    ]
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "scraper.settings"}
    samples = []
    started = time.monotonic()
    with (out / "crawl.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        while proc.poll() is None:
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"the soak crawl took over {timeout} s")
            samples.append(
                (time.monotonic() - started, count_lines(out / "meta.jsonl"), tree_rss_mb(proc.pid))
            )
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if samples:  # the pages stored after the last sample, at the last RSS seen
        samples.append(
            (time.monotonic() - started, count_lines(out / "meta.jsonl"), samples[-1][2])
        )
    return proc.returncode, samples


def verify(out: Path, n: int, base: str) -> str:
    """N records, unique fingerprints, every child once, 50 bodies byte-equal."""
    with (out / "meta.jsonl").open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    urls = {d["url"] for d in docs}
    if len(docs) != n or len({d["fingerprint"] for d in docs}) != n:
        return f"FAILED: {len(docs)} records for {n} pages"
    if urls != {f"{base}/page/{i}" for i in range(n)}:
        return "FAILED: records are not the N children"
    for doc in random.Random(7).sample(docs, 50):
        body = (out / "bodies" / doc["body_key"]).read_bytes()
        if body != render_child(doc["url"].rsplit("/", 1)[1]):
            return f"FAILED: body of {doc['url']} differs"
    return f"{n} records, every child once, 50 bodies byte-equal"


def report(
    args: argparse.Namespace, samples: list[tuple[float, int, float]], verdict: str, command: str
) -> tuple[str, bool]:
    n = args.n
    rows = ["| pages stored | % of N | seconds | RSS MB |", "|---|---|---|---|"]
    for pct in range(10, 101, 10):
        at = next((s for s in samples if s[1] >= n * pct / 100), samples[-1])
        rows.append(f"| {at[1]} | {pct}% | {at[0]:.0f} | {at[2]:.0f} |")
    steady = [s for s in samples if s[1] >= n * args.warmup]
    base = steady[0][2] if steady else float("nan")
    peak = max((s[2] for s in steady), default=float("nan"))
    growth = (peak - base) / base if steady else float("nan")
    ok = bool(steady) and growth <= args.bound and not verdict.startswith("FAILED")
    rate = n / samples[-1][0] if samples else float("nan")
    mode = "one distributed node (REDIS_URL)" if args.redis else "one node, in-memory scheduler"
    text = (
        f"Measured with:\n\n    {command}\n\n"
        f"Test site latency {args.latency_ms} ms, {args.per_page} links per list page, "
        f"CONCURRENT_REQUESTS={args.concurrency}; {mode}; local stores on tmpfs; RSS of the "
        f"crawl's process tree sampled every second.\n\n" + "\n".join(rows) + "\n\n"
        f"Steady state from {args.warmup:.0%} of the pages: RSS {base:.0f} MB, highest "
        f"{peak:.0f} MB after it, growth **{growth:+.1%}** (bound: {args.bound:.0%}) — "
        f"{'within the bound' if ok else 'OVER THE BOUND'}. Whole run {rate:.0f} pages/s "
        f"including start-up; stores: {verdict}."
    )
    return text, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--per-page", type=int, default=1000)
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.2,
        help="fraction of the pages after which the RSS must be steady",
    )
    parser.add_argument(
        "--bound",
        type=float,
        default=0.15,
        help="allowed RSS growth after the warm-up, as a fraction",
    )
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--section", default="soak", help="the marked block of --results")
    parser.add_argument(
        "--redis",
        action="store_true",
        help="one distributed node on a fresh redis-server (queue in Redis)",
    )
    args = parser.parse_args(argv)
    command = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])

    shm = Path("/dev/shm")
    OUT.mkdir(parents=True, exist_ok=True)
    # A folder of this run's own: a soak beside another (or its smoke test) must not
    # write into, or delete, the other's stores.
    out = Path(tempfile.mkdtemp(prefix="scraper-soak-", dir=shm if shm.is_dir() else OUT))
    (OUT / "logs").mkdir(parents=True, exist_ok=True)
    site = site_server(
        OUT / "logs" / "soak-site.log",
        "--pages",
        str(args.n),
        "--latency-ms",
        str(args.latency_ms),
    )
    base = site.url
    redis = None
    settings = []
    if args.redis:
        redis = redis_server(OUT / "logs" / "soak-redis.log")
        settings.append(f"REDIS_URL=redis://127.0.0.1:{redis.port}/0")
    try:
        code, samples = crawl(
            base + Listing(args.n, args.per_page).query(1),
            args.concurrency,
            out,
            args.timeout,
            settings,
        )
        verdict = verify(out, args.n, base) if code == 0 else f"FAILED: exit code {code}"
    finally:
        site.stop()
        if redis is not None:
            redis.stop()
    text, ok = report(args, samples, verdict, command)
    (OUT / f"soak-samples-{args.n}.json").write_text(json.dumps(samples))
    shutil.rmtree(out, ignore_errors=True)
    write_section(args.results, args.section, text)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
