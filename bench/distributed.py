"""Distributed mode, measured: what Redis costs, and what a second process buys.

    python -m bench.distributed --n 10000 --concurrency 1000 --repeats 3 --latency-ms 100

Contenders, each in turn per repeat, same test site, local stores on tmpfs, a fresh
redis-server per run (its CPU reported apart):
  in-memory       ours with Scrapy's own scheduler (no Redis): the reference
  distributed-1   ours with REDIS_URL: DistributedScheduler, one process
  distributed-2   the same, two processes sharing the crawl
  scrapy-redis-1  one process with scrapy-redis 0.9.1's stock Scheduler + RFPDupeFilter
  in-memory-2     two independent in-memory processes, N/2 pages each (no Redis): what
                  two processes can do at all on this machine, the ceiling for
                  distributed-2

pages/s = N / (last process's spider close - first process's spider open). Redis
round trips per page come from INFO commandstats: every command a client sent, with
a MULTI block or a Lua script counted once (the commands they run inside are not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.report import write_section
from bench.run import OUT, ROOT, Bench, Service, measure
from scraper.testsite import free_port

CONTENDERS = ("in-memory", "distributed-1", "distributed-2", "scrapy-redis-1", "in-memory-2")
# Commands our Lua scripts and status pipeline run inside Redis, and scrapy-redis's
# MULTI contents: not round trips of their own.
INSIDE = {"zadd", "zrem", "hset", "hget", "hdel", "incr", "sadd", "zrange", "lrange", "ltrim",
          "rpush", "zrangebyscore", "hincrby", "time", "hgetall", "zcard", "llen", "scard",
          "exec", "zremrangebyrank"}
SCRIPTED = {"evalsha", "eval", "multi"}


def round_trips(stats: dict[str, Any], contender: str) -> int:
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}
    if contender.startswith("distributed"):
        return sum(n for c, n in calls.items() if c not in INSIDE)
    # scrapy-redis sends each command on its own, except its pop (MULTI zrange
    # zremrangebyrank EXEC), and runs no scripts.
    inside_multi = calls.get("zrange", 0) + calls.get("zremrangebyrank", 0) + calls.get("exec", 0)
    return sum(calls.values()) - inside_multi


def run_one(bench: Bench, contender: str, n: int, c: int, repeat: int, logs: Path,
            timeout: float, per_page: int) -> dict[str, Any]:
    out = bench.runs / f"dist-{n}-{c}-{contender}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    server = Service(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
                      "--bind", "127.0.0.1"], port, logs / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    procs = 2 if contender.endswith("-2") else 1
    split = contender == "in-memory-2"  # two separate crawls of N/2, each its own stores
    cmds = []
    for i in range(procs):
        node = out / f"node{i}"
        node.mkdir()
        stores = node if split else out
        cmd = [sys.executable, "-m", "bench.run_ours", "--url",
               bench.listing_url(n // procs if split else n, per_page), "--concurrency", str(c),
               "--out", str(node), "--body-store", str(stores / "bodies"),
               "--meta-store", str(stores / "meta.jsonl")]
        if not contender.startswith("in-memory"):
            cmd += ["-s", f"REDIS_URL={url}"]
        if contender == "scrapy-redis-1":
            cmd += ["-s", "SCHEDULER=scrapy_redis.scheduler.Scheduler",
                    "-s", "DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter"]
        cmds.append(cmd)
    client = redis.Redis(port=port)
    client.config_resetstat()
    redis_cpu = server.cpu()
    try:
        results = measure(cmds, out / "output.log", timeout)
        commandstats = client.info("commandstats")
        redis_cpu = server.cpu() - redis_cpu
    finally:
        client.close()
        server.stop()
    reports = []
    for i in range(procs):
        path = out / f"node{i}" / "report.json"
        reports.append(json.loads(path.read_text()) if path.exists() else {})
    ok = all(code == 0 for code, *_ in results) and all(reports)
    row: dict[str, Any] = {
        "contender": contender, "n": n, "c": c, "repeat": repeat, "processes": procs,
        "exit": [code for code, *_ in results],
        "stored": sum(r.get("stored", 0) for r in reports),
        "cpu_seconds": sum(u.ru_utime + u.ru_stime for _, u, _, _ in results),
        "peak_rss_mb": max(peak for *_, peak in results),
        "redis_cpu_seconds": 0.0 if split or contender == "in-memory" else redis_cpu,
        "round_trips_per_page": 0.0 if split or contender == "in-memory"
        else round_trips(commandstats, contender) / n,
        "redis_commands_per_page": 0.0 if split or contender == "in-memory"
        else sum(v["calls"] for v in commandstats.values()) / n,
    }
    if ok:
        row["wall_seconds"] = (max(r["finished_at"] for r in reports)
                               - min(r["started_at"] for r in reports))
        row["verified"] = all(
            bench.verify("ours", "local", n // procs, out / f"node{i}", {"stored": 1}, None, None)
            for i in range(procs)) if split else bench.verify("ours", "local", n, out,
                                                               {"stored": n}, None, None)
    row["ok"] = ok and row["stored"] >= n and row.get("verified") is True
    if row["ok"]:
        row["pages_per_second"] = n / row["wall_seconds"]
        row["cpu_ms_per_page"] = 1000 * row["cpu_seconds"] / n
        shutil.rmtree(out, ignore_errors=True)
    return row


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| N | c | contender | processes | pages/s median [min-max] | vs in-memory "
             "| vs distributed-1 | CPU ms/page | peak RSS MB (per process) | Redis round trips "
             "/ page | Redis commands / page | Redis CPU ms/page | stored & verified |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    points = sorted({(r["n"], r["c"]) for r in rows})
    for n, c in points:
        group = [r for r in rows if (r["n"], r["c"]) == (n, c)]
        by_repeat: dict[int, dict[str, float]] = {}
        for r in group:
            if r["ok"]:
                by_repeat.setdefault(r["repeat"], {})[r["contender"]] = r["pages_per_second"]
        for contender in CONTENDERS:
            runs = [r for r in group if r["contender"] == contender]
            ok = [r for r in runs if r["ok"]]
            if not runs:
                continue
            rates = [r["pages_per_second"] for r in ok] or [float("nan")]

            def ratio(base: str, of: str = contender,
                      repeats: dict[int, dict[str, float]] = by_repeat) -> float:
                return _median([v[of] / v[base] for v in repeats.values()
                                if of in v and base in v])

            def med(key: str, of: list[dict[str, Any]] = ok) -> float:
                return _median([r[key] for r in of])

            failed = len(runs) - len(ok)
            lines.append(
                f"| {n} | {c} | {contender} | {runs[0]['processes']} | "
                f"{statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}] | "
                f"{ratio('in-memory'):.2f} | {ratio('distributed-1'):.2f} | "
                f"{med('cpu_ms_per_page'):.2f} | {med('peak_rss_mb'):.0f} | "
                f"{med('round_trips_per_page'):.3f} | {med('redis_commands_per_page'):.2f} | "
                f"{1000 * med('redis_cpu_seconds') / n:.3f} | "
                + (f"FAILED {failed}/{len(runs)}" if failed else
                   f"{n} in each of {len(runs)} runs, 20 bodies byte-equal") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1000])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--per-page", type=int, default=1000,
                        help="links per list page: with 100, the chain of list pages (one "
                        "per ~110 ms) caps any number of processes near 900 pages/s")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--rows", type=Path, default=OUT / "distributed-rows.jsonl")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--section", default="distributed",
                        help="the marked block of --results to write the table into")
    parser.add_argument("--runs-dir", type=Path, default=Path("/dev/shm/scraper-bench-dist")
                        if Path("/dev/shm").is_dir() else OUT / "dist-runs")
    args = parser.parse_args(argv)

    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = Service([sys.executable, "-m", "scraper.testsite", "--port", str(port), "--pages",
                    str(max(args.n)), "--latency-ms", str(args.latency_ms)], port,
                   logs / "site.log")
    command = "python -m bench.distributed " + " ".join(
        argv if argv is not None else sys.argv[1:])
    rows = []
    try:
        bench = Bench(site, f"http://127.0.0.1:{port}", None, logs, args.timeout, [],
                      args.runs_dir)
        for n in args.n:
            for c in args.concurrency:
                for repeat in range(args.repeats):
                    for contender in args.contenders:
                        row = run_one(bench, contender, n, c, repeat, logs, args.timeout,
                                      args.per_page)
                        rows.append(row)
                        with args.rows.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(f"n={n:<6} c={c:<5} #{repeat} {contender:15} " + (
                            f"{row['pages_per_second']:6.0f} pages/s "
                            f"{row['round_trips_per_page']:.3f} round trips/page"
                            if row["ok"] else f"FAILED {row}"), flush=True)
                        time.sleep(0.5)
    finally:
        site.stop()
        if args.runs_dir.name == "scraper-bench-dist":
            shutil.rmtree(args.runs_dir, ignore_errors=True)
    write_section(args.results, args.section, f"Measured with:\n\n    {command}\n\n"
                  f"Test site latency {args.latency_ms} ms, {args.per_page} links per list "
                  "page; local stores on tmpfs.\n\n"
                  + table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
