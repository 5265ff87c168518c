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

What each page and each node costs Redis (issue 8's plan for 100 nodes):

    python -m bench.distributed --redis-stats --contenders distributed-1 distributed-2 \
        --n 10000 --concurrency 1000 100 --repeats 1 --section redis-ops
    python -m bench.redis_idle --nodes 1 4 --seconds 20 --section redis-idle

--redis-stats records, around each distributed run, the deltas of INFO commandstats
(calls and usec of every command, those run inside the Lua scripts included), INFO cpu,
the network bytes of INFO stats and used_memory, and samples the queue (ZCARD, MEMORY
USAGE) every 0.5 s; figures are per page seen (the dedup set's or Bloom counter's
size). Idle nodes (bench/redis_idle.py) and the scripts without a crawler
(bench/redis_synthetic.py) are tools of their own; --idle-nodes and --synthetic here run
them, as the command lines RESULTS.md records.
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

from bench import redis_idle, redis_synthetic
from bench.redis_probe import TOP_LEVEL, RedisProbe
from bench.report import write_section
from bench.run import OUT, Bench, measure, scratch_dir
from bench.servers import ROOT, redis_server, site_server

CONTENDERS = ("in-memory", "distributed-1", "distributed-2", "scrapy-redis-1", "in-memory-2")


def round_trips(stats: dict[str, Any], contender: str) -> int:
    calls = {name.removeprefix("cmdstat_"): v["calls"] for name, v in stats.items()}
    if contender.startswith("distributed"):
        # What a node sends (scripts, its status MULTI, connection set-up): the commands
        # run inside those (the SWEEP's per-lease HEXISTS included) are not round trips.
        return sum(n for c, n in calls.items() if c in TOP_LEVEL)
    # scrapy-redis sends each command on its own, except its pop (MULTI zrange
    # zremrangebyrank EXEC), and runs no scripts.
    inside_multi = calls.get("zrange", 0) + calls.get("zremrangebyrank", 0) + calls.get("exec", 0)
    return sum(calls.values()) - inside_multi


def run_one(
    bench: Bench,
    contender: str,
    n: int,
    c: int,
    repeat: int,
    logs: Path,
    timeout: float,
    per_page: int,
    settings: list[str] | None = None,
    redis_stats: bool = False,
) -> dict[str, Any]:
    out = bench.runs / f"dist-{n}-{c}-{contender}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    server = redis_server(logs / "redis.log")
    port = server.port
    url = f"redis://127.0.0.1:{port}/0"
    procs = 2 if contender.endswith("-2") else 1
    split = contender == "in-memory-2"  # two separate crawls of N/2, each its own stores
    cmds = []
    for i in range(procs):
        node = out / f"node{i}"
        node.mkdir()
        stores = node if split else out
        cmd = [
            sys.executable,
            "-m",
            "bench.run_ours",
            "--url",
            bench.listing_url(n // procs if split else n, per_page),
            "--concurrency",
            str(c),
            "--out",
            str(node),
            "--body-store",
            str(stores / "bodies"),
            "--meta-store",
            str(stores / "meta.jsonl"),
        ]
        if not contender.startswith("in-memory"):
            cmd += ["-s", f"REDIS_URL={url}"]
        for setting in settings or []:
            cmd += ["-s", setting]
        if contender == "scrapy-redis-1":
            cmd += [
                "-s",
                "SCHEDULER=scrapy_redis.scheduler.Scheduler",
                "-s",
                "DUPEFILTER_CLASS=scrapy_redis.dupefilter.RFPDupeFilter",
            ]
        cmds.append(cmd)
    client = redis.Redis(port=port)
    client.config_resetstat()
    baseline_memory = client.info("memory")["used_memory"]
    probe = RedisProbe(client) if redis_stats and contender.startswith("distributed") else None
    redis_cpu = server.cpu()
    try:
        if probe is not None:
            probe.start()
        results = measure(cmds, out / "output.log", timeout)
        redis_cpu = server.cpu() - redis_cpu
        ops = probe.stop(baseline_memory) if probe is not None else None
        commandstats = client.info("commandstats")
    finally:
        client.close()
        server.stop()
    reports = []
    for i in range(procs):
        path = out / f"node{i}" / "report.json"
        reports.append(json.loads(path.read_text()) if path.exists() else {})
    ok = all(code == 0 for code, *_ in results) and all(reports)
    row: dict[str, Any] = {
        "contender": contender,
        "n": n,
        "c": c,
        "repeat": repeat,
        "processes": procs,
        "exit": [code for code, *_ in results],
        "stored": sum(r.get("stored", 0) for r in reports),
        "cpu_seconds": sum(u.ru_utime + u.ru_stime for _, u, _, _ in results),
        "peak_rss_mb": max(peak for *_, peak in results),
        "redis_cpu_seconds": 0.0 if split or contender == "in-memory" else redis_cpu,
        "round_trips_per_page": 0.0
        if split or contender == "in-memory"
        else round_trips(commandstats, contender) / n,
        "redis_commands_per_page": 0.0
        if split or contender == "in-memory"
        else sum(v["calls"] for v in commandstats.values()) / n,
        "settings": settings or [],
    }
    if ops is not None:
        row["redis"] = ops
    if ok:
        row["wall_seconds"] = max(r["finished_at"] for r in reports) - min(
            r["started_at"] for r in reports
        )
        row["verified"] = (
            all(
                bench.verify(
                    "ours", "local", n // procs, out / f"node{i}", {"stored": 1}, None, None, ""
                )
                for i in range(procs)
            )
            if split
            else bench.verify("ours", "local", n, out, {"stored": n}, None, None, "")
        )
    row["ok"] = ok and row["stored"] >= n and row.get("verified") is True
    if row["ok"]:
        row["pages_per_second"] = n / row["wall_seconds"]
        row["cpu_ms_per_page"] = 1000 * row["cpu_seconds"] / n
        shutil.rmtree(out, ignore_errors=True)
    return row


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | c | contender | processes | pages/s median [min-max] | vs in-memory "
        "| vs distributed-1 | CPU ms/page | peak RSS MB (per process) | Redis round trips "
        "/ page | Redis commands / page | Redis CPU ms/page | stored & verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
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

            def ratio(
                base: str, of: str = contender, repeats: dict[int, dict[str, float]] = by_repeat
            ) -> float:
                return _median([v[of] / v[base] for v in repeats.values() if of in v and base in v])

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
                + (
                    f"FAILED {failed}/{len(runs)}"
                    if failed
                    else f"{n} in each of {len(runs)} runs, 20 bodies byte-equal"
                )
                + " |"
            )
    return "\n".join(lines)


def redis_table(rows: list[dict[str, Any]]) -> str:
    """Per page seen, for each distributed run measured with --redis-stats."""
    runs = [r for r in rows if "redis" in r]
    lines = [
        "| N | c | nodes | settings | pages/s (noisy) | pages seen | round trips /page "
        "| commands inside /page | command usec /page (noisy) | Redis CPU ms /page "
        "(noisy) | net in B/page | net out B/page | memory after B/seen page "
        "| peak memory B/page | most queued: entries, bytes | most leased: entries, "
        "bytes | status polls /node/s | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        d, seen = r["redis"], max(r["redis"]["seen"], 1)
        q = d["peak_queue"]
        lines.append(
            f"| {r['n']} | {r['c']} | {r['processes']} | {' '.join(r['settings']) or '-'} | "
            f"{r.get('pages_per_second', float('nan')):.0f} | {d['seen']} | "
            f"{d['round_trips'] / r['n']:.3f} | {d['inside'] / r['n']:.2f} | "
            f"{d['command_usec'] / r['n']:.1f} | {1000 * d['cpu_seconds'] / r['n']:.3f} | "
            f"{d['net_in'] / r['n']:.0f} | {d['net_out'] / r['n']:.0f} | "
            f"{d['used_memory_after'] / seen:.0f} | {d['used_memory_peak'] / r['n']:.0f} | "
            f"{q['queued']:,}, {q['queued_bytes']:,} | {q['leased']:,}, {q['leased_bytes']:,} | "
            f"{d['commands'].get('multi', {}).get('calls', 0) / d['seconds'] / r['processes']:.1f}"
            " | "
            f"{'yes' if r['ok'] else 'FAILED'} |"
        )
    names = sorted(
        {c for r in runs for c in r["redis"]["commands"]}, key=lambda c: (c not in TOP_LEVEL, c)
    )
    head = " | ".join(
        f"{r['processes']} node{'s' if r['processes'] > 1 else ''}, c={r['c']}"
        + (f", {' '.join(r['settings'])}" if r["settings"] else "")
        for r in runs
    )
    lines += [
        "",
        "Calls per page (usec per call, noisy) of each command; round trips first:",
        "",
        f"| command | {head} |",
        "|---|" + "---|" * len(runs),
    ]
    for name in names:
        cells = []
        for r in runs:
            v = r["redis"]["commands"].get(name)
            cells.append(f"{v['calls'] / r['n']:.4f} ({v['usec'] / v['calls']:.1f})" if v else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    keys = sorted({k for r in runs for k in r["redis"]["key_bytes"]})
    lines += [
        "",
        "Keys left after the crawl (MEMORY USAGE, bytes):",
        "",
        f"| key | {head} |",
        "|---|" + "---|" * len(runs),
    ]
    for key in keys:
        lines.append(
            f"| {key} | "
            + " | ".join(f"{r['redis']['key_bytes'].get(key, 0):,}" for r in runs)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1000])
    parser.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument(
        "--per-page",
        type=int,
        default=1000,
        help="links per list page: with 100, the chain of list pages (one "
        "per ~110 ms) caps any number of processes near 900 pages/s",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--rows", type=Path, default=OUT / "distributed-rows.jsonl")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument(
        "--section",
        default="distributed",
        help="the marked block of --results to write the table into",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=scratch_dir("scraper-bench-dist"),
    )
    parser.add_argument(
        "-s",
        dest="settings",
        action="append",
        default=[],
        help="a setting for every crawler process (NAME=VALUE)",
    )
    parser.add_argument(
        "--redis-stats",
        action="store_true",
        help="record what each distributed run costs Redis per page "
        "(commandstats, CPU, network bytes, memory) and write that table",
    )
    parser.add_argument(
        "--idle-nodes",
        type=int,
        nargs="+",
        help="instead of crawling: start this many nodes with nothing to "
        "crawl and record what they cost Redis per node and second",
    )
    parser.add_argument("--idle-seconds", type=float, default=20)
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="PAGES",
        help="instead of crawling: drive Redis with the scripts' calls for "
        "PAGES pages (no crawler, no site) to see what Redis alone carries",
    )
    parser.add_argument("--synthetic-procs", type=int, default=2)
    args = parser.parse_args(argv)

    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.distributed " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.synthetic:  # the scripts alone: bench/redis_synthetic.py
        return redis_synthetic.report(
            args.synthetic,
            args.synthetic_procs,
            logs,
            args.rows,
            args.results,
            args.section,
            command,
        )
    if args.idle_nodes:  # nodes with nothing to crawl: bench/redis_idle.py
        return redis_idle.report(
            args.idle_nodes,
            args.idle_seconds,
            args.settings,
            logs,
            args.rows,
            args.results,
            args.section,
            command,
        )
    site = site_server(
        logs / "site.log", "--pages", str(max(args.n)), "--latency-ms", str(args.latency_ms)
    )
    rows = []
    try:
        bench = Bench(site, site.url, {}, logs, args.timeout, [], args.runs_dir)
        for n in args.n:
            for c in args.concurrency:
                for repeat in range(args.repeats):
                    for contender in args.contenders:
                        row = run_one(
                            bench,
                            contender,
                            n,
                            c,
                            repeat,
                            logs,
                            args.timeout,
                            args.per_page,
                            args.settings,
                            args.redis_stats,
                        )
                        rows.append(row)
                        with args.rows.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(
                            f"n={n:<6} c={c:<5} #{repeat} {contender:15} "
                            + (
                                f"{row['pages_per_second']:6.0f} pages/s "
                                f"{row['round_trips_per_page']:.3f} round trips/page"
                                if row["ok"]
                                else f"FAILED {row}"
                            ),
                            flush=True,
                        )
                        if "redis" in row:
                            d = row["redis"]
                            print(
                                f"    redis: {d['inside'] / n:.2f} commands inside/page, "
                                f"{1000 * d['cpu_seconds'] / n:.3f} ms CPU/page, "
                                f"{d['net_in'] / n:.0f}/{d['net_out'] / n:.0f} B in/out "
                                f"per page, {d['used_memory_after'] / max(d['seen'], 1):.0f}"
                                " B/seen page after",
                                flush=True,
                            )
                        time.sleep(0.5)
    finally:
        site.stop()
        if args.runs_dir.name == "scraper-bench-dist":
            shutil.rmtree(args.runs_dir, ignore_errors=True)
    write_section(
        args.results,
        args.section,
        f"Measured with:\n\n    {command}\n\n"
        f"Test site latency {args.latency_ms} ms, {args.per_page} links per list "
        "page; local stores on tmpfs.\n\n"
        + (redis_table(rows) if args.redis_stats else table(rows)),
    )
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
