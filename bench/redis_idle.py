"""Idle nodes: what distributed nodes with nothing to crawl cost Redis, per node and second.

    python -m bench.redis_idle --nodes 1 4 --seconds 20 --section redis-idle

Starts that many nodes with REDIS_WAIT_FOR_START_URLS and nothing seeded on a fresh
redis-server and records, after every node's first heartbeat, the INFO deltas
(bench/redis_probe.py) per node and second: the background load. The same as
``python -m bench.distributed --idle-nodes ...``, the command bench/RESULTS.md records.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench.redis_probe import TOP_LEVEL, deltas, snapshot
from bench.report import write_section
from bench.run import CREDENTIALS, OUT
from bench.servers import ROOT, cpu_seconds, redis_server


def idle_run(
    nodes: int, seconds: float, logs: Path, settings: list[str], warmup: float = 5
) -> dict[str, Any]:
    """Nodes started with nothing to crawl: what they cost Redis per node and second."""
    server = redis_server(logs / "redis.log")
    port = server.port
    client = redis.Redis(port=port)
    env = {**os.environ, **CREDENTIALS, "SCRAPY_SETTINGS_MODULE": "scraper.settings"}
    cmd = [
        sys.executable,
        "-m",
        "scrapy",
        "crawl",
        "listing",
        "-s",
        f"REDIS_URL=redis://127.0.0.1:{port}/0",
        "-s",
        "REDIS_WAIT_FOR_START_URLS=True",
        "-s",
        "LOG_LEVEL=WARNING",
        *(x for setting in settings for x in ("-s", setting)),
    ]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "idle-nodes.log").open("ab") as log:
            procs = [
                subprocess.Popen(
                    cmd,
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                for _ in range(nodes)
            ]
        deadline = time.monotonic() + 60
        while client.hlen("listing:nodes") < nodes:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"idle nodes did not all start; see {logs}/idle-nodes.log")
            time.sleep(0.2)
        time.sleep(warmup)
        node_cpu = [cpu_seconds(p.pid) for p in procs]
        before = snapshot(client)
        time.sleep(seconds)
        after = snapshot(client)
        node_cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, node_cpu, strict=True)]
        d = deltas(before, after)
        d.update(
            {
                "nodes": nodes,
                "settings": settings,
                "node_cpu_seconds": node_cpu,
                "connected_clients": after["connected_clients"],
            }
        )
        return d
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        client.close()
        server.stop()


def idle_table(runs: list[dict[str, Any]]) -> str:
    lines = [
        "| idle nodes | seconds | round trips /node/s | commands inside /node/s "
        "| command usec /node/s (noisy) | Redis CPU ms /node/s (noisy) | net in B/node/s "
        "| net out B/node/s | node CPU ms/s (noisy) | clients connected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in runs:
        per = d["nodes"] * d["seconds"]
        lines.append(
            f"| {d['nodes']} | {d['seconds']:.1f} | {d['round_trips'] / per:.1f} | "
            f"{d['inside'] / per:.1f} | {d['command_usec'] / per:.0f} | "
            f"{1000 * d['cpu_seconds'] / per:.2f} | {d['net_in'] / per:.0f} | "
            f"{d['net_out'] / per:.0f} | "
            f"{1000 * sum(d['node_cpu_seconds']) / per:.1f} | {d['connected_clients']} |"
        )
    names = sorted({c for d in runs for c in d["commands"]}, key=lambda c: (c not in TOP_LEVEL, c))
    lines += [
        "",
        "Calls per node per second (usec per call, noisy):",
        "",
        "| command | " + " | ".join(f"{d['nodes']} idle nodes" for d in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for name in names:
        cells = []
        for d in runs:
            v = d["commands"].get(name)
            cells.append(
                f"{v['calls'] / d['nodes'] / d['seconds']:.2f} ({v['usec'] / v['calls']:.1f})"
                if v
                else "-"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(
    node_counts: list[int],
    seconds: float,
    settings: list[str],
    logs: Path,
    rows: Path,
    results: Path,
    section: str,
    command: str,
) -> int:
    """Measure each count of idle nodes; append the rows, write the section of ``results``."""
    idle = []
    for nodes in node_counts:
        d = idle_run(nodes, seconds, logs, settings)
        idle.append(d)
        with rows.open("a") as f:
            f.write(json.dumps({"idle": d}) + "\n")
        print(
            f"{nodes} idle nodes: {d['round_trips'] / nodes / d['seconds']:.1f} round "
            f"trips/node/s, {d['inside'] / nodes / d['seconds']:.1f} commands inside",
            flush=True,
        )
    write_section(
        results,
        section,
        f"Measured with:\n\n    {command}\n\n"
        "Each node: `scrapy crawl listing -s REDIS_URL=... -s "
        "REDIS_WAIT_FOR_START_URLS=True`, nothing seeded; deltas over "
        f"{seconds:.0f} s after every node's first heartbeat + 5 s.\n\n" + idle_table(idle),
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rows", type=Path, default=OUT / "distributed-rows.jsonl")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--section", default="redis-idle")
    parser.add_argument("-s", dest="settings", action="append", default=[])
    args = parser.parse_args(argv)
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.redis_idle " + " ".join(argv if argv is not None else sys.argv[1:])
    return report(
        args.nodes,
        args.seconds,
        args.settings,
        logs,
        args.rows,
        args.results,
        args.section,
        command,
    )


if __name__ == "__main__":
    sys.exit(main())
