"""Many sites in one crawl (issue 18), measured: per-site queues against the single
queue, one node against two, one Redis against a 3-master Redis Cluster.

    python -m bench.sites --sites 20 --children 300 --concurrency 1000 --repeats 2 --code HEAD

The world: the test site on ``--sites`` loopback hosts (127.0.0.2 onwards, one process),
``--children`` child pages per host on list pages of ``--per-page`` links, every answer
after ``--latency-ms``, but 127.0.0.2 after ``--slow-ms`` (the slow site) and 127.0.0.3
answering 429 + Retry-After beyond ``--limit-rps`` requests a second (the rate-limited
site). Each node is ``scrapy crawl listing -a urls_file=FILE`` as a user runs it, with
CONCURRENT_REQUESTS=C and CONCURRENT_REQUESTS_PER_DOMAIN=``--per-site`` (8) set
explicitly for every contender, so that the per-site limit is the same and only the queue
differs; local stores on tmpfs; a fresh Redis (or cluster) per run.

Contenders (each with 1 and 2 nodes: ``per-site-1``, ``per-site-2``...):
  per-site      the code here (or ``--code REV``): one queue per site in Redis, leased
                round-robin across sites, on one redis-server
  single-queue  ``--baseline`` (66e9260, before issue 18), in a git worktree: one
                priority queue for every site, on one redis-server
  single-queue-dl  the same with scraper/downloader.py of ``--downloader-from``
                (d87e00f) copied into its worktree and DOWNLOADER set: Scrapy 2.19's
                downloader does not hold a slot's concurrency once it changes (a site
                slowed by Retry-After), which 66e9260 did not fix yet; with it, only the
                queue differs from per-site. Not run unless named in --contenders.
  cluster       per-site's code on a 3-master Redis Cluster (``python -m tests.cluster``
                in its own process: REDIS_URL=redis+cluster://..., 24 partitions)

Each contender crawls two worlds in turn: ``all sites`` and ``healthy alone`` (only the
healthy hosts' list pages: 18 of 20): the issue's "the healthy sites finish in about the
time they take alone" is the healthy sites' last arrival at the site (``/_hosts``) in the
first over the same in the second, from the same minutes. Within a repeat the contenders
run one after the other, in the opposite order in the next repeat.

Per run: pages/s (children stored over first node's spider open to last node's close),
CPU of every node (os.wait4), Redis's CPU (INFO, every master), Redis round trips per
page as the nodes count them (the stat ``distributed/redis_calls``) and as Redis counts
them (INFO commandstats: scripts, MULTI blocks, connection set-up), when the healthy,
the rate-limited and the slow sites got their last request (seconds after the first
request to any site), the most requests in flight at each kind of site, 429s, fetches
beyond one per page; the stores are checked (every child once, 20 bodies byte-equal).
The machine's load average is recorded before and after each run. A crawl that ran to
its end with every child recorded once keeps its figures; records of fetches it gave up
on (e.g. 429s beyond its retries) are counted in the table and make the exit code 1.
Rows go to bench/out/sites-rows.jsonl; ``--from-rows FILE`` writes the tables of one
run's rows again without crawling.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from bench.redis_probe import TOP_LEVEL, deltas, snapshot
from bench.report import write_section
from bench.run import OUT, checkout, fingerprint_key, measure, remove_checkout, scratch_dir
from bench.servers import ROOT, Server, redis_server, site_server, stop
from scraper.testsite import Listing, host_addresses, render_child

QUEUES = ("per-site", "single-queue", "single-queue-dl", "cluster")
CONTENDERS = tuple(f"{q}-{n}" for q in QUEUES for n in (1, 2))
#: single-queue-dl: the baseline with the downloader of the commit that fixed Scrapy
#: 2.19's per-slot concurrency (its scraper/downloader.py copied into the worktree).
DOWNLOADER_FILE = "scraper/downloader.py"
DOWNLOADER = "DOWNLOADER=scraper.downloader.Downloader"
WORLDS = ("all sites", "healthy alone")
#: The worlds' names in rows of the first runs (bench/RESULTS.md, 2026-12-03).
OLD_WORLDS = {"20 sites": WORLDS[0], "18 alone": WORLDS[1]}
SLOW_HOST = "127.0.0.2"
LIMITED_HOST = "127.0.0.3"
#: What Redis counts that a client sent on its own besides TOP_LEVEL: the cluster
#: client's topology reads (CLUSTER SLOTS/SHARDS/NODES, COMMAND) and connection set-up.
CLIENT_SETUP = re.compile(r"^(cluster\||command|readonly|auth|client\|)")


@dataclass(frozen=True)
class Contender:
    """A queue (per-site, single-queue, cluster) with a number of nodes."""

    name: str

    @property
    def queue(self) -> str:
        return self.name.rsplit("-", 1)[0]

    @property
    def nodes(self) -> int:
        return int(self.name.rsplit("-", 1)[1])


class RedisUnderTest:
    """One redis-server, or a cluster of 3 masters run by ``python -m tests.cluster`` in
    a process of its own (the bench does not import the test suite); INFO from every
    master."""

    def __init__(self, cluster: bool, folder: Path, log: Path) -> None:
        self.cluster, self.folder, self.log = cluster, folder, log
        self.server: Server | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.ports: list[int] = []
        self.pids: list[int] = []

    def start(self, timeout: float = 60) -> RedisUnderTest:
        if not self.cluster:
            self.server = redis_server(self.log)
            self.ports = [self.server.port]
            self.url = f"redis://127.0.0.1:{self.server.port}/0"
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / "cluster.out"
        with out.open("wb") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster", "--dir", str(self.folder)],
                cwd=ROOT,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"REDIS_URL=(\S+)", out.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"no cluster: {out.read_text()[-1000:]}")
            time.sleep(0.05)
        self.url = found.group(1)
        self.ports = [int(a.rsplit(":", 1)[1]) for a in self.url.split("//", 1)[1].split(",")]
        self.pids = [int(self.client(p).info("server")["process_id"]) for p in self.ports]
        return self

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port)

    def snapshots(self) -> list[dict[str, Any]]:
        return [snapshot(self.client(port)) for port in self.ports]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.proc is not None:
            stop(self.proc)  # SIGTERM: tests.cluster stops its masters by their PIDs
            for pid in self.pids:  # a master left behind (the wrapper was killed): ours
                comm = Path(f"/proc/{pid}/comm")
                if comm.exists() and comm.read_text().strip() == "redis-server":
                    os.kill(pid, 15)
            shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class World:
    """The running test site and what each run needs of it."""

    site: Server
    sites: int
    children: int
    per_page: int

    @property
    def hosts(self) -> list[str]:
        return host_addresses(self.sites)

    def healthy(self) -> list[str]:
        return [h for h in self.hosts if h not in (SLOW_HOST, LIMITED_HOST)]

    def hosts_of(self, world: str) -> list[str]:
        return self.hosts if world == WORLDS[0] else self.healthy()

    def base(self, host: str) -> str:
        return f"http://{host}:{self.site.port}"

    def urls_file(self, path: Path, world: str) -> Path:
        first = Listing(self.children, self.per_page).query(1)
        path.write_text("".join(f"{self.base(h)}{first}\n" for h in self.hosts_of(world)))
        return path

    def host_stats(self, reset: bool = False) -> dict[str, dict[str, float]]:
        url = f"{self.site.url}/_hosts" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def verify(self, out: Path, world: str) -> tuple[bool, int, str]:
        """Every child of the world's hosts recorded once, 20 bodies of those fetched
        byte-equal; and how many records are failures (the crawl gave up on them)."""
        expected = {
            f"{self.base(h)}/page/{i}" for h in self.hosts_of(world) for i in range(self.children)
        }
        meta = out / "meta.jsonl"
        docs = [json.loads(line) for line in meta.read_text().splitlines()] if meta.exists() else []
        urls = [d["url"] for d in docs]
        failed = {d["url"]: d.get("status") or d["error"] for d in docs if d.get("error")}
        note = f", {len(failed)} of them failed ({_reasons(failed)})" if failed else ""
        if len(urls) != len(expected) or set(urls) != expected:
            return (
                False,
                len(failed),
                (f"{len(urls)} records ({len(set(urls))} distinct) of {len(expected)}{note}"),
            )
        fetched = sorted(expected - set(failed))
        for url in random.Random(len(expected)).sample(fetched, min(20, len(fetched))):
            key = fingerprint_key(url)
            path = out / "bodies" / key[:2] / key
            if not path.exists() or path.read_bytes() != render_child(int(url.rsplit("/", 1)[1])):
                return False, len(failed), f"body of {url} missing or different"
        return True, len(failed), f"{len(expected)} records once each{note}"


def _reasons(failed: dict[str, Any]) -> str:
    """``{url: status or error}`` as "429 x 176 on 127.0.0.3"."""
    counts: dict[tuple[str, str], int] = {}
    for url, why in failed.items():
        key = (str(why), url.split("/")[2].split(":")[0])
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{why} x {n} on {host}" for (why, host), n in sorted(counts.items()))


def node_command(
    world: World, urls: Path, out: Path, node: Path, c: int, redis_url: str, settings: list[str]
) -> list[str]:
    """`scrapy crawl listing -a urls_file=...` as a user runs it, one node."""
    cmd = [sys.executable, "-m", "scrapy", "crawl", "listing", "-a", f"urls_file={urls}"]
    values = [
        f"CONCURRENT_REQUESTS={c}",
        f"BODY_STORE={out / 'bodies'}",
        f"META_STORE={out / 'meta.jsonl'}",
        f"META_STORE_SPOOL={node / 'spool.jsonl'}",
        f"STATS_FILE={node / 'stats.json'}",
        f"REDIS_URL={redis_url}",
        "LOG_LEVEL=INFO",
        *settings,
    ]
    return cmd + [x for value in values for x in ("-s", value)]


def timeline(seen: dict[str, dict[str, float]], world: World, hosts: list[str]) -> dict[str, Any]:
    """When each kind of site got its last request, in seconds after the first request to
    any of them; the most in flight at each; 429s; fetches beyond one per page."""
    crawled = [h for h in hosts if h in seen]
    if not crawled:
        return {}
    zero = min(seen[h]["first"] for h in crawled)
    healthy = [h for h in world.healthy() if h in seen]
    lists = -(-world.children // world.per_page)
    expected = len(hosts) * (world.children + lists)
    refused = sum(seen[h]["refused"] for h in crawled)
    done = max(seen[h]["last"] for h in healthy) - zero
    row: dict[str, Any] = {
        "healthy_done_s": done,
        "healthy_first_done_s": min(seen[h]["last"] for h in healthy) - zero,
        "healthy_pages_per_second": len(healthy) * world.children / done,
        "max_in_flight_healthy": max(seen[h]["max_in_flight"] for h in healthy),
        "refused": refused,
        "extra_fetches": sum(seen[h]["hits"] for h in crawled) - refused - expected,
    }
    for name, host in (("slow", SLOW_HOST), ("limited", LIMITED_HOST)):
        if host in hosts and host in seen:
            row[f"{name}_done_s"] = seen[host]["last"] - zero
            row[f"max_in_flight_{name}"] = seen[host]["max_in_flight"]
            row[f"max_per_second_{name}"] = seen[host]["max_per_second"]
    return row


def run_one(
    world: World,
    contender: Contender,
    code: Path,
    world_name: str,
    repeat: int,
    c: int,
    settings: list[str],
    runs: Path,
    logs: Path,
    timeout: float,
) -> dict[str, Any]:
    tag = world_name.replace(" ", "-")
    out = runs / f"{contender.name}-{tag}-{repeat}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    urls = world.urls_file(out / "lists.txt", world_name)
    backend = RedisUnderTest(contender.queue == "cluster", out / "cluster", logs / "redis.log")
    backend.start()
    cmds = []
    for i in range(contender.nodes):
        node = out / f"node{i}"
        node.mkdir()
        cmds.append(node_command(world, urls, out, node, c, backend.url, settings))
    load_before = os.getloadavg()
    world.host_stats(reset=True)
    site_cpu = world.site.cpu()
    try:
        before = backend.snapshots()
        results = measure(cmds, out / "output.log", timeout, cwd=code)
        after = backend.snapshots()
    finally:
        backend.stop()
    site_cpu = world.site.cpu() - site_cpu
    load_after = os.getloadavg()
    seen = world.host_stats()
    per_master = [deltas(b, a) for b, a in zip(before, after, strict=True)]
    stats = []
    for i in range(contender.nodes):
        path = out / f"node{i}" / "stats.json"
        stats.append(json.loads(path.read_text()) if path.exists() else {})
    hosts = world.hosts_of(world_name)
    pages = len(hosts) * world.children
    client_setup = sum(
        v["calls"] for d in per_master for k, v in d["commands"].items() if CLIENT_SETUP.match(k)
    )
    log = (out / "output.log").read_text(errors="replace")
    mode = re.search(r"Sites: [^\n]*", log)
    row: dict[str, Any] = {
        "contender": contender.name,
        "queue": contender.queue,
        "nodes": contender.nodes,
        "world": world_name,
        "repeat": repeat,
        "c": c,
        "pages": pages,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": load_before,
        "load_after": load_after,
        "exit": [code for code, *_ in results],
        "finish_reasons": [s.get("finish_reason") for s in stats],
        "stored": sum(s.get("meta_store/written", 0) for s in stats),
        "stored_per_node": [s.get("meta_store/written", 0) for s in stats],
        "cpu_seconds": sum(u.ru_utime + u.ru_stime for _, u, _, _ in results),
        "process_wall_seconds": max(wall for _, _, wall, _ in results),
        "peak_rss_mb": max(peak for *_, peak in results),
        "site_cpu_seconds": site_cpu,
        "redis_cpu_seconds": sum(d["cpu_seconds"] for d in per_master),
        "redis_calls_nodes": sum(s.get("distributed/redis_calls", 0) for s in stats),
        "redis_round_trips": sum(d["round_trips"] for d in per_master) + client_setup,
        "redis_client_setup": client_setup,
        "redis_inside": sum(d["inside"] for d in per_master),
        "redis_calls_per_master": [
            sum(v["calls"] for k, v in d["commands"].items() if k in TOP_LEVEL) for d in per_master
        ],
        "redis_commands": {
            k: sum(d["commands"].get(k, {}).get("calls", 0) for d in per_master)
            for k in sorted({k for d in per_master for k in d["commands"]})
        },
        "retry_after_received": sum(s.get("politeness/retry_after/received", 0) for s in stats),
        "mode_line": mode.group(0) if mode else None,
        "hosts": {h: seen[h] for h in hosts if h in seen},
        **timeline(seen, world, hosts),
    }
    ok = all(code == 0 for code in row["exit"]) and all(stats)
    if ok:
        started = min(datetime.fromisoformat(s["start_time"]) for s in stats)
        finished = max(datetime.fromisoformat(s["finish_time"]) for s in stats)
        row["wall_seconds"] = (finished - started).total_seconds()
    row["verified"], row["failed_records"], row["verify_note"] = world.verify(out, world_name)
    # ok: the crawl ran to its end and recorded every child once (its figures stand);
    # records of pages it gave up on are counted apart, and fail the bench's exit code.
    row["ok"] = ok and row["verified"]
    if row["ok"]:
        row["pages_per_second"] = pages / row["wall_seconds"]
    if row["ok"] and not row["failed_records"]:
        shutil.rmtree(out, ignore_errors=True)  # keep a failed run's files to look at
    return row


# --- the report -------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _fmt(value: float, digits: int = 0) -> str:
    return "-" if value != value else f"{value:.{digits}f}"  # nan: "-"


def _runs(rows: list[dict[str, Any]], contender: str, world: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["contender"] == contender and r["world"] == world]


def _med(runs: list[dict[str, Any]], key: str, per_page: bool = False) -> float:
    return _median([r[key] / (r["pages"] if per_page else 1) for r in runs if key in r])


def cost_table(rows: list[dict[str, Any]], contenders: list[str]) -> str:
    lines = [
        "| contender | world | nodes | pages/s median [min-max] | wall s | CPU ms/page "
        "(all nodes) | Redis CPU ms/page | Redis round trips/page: nodes' count "
        "| as Redis counts them | commands inside scripts/page | load 1-min (before run) "
        "| stored & verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for contender in contenders:
        for world in WORLDS:
            runs = _runs(rows, contender, world)
            if not runs:
                continue
            ok = [r for r in runs if r["ok"]]
            rates = [r["pages_per_second"] for r in ok] or [float("nan")]
            failed = [r for r in runs if not r["ok"]]
            lines.append(
                f"| {contender} | {world} | {runs[0]['nodes']} | "
                f"{_fmt(_median(rates))} [{_fmt(min(rates))}-{_fmt(max(rates))}] | "
                f"{_fmt(_med(ok, 'wall_seconds'), 1)} | "
                f"{_fmt(1000 * _med(ok, 'cpu_seconds', True), 2)} | "
                f"{_fmt(1000 * _med(ok, 'redis_cpu_seconds', True), 3)} | "
                f"{_fmt(_med(ok, 'redis_calls_nodes', True), 3)} | "
                f"{_fmt(_med(ok, 'redis_round_trips', True), 3)} | "
                f"{_fmt(_med(ok, 'redis_inside', True), 1)} | "
                + ", ".join(f"{r['load_before'][0]:.1f}" for r in runs)
                + " | "
                + (
                    f"FAILED {len(failed)}/{len(runs)}: "
                    + "; ".join(str(r["verify_note"]) for r in failed)
                    if failed
                    else f"{runs[0]['pages']} records once each in each of {len(runs)} runs, "
                    "20 bodies byte-equal"
                    + (
                        "; **records of failed fetches: "
                        + "; ".join(str(r["verify_note"]).split(", ", 1)[1] for r in gave_up)
                        + "**"
                        if (gave_up := [r for r in runs if r.get("failed_records")])
                        else ""
                    )
                )
                + " |"
            )
    return "\n".join(lines)


def timeline_table(rows: list[dict[str, Any]], contenders: list[str]) -> str:
    lines = [
        "| contender | healthy sites done, all sites (s) | healthy alone (s) | all / alone "
        "(per repeat) | healthy pages/s, all / alone | rate-limited site done (s) "
        "| slow site done (s) | most in flight "
        "at a site: healthy / limited / slow | most requests in 1 s at the limited site "
        "| 429s | fetches beyond one per page |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for contender in contenders:
        full = [r for r in _runs(rows, contender, WORLDS[0]) if "healthy_done_s" in r]
        alone = [r for r in _runs(rows, contender, WORLDS[1]) if "healthy_done_s" in r]
        if not full:
            continue
        alone_by = {r["repeat"]: r["healthy_done_s"] for r in alone}
        ratios = [
            r["healthy_done_s"] / alone_by[r["repeat"]] for r in full if r["repeat"] in alone_by
        ]

        def most(key: str, runs: list[dict[str, Any]] = full) -> str:
            return str(max((r.get(key, 0) for r in runs), default=0))

        lines.append(
            f"| {contender} | {_fmt(_med(full, 'healthy_done_s'), 1)} | "
            f"{_fmt(_med(alone, 'healthy_done_s'), 1)} | "
            + (", ".join(f"{x:.2f}" for x in ratios) or "-")
            + f" | {_fmt(_med(full, 'healthy_pages_per_second'))} / "
            f"{_fmt(_med(alone, 'healthy_pages_per_second'))}"
            f" | {_fmt(_med(full, 'limited_done_s'), 1)} | {_fmt(_med(full, 'slow_done_s'), 1)}"
            f" | {most('max_in_flight_healthy')} / {most('max_in_flight_limited')} / "
            f"{most('max_in_flight_slow')} | {most('max_per_second_limited')} | "
            + ", ".join(str(r["refused"]) for r in full)
            + " | "
            + ", ".join(str(r["extra_fetches"]) for r in full)
            + " |"
        )
    return "\n".join(lines)


PAIRS = (
    ("per-site-2", "per-site-1"),
    ("single-queue-2", "single-queue-1"),
    ("single-queue-dl-2", "single-queue-dl-1"),
    ("cluster-2", "cluster-1"),
    ("per-site-1", "single-queue-1"),
    ("per-site-2", "single-queue-2"),
    ("per-site-1", "single-queue-dl-1"),
    ("per-site-2", "single-queue-dl-2"),
    ("cluster-1", "per-site-1"),
    ("cluster-2", "per-site-2"),
)


def _ratios(pairs: list[tuple[dict[str, Any], dict[str, Any]]], key: str) -> str:
    """a[key] / b[key] for each pair of rows, as text."""
    return ", ".join(f"{a[key] / b[key]:.2f}" for a, b in pairs if b.get(key)) or "-"


def pairs_table(rows: list[dict[str, Any]]) -> str:
    """Ratios of two contenders within each repeat (the same minutes), 20-site world."""
    lines = [
        "| a vs b (all sites) | pages/s a/b | CPU per page a/b | Redis round trips per "
        "page a/b (nodes' count) | healthy sites done a/b |",
        "|---|---|---|---|---|",
    ]
    for a, b in PAIRS:
        by_repeat: dict[int, dict[str, dict[str, Any]]] = {}
        for r in rows:
            if r["ok"] and r["world"] == WORLDS[0] and r["contender"] in (a, b):
                by_repeat.setdefault(r["repeat"], {})[r["contender"]] = r
        both = [(v[a], v[b]) for v in by_repeat.values() if a in v and b in v]
        if both:
            lines.append(
                f"| {a} vs {b} | {_ratios(both, 'pages_per_second')} | "
                f"{_ratios(both, 'cpu_seconds')} | {_ratios(both, 'redis_calls_nodes')} | "
                f"{_ratios(both, 'healthy_done_s')} |"
            )
    return "\n".join(lines)


def masters_table(rows: list[dict[str, Any]]) -> str:
    """How the cluster's round trips spread over its masters, and what the nodes sent."""
    runs = [r for r in rows if r["queue"] == "cluster" and r["ok"]]
    if not runs:
        return ""
    lines = [
        "| contender | world | repeat | round trips per master (scripts, MULTI, set-up "
        "excluded) | EVALSHA/page | client set-up and topology calls |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['contender']} | {r['world']} | {r['repeat']} | "
            + " / ".join(str(x) for x in r["redis_calls_per_master"])
            + f" | {r['redis_commands'].get('evalsha', 0) / r['pages']:.3f} | "
            f"{r['redis_client_setup']} |"
        )
    return "\n".join(lines)


def report(rows: list[dict[str, Any]], contenders: list[str], header: str) -> str:
    parts = [
        header,
        "Cost and throughput (medians over the repeats; load: the 1-minute load average "
        "before each run, this session's runs included):",
        cost_table(rows, contenders),
        "When the sites were done: seconds from the first request to any site to the last "
        "request each kind of site got, measured at the site (`/_hosts`); most in flight "
        "and 429s over every run; fetches beyond one per page counts every request but "
        "429s beyond each child and list page once:",
        timeline_table(rows, contenders),
        "Side by side, per repeat (a over b):",
        pairs_table(rows),
    ]
    if masters := masters_table(rows):
        parts += ["The cluster's masters:", masters]
    return "\n\n".join(parts)


def _rev(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def prepare_code(
    queues: set[str], code: str | None, baseline: str, downloader_from: str, runs: Path
) -> tuple[dict[str, Path], dict[str, str], list[Path]]:
    """The checkout each queue runs from and its name; the worktrees made for them."""
    codes: dict[str, Path] = {}
    revs: dict[str, str] = {}
    worktrees: list[Path] = []
    current, revs["per-site"] = ROOT, "this checkout"
    if code:
        revs["per-site"] = _rev(code)
        current = checkout(revs["per-site"], runs / f"code-{revs['per-site']}")
        worktrees.append(current)
    codes["per-site"] = codes["cluster"] = current
    revs["cluster"] = revs["per-site"]
    if "single-queue" in queues:
        revs["single-queue"] = _rev(baseline)
        codes["single-queue"] = checkout(revs["single-queue"], runs / f"code-{baseline}")
        worktrees.append(codes["single-queue"])
    if "single-queue-dl" in queues:
        fix = _rev(downloader_from)
        revs["single-queue-dl"] = f"{_rev(baseline)} + {DOWNLOADER_FILE} of {fix}"
        tree = checkout(_rev(baseline), runs / f"code-{baseline}-dl")
        worktrees.append(tree)
        (tree / DOWNLOADER_FILE).write_bytes(
            subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{fix}:{DOWNLOADER_FILE}"],
                capture_output=True,
                check=True,
            ).stdout
        )
        codes["single-queue-dl"] = tree
    return codes, revs, worktrees


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=20)
    parser.add_argument("--children", type=int, default=500, help="child pages per site")
    parser.add_argument("--per-page", type=int, default=100, help="child links per list page")
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--slow-ms", type=float, default=2000, help="latency of the slow site")
    parser.add_argument("--limit-rps", type=int, default=10, help="of the rate-limited site")
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument(
        "--per-site",
        type=int,
        default=8,
        help="CONCURRENT_REQUESTS_PER_DOMAIN for every contender (0: not set)",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=[c for c in CONTENDERS if "-dl-" not in c],
        choices=CONTENDERS,
    )
    parser.add_argument("--worlds", nargs="+", default=list(WORLDS), choices=WORLDS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--code",
        metavar="REV",
        help="run per-site and cluster from this revision's worktree (default: this "
        "checkout, as it is)",
    )
    parser.add_argument(
        "--baseline", default="66e9260", metavar="REV", help="the single queue's revision"
    )
    parser.add_argument(
        "--downloader-from",
        default="d87e00f",
        metavar="REV",
        help=f"single-queue-dl: the baseline with {DOWNLOADER_FILE} of this revision",
    )
    parser.add_argument("--timeout", type=float, default=600, help="per run, seconds")
    parser.add_argument("--rows", type=Path, default=OUT / "sites-rows.jsonl")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--section", default="sites", help="the marked block of --results")
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=scratch_dir("scraper-bench-sites"),
    )
    parser.add_argument(
        "-s", dest="settings", action="append", default=[], help="NAME=VALUE for every node"
    )
    parser.add_argument(
        "--from-rows",
        type=Path,
        metavar="ROWS",
        help="crawl nothing: write the tables of the rows in this file (one run's)",
    )
    args = parser.parse_args(argv)
    if args.sites < 3:
        parser.error("--sites: at least 3 (a slow one, a rate-limited one, a healthy one)")
    if args.from_rows:
        done = [json.loads(line) for line in args.from_rows.read_text().splitlines()]
        for row in done:
            row["world"] = OLD_WORLDS.get(row["world"], row["world"])
        named = [c for c in CONTENDERS if any(r["contender"] == c for r in done)]
        header = done[0].get("header") or f"Rewritten from {args.from_rows}."
        write_section(args.results, args.section, report(done, named, header))
        return 0

    command = "python -m bench.sites " + " ".join(argv if argv is not None else sys.argv[1:])
    logs = OUT / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    # The hosts are 127.0.0.2 onwards; the SSRF guard allows only what it is told.
    os.environ["SCRAPER_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    settings = list(args.settings)
    if args.per_site:
        settings.append(f"CONCURRENT_REQUESTS_PER_DOMAIN={args.per_site}")
    contenders = [Contender(name) for name in args.contenders]
    started = time.monotonic()
    load = os.getloadavg()
    site = site_server(
        logs / "sites-site.log",
        "--hosts",
        str(args.sites),
        "--latency-ms",
        str(args.latency_ms),
        "--slow-host",
        SLOW_HOST,
        "--slow-host-ms",
        str(args.slow_ms),
        "--limited-host",
        LIMITED_HOST,
        "--limit-rps",
        str(args.limit_rps),
    )
    rows: list[dict[str, Any]] = []
    worktrees: list[Path] = []
    try:
        codes, revs, worktrees = prepare_code(
            {c.queue for c in contenders},
            args.code,
            args.baseline,
            args.downloader_from,
            args.runs_dir,
        )
        setup = (
            f"{args.sites} sites x {args.children} children ({args.per_page} links per list "
            f"page), {args.latency_ms:.0f} ms latency, {SLOW_HOST} {args.slow_ms:.0f} ms, "
            f"{LIMITED_HOST} 429 + Retry-After beyond {args.limit_rps} requests/s; "
            f"CONCURRENT_REQUESTS={args.concurrency}, "
            + (
                f"CONCURRENT_REQUESTS_PER_DOMAIN={args.per_site} for every contender"
                if args.per_site
                else "CONCURRENT_REQUESTS_PER_DOMAIN not set"
            )
            + "; code: "
            + ", ".join(f"{q}: {revs[q]}" for q in QUEUES if q in revs)
            + "; local stores on tmpfs."
        )
        world = World(site, args.sites, args.children, args.per_page)
        for repeat in range(args.repeats):
            order = contenders if repeat % 2 == 0 else contenders[::-1]
            worlds = args.worlds if repeat % 2 == 0 else args.worlds[::-1]
            for contender in order:
                for world_name in worlds:
                    row = run_one(
                        world,
                        contender,
                        codes[contender.queue],
                        world_name,
                        repeat,
                        args.concurrency,
                        settings + ([DOWNLOADER] if contender.queue == "single-queue-dl" else []),
                        args.runs_dir,
                        logs,
                        args.timeout,
                    )
                    row["code"] = revs[contender.queue]
                    row["header"] = f"Measured with:\n\n    {command}\n\n{setup}"
                    rows.append(row)
                    with args.rows.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(
                        f"#{repeat} {contender.name:17} {world_name:13} "
                        + (
                            f"{row['pages_per_second']:5.0f} pages/s "
                            f"{1000 * row['cpu_seconds'] / row['pages']:.2f} ms CPU/page "
                            f"{row['redis_calls_nodes'] / row['pages']:.3f} calls/page "
                            f"healthy done {row['healthy_done_s']:.1f} s "
                            f"slow {row.get('slow_done_s', float('nan')):.1f} s "
                            f"in flight {row['max_in_flight_healthy']}"
                            f"/{row.get('max_in_flight_limited', '-')}"
                            f"/{row.get('max_in_flight_slow', '-')} "
                            f"load {row['load_before'][0]:.1f} "
                            f"failed records {row['failed_records']}"
                            if row["ok"]
                            else f"FAILED exit {row['exit']} {row['finish_reasons']} "
                            f"{row['verify_note']}"
                        ),
                        flush=True,
                    )
    finally:
        site.stop()
        for tree in worktrees:
            remove_checkout(tree, quiet=True)
        if args.runs_dir.name == "scraper-bench-sites":  # the default tmpfs folder: ours
            shutil.rmtree(args.runs_dir, ignore_errors=True)
    minutes = (time.monotonic() - started) / 60
    header = (
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on this 2-core VM in {minutes:.0f}"
        f" min (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the start, "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end), with:\n\n"
        f"    {command}\n\n{setup}"
    )
    write_section(args.results, args.section, report(rows, args.contenders, header))
    return 0 if all(r["ok"] and not r["failed_records"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
