"""The benchmark: every contender on the same work, side by side, in one run.

    python -m bench.run --n 2000 10000 --concurrency 100 1000 --profiles local s3 services \
        --repeats 3 --latency-ms 100

Contenders (each its own process, crawling the project's test site, itself its own process):
  ours             `scrapy crawl listing` with both storage pipelines
  ours-no-storage  the same spider with no pipelines (what storage costs)
  ours-impolite    ours with ROBOTSTXT_OBEY=False RETRY_AFTER_ENABLED=False (what the
                   politeness defaults cost per page)
  celery-gevent    the Celery + gevent 1000 + Redis setup we replace (bench/celery_gevent.py)
  bare             aiohttp with a semaphore: fetch and discard (the limit)
Each is a row of Bench.contenders() (Contender: its command, the stores it writes and
how they are checked); the servers come from bench/servers.py, as the tests' do.

Storage profiles: ``local`` (our embedded defaults: a folder and a JSON Lines file),
``s3`` (bodies to S3 = bench/s3sink.py, a fast S3-compatible server in its own process
whose CPU per PUT is reported; meta to a JSON Lines file) and ``services`` (S3 = moto's
server, ~275 PUTs/s: these rows measure moto; Mongo = mongomock in the contender's
process, or SCRAPER_BENCH_MONGO_URI). Within one repeat every contender runs once, in
turn, so ratios come from the same minutes of this shared, noisy machine.

Each row: pages/s from the contender's own crawl clock (first request to last page
stored), CPU seconds of the contender's whole process tree (os.wait4: the test site
and moto are measured apart), peak RSS, and what the stores hold (count, 20 bodies
byte-compared). A run that stored fewer than N pages is a failure, not a fast run.
Rows go to bench/out/rows.jsonl; bench/RESULTS.md and bench/results.png are written
from them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.utils.request import RequestFingerprinter

from bench import servers
from bench.servers import ROOT, Server, moto_server, redis_server, s3sink_server, site_server
from scraper.testsite import Listing, render_child

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

OUT = ROOT / "bench" / "out"


def scratch_dir(name: str) -> Path:
    """Where a bench's runs put their stores: ``/dev/shm/<name>`` (tmpfs, so that local
    stores measure the crawler, not this machine's disk), else ``bench/out/<name>``."""
    shm = Path("/dev/shm")
    return shm / name if shm.is_dir() else OUT / name


CONTENDERS = ("ours", "ours-no-storage", "celery-gevent", "bare", "ours-impolite")
#: ours-<name>: ours with these settings. Not in the default run; --variant adds more.
VARIANTS = {"impolite": ["ROBOTSTXT_OBEY=False", "RETRY_AFTER_ENABLED=False"]}
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, from /proc."""
    total = 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_rss_mb(int(child))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    return total


def s3(endpoint: str) -> Any:
    return servers.s3_client(endpoint, CREDENTIALS)


def fingerprint_key(url: str) -> str:
    """Ours: a page is stored under its request fingerprint."""
    return RequestFingerprinter().fingerprint(Request(url)).hex()


def sha1_key(url: str) -> str:
    """Celery's tasks: under the SHA-1 of its URL."""
    return hashlib.sha1(url.encode()).hexdigest()


@dataclass(frozen=True)
class Stores:
    """Where a contender stores a child page, so that its stores can be checked."""

    #: The body's name for a child's URL (its file name, and its S3 key after ``prefix``).
    key: Callable[[str], str]
    #: Bodies in bodies/<key[:2]>/<key> (ours' folder store), else bodies/<key>.
    fanout: bool
    #: The prefix of its S3 keys in the run's bucket.
    prefix: str


OURS_STORES = Stores(fingerprint_key, fanout=True, prefix="ours/")
CELERY_STORES = Stores(sha1_key, fanout=False, prefix="celery/")


@dataclass(frozen=True)
class Run:
    """What one run's command is built from."""

    url: str
    n: int
    c: int
    profile: str
    out: Path
    #: The profile's S3 server, and the bucket made for this run (None: no S3 for it).
    endpoint: str
    bucket: str | None
    #: SCRAPER_BENCH_MONGO_URI: a real MongoDB for the services profile.
    mongo: str | None
    #: The contender's own redis-server (Contender.broker).
    redis_url: str | None
    #: -s settings for every ours contender (the bench's -s).
    settings: list[str]


@dataclass(frozen=True)
class Contender:
    """One row of the bench's table: a name, the command of a run, what it stores.

    ``stores`` None: it stores nothing (no bucket is made for it, nothing is checked).
    ``broker``: it gets a fresh redis-server of its own for each run. ``code``: the
    checkout it runs from (ours@REV), else this one.
    """

    name: str
    command: Callable[[Run], list[str]]
    stores: Stores | None
    broker: bool = False
    code: Path | None = None


def ours(variant: Sequence[str] = (), storage: bool = True) -> Callable[[Run], list[str]]:
    """bench/run_ours.py: ours with the ``variant`` settings; without pipelines if not
    ``storage``."""

    def command(run: Run) -> list[str]:
        cmd = ["bench.run_ours", "--url", run.url, "--concurrency", str(run.c)]
        cmd += ["--out", str(run.out)]
        if not storage:
            cmd.append("--no-storage")
        cmd += [x for setting in variant for x in ("-s", setting)]
        if run.bucket:
            cmd += ["--body-store", f"s3://{run.bucket}/{OURS_STORES.prefix}"]
            cmd += ["-s", f"AWS_ENDPOINT_URL={run.endpoint}"]
        if run.bucket and run.profile == "services":
            cmd += (
                ["--meta-store", f"{run.mongo.rstrip('/')}/bench_{uuid.uuid4().hex[:8]}"]
                if run.mongo
                else ["--meta-store", "mongodb://127.0.0.1:27017/bench", "--mongomock"]
            )
        for setting in run.settings:
            cmd += ["-s", setting]
        return cmd

    return command


def celery(run: Run) -> list[str]:
    """bench/celery_gevent.py: the Celery + gevent setup, on its own broker."""
    cmd = ["bench.celery_gevent", "--url", run.url, "--n", str(run.n)]
    cmd += ["--concurrency", str(run.c), "--profile", run.profile, "--out", str(run.out)]
    cmd += ["--redis-url", str(run.redis_url)]
    if run.bucket:
        cmd += ["--s3-endpoint", run.endpoint, "--bucket", run.bucket]
        if run.mongo and run.profile == "services":
            cmd += ["--mongo-uri", f"{run.mongo.rstrip('/')}/bench_{uuid.uuid4().hex[:8]}"]
    return cmd


def bare(run: Run) -> list[str]:
    """bench/bare.py: aiohttp, fetch and discard."""
    return ["bench.bare", "--url", run.url, "--concurrency", str(run.c), "--out", str(run.out)]


@dataclass
class Bench:
    """The services shared by all runs of one bench invocation."""

    site: Server
    site_url: str
    #: The S3 server of each profile that has one: "s3" bench/s3sink.py, "services" moto.
    s3_servers: dict[str, Server]
    logs: Path
    timeout: float
    extra_settings: list[str]
    runs: Path
    per_page: int = 100
    #: "ours@REV" contenders: REV's code, checked out in its own folder (--baseline).
    baselines: dict[str, Path] = field(default_factory=dict)
    #: "ours-<name>" contenders: ours with these settings (VARIANTS, --variant).
    variants: dict[str, list[str]] = field(default_factory=lambda: dict(VARIANTS))

    def listing_url(self, n: int, per_page: int = 100) -> str:
        return self.site_url + Listing(n, per_page).query(1)

    def contenders(self) -> dict[str, Contender]:
        """Every contender this bench can run, by name."""
        table = [
            Contender("ours", ours(), OURS_STORES),
            Contender("ours-no-storage", ours(storage=False), None),
            Contender("celery-gevent", celery, CELERY_STORES, broker=True),
            Contender("bare", bare, None),
            *(
                Contender(f"ours-{name}", ours(settings), OURS_STORES)
                for name, settings in self.variants.items()
            ),
            *(
                Contender(name, ours(), OURS_STORES, code=code)
                for name, code in self.baselines.items()
            ),
        ]
        return {contender.name: contender for contender in table}

    def run(self, name: str, profile: str, n: int, c: int, repeat: int) -> dict[str, Any]:
        contender = self.contenders()[name]
        out = self.runs / f"{profile}-{n}-{c}-{name}-{repeat}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        server = self.s3_servers.get(profile)
        endpoint = server.url if server else ""
        bucket = None
        if server and contender.stores:
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            s3(endpoint).create_bucket(Bucket=bucket)
        broker = redis_server(self.logs / "redis.log") if contender.broker else None
        run = Run(
            url=self.listing_url(n, self.per_page),
            n=n,
            c=c,
            profile=profile,
            out=out,
            endpoint=endpoint,
            bucket=bucket,
            mongo=os.environ.get("SCRAPER_BENCH_MONGO_URI"),
            redis_url=f"redis://127.0.0.1:{broker.port}/0" if broker else None,
            settings=self.extra_settings,
        )
        cmd = [sys.executable, "-m", *contender.command(run)]
        site_cpu, sink_cpu = self.site.cpu(), server.cpu() if server else 0.0
        try:
            status, usage, process_wall, peak_rss = measure(
                [cmd], out / "output.log", self.timeout, cwd=contender.code or ROOT
            )[0]
        finally:
            if broker is not None:
                broker.stop()
        report = (
            json.loads((out / "report.json").read_text())
            if status == 0 and (out / "report.json").exists()
            else {}
        )
        row: dict[str, Any] = {
            "profile": profile,
            "n": n,
            "c": c,
            "contender": name,
            "repeat": repeat,
            "exit": status,
            "stored": report.get("stored", 0),
            "wall_seconds": report.get("wall_seconds"),
            "process_wall_seconds": process_wall,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "peak_rss_mb": peak_rss,
            "site_cpu_seconds": self.site.cpu() - site_cpu,
            "sink_cpu_seconds": (server.cpu() - sink_cpu) if server else 0.0,
            "errors": report.get("errors"),
        }
        prefix = contender.stores.prefix if contender.stores and bucket else None
        row["verified"] = self.verify(name, profile, n, out, report, bucket, prefix, endpoint)
        row["ok"] = status == 0 and row["stored"] >= n and row["verified"] is not False
        if row["ok"]:
            row["pages_per_second"] = n / row["wall_seconds"]
            row["cpu_ms_per_page"] = 1000 * row["cpu_seconds"] / n
        if bucket:
            self._drop_bucket(endpoint, bucket)
        if row["ok"]:
            shutil.rmtree(out, ignore_errors=True)  # keep failed runs' files to look at
        return row

    def verify(
        self,
        contender: str,
        profile: str,
        n: int,
        out: Path,
        report: dict[str, Any],
        bucket: str | None,
        prefix: str | None,
        endpoint: str = "",
    ) -> bool | None:
        """Do the stores hold N pages, 20 sampled bodies byte-equal? None: nothing stored."""
        stores = self.contenders()[contender].stores
        if stores is None or not report:
            return None
        sample = random.Random(n).sample(range(n), min(20, n))

        def key(i: int) -> str:
            return stores.key(f"{self.site_url}/page/{i}")

        if profile == "services":  # meta in Mongo (mongomock dies with the contender)
            if report.get("meta_docs") != n:
                return False
        else:
            lines = (out / "meta.jsonl").read_text().splitlines()
            if len(lines) != n or len({json.loads(line)["url"] for line in lines}) != n:
                return False
        if profile == "local":
            root = out / "bodies"
            paths = {
                i: root / (f"{key(i)[:2]}/{key(i)}" if stores.fanout else key(i)) for i in sample
            }
            return all(p.read_bytes() == render_child(i) for i, p in paths.items())
        client = s3(endpoint)
        count = sum(
            page.get("KeyCount", 0)
            for page in client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=prefix
            )
        )
        return count == n and all(
            client.get_object(Bucket=bucket, Key=f"{prefix}{key(i)}")["Body"].read()
            == render_child(i)
            for i in sample
        )

    def _drop_bucket(self, endpoint: str, bucket: str) -> None:
        client = s3(endpoint)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000]})
        client.delete_bucket(Bucket=bucket)


def measure(
    cmds: list[list[str]],
    log: Path,
    timeout: float,
    cwd: Path = ROOT,
) -> list[tuple[int, Any, float, float]]:
    """Run ``cmds`` at once; for each: exit code, os.wait4 rusage, wall seconds, peak RSS MB.

    Peak RSS is sampled from /proc over each process tree: wait4's ru_maxrss would report
    this harness's own size, which a child inherits at fork time. ``cwd``: the code to run
    (an earlier commit's checkout runs that commit's ``scraper`` and ``bench``).
    """
    env = {
        **os.environ,
        **CREDENTIALS,
        "SCRAPY_SETTINGS_MODULE": "scraper.settings",
        "PYTHONPATH": str(cwd),
    }
    started = time.monotonic()
    with log.open("ab") as f:
        procs = [
            subprocess.Popen(
                cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            for cmd in cmds
        ]
    timers = [threading.Timer(timeout, os.killpg, (p.pid, signal.SIGKILL)) for p in procs]
    peaks = [0.0] * len(procs)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            for i, p in enumerate(procs):
                peaks[i] = max(peaks[i], tree_rss_mb(p.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    for timer in timers:
        timer.start()
    sampler.start()
    results = []
    try:
        for p in procs:
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            results.append((p.returncode, usage, time.monotonic() - started))
    finally:
        for timer in timers:
            timer.cancel()
        done.set()
        sampler.join()
    return [(code, usage, wall, peaks[i]) for i, (code, usage, wall) in enumerate(results)]


def s3_capacity(endpoint: str, seconds: float = 8, threads: int = 32, size: int = 50_000) -> float:
    """PUTs/s the S3 server takes on its own: ``threads`` clients putting ``size`` bytes."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(max_pool_connections=threads),
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
    )
    bucket = f"capacity-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    body = os.urandom(size)
    deadline = time.monotonic() + seconds
    counts = [0] * threads

    def put(t: int) -> None:
        while time.monotonic() < deadline:
            client.put_object(Bucket=bucket, Key=f"{t}-{counts[t]}", Body=body)
            counts[t] += 1

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(threads)))
    return sum(counts) / (time.monotonic() - started)


def sink_capacity(sink: Server, seconds: float, size: int = 35_000) -> tuple[float, float]:
    """PUTs/s bench/s3sink.py takes from obstore (32 in flight), and its CPU ms per PUT."""
    import asyncio

    import obstore

    from bench.s3_clients import obstore_store

    endpoint = sink.url
    bucket = f"capacity-{uuid.uuid4().hex[:8]}"
    s3(endpoint).create_bucket(Bucket=bucket)
    store, body = obstore_store(endpoint, bucket), os.urandom(size)
    count = 0

    async def put(deadline: float) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await obstore.put_async(store, f"{count:040x}", body)
            count += 1

    async def run() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(put(deadline) for _ in range(32)))

    cpu, started = sink.cpu(), time.monotonic()
    asyncio.run(run())
    rate, cpu_ms = count / (time.monotonic() - started), 1000 * (sink.cpu() - cpu) / count
    s3(endpoint).delete_bucket(Bucket=bucket)  # the sink drops a bucket and its objects
    return rate, cpu_ms


def fs_capacity(folder: Path, seconds: float = 5, size: int = 35_000) -> float:
    """Files/s one thread creates in ``folder`` (write to a temporary name, rename)."""
    target = folder / f"capacity-{uuid.uuid4().hex[:8]}"
    target.mkdir(parents=True)
    body = os.urandom(size)
    count = 0
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            sub = target / f"{count % 256:02x}"
            sub.mkdir(exist_ok=True)
            tmp = sub / f".{count}.tmp"
            tmp.write_bytes(body)
            os.replace(tmp, sub / f"{count:040x}")
            count += 1
        return count / (time.monotonic() - started)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def remove_checkout(folder: Path, quiet: bool = False) -> None:
    """Remove the git worktree in ``folder`` (checkout's), if there is one."""
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)],
        check=False,
        capture_output=quiet,
    )


def checkout(rev: str, folder: Path) -> Path:
    """A detached git worktree of ``rev`` in ``folder`` (made anew)."""
    remove_checkout(folder, quiet=True)
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev],
        check=True,
        capture_output=True,
    )
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[100, 1000])
    parser.add_argument(
        "--profiles",
        nargs="+",
        default=["local", "s3", "services"],
        choices=["local", "s3", "services"],
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=list(CONTENDERS[:4]),
        help=f"of {', '.join(CONTENDERS)}, and ours-<name> of each --variant",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:SETTING=VALUE",
        help="contender ours-NAME: ours with these settings (repeat the "
        "option for more settings; NAME:SETTING=VALUE each)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--timeout", type=float, default=900, help="per run, seconds")
    parser.add_argument(
        "--rows", type=Path, default=OUT / "rows.jsonl", help="rows are appended here"
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument(
        "-s",
        dest="settings",
        action="append",
        default=[],
        help="extra setting for ours (NAME=VALUE)",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=scratch_dir("scraper-bench"),
        help="where each run's stores go (default: tmpfs, so that the local "
        "profile measures the crawler, not this machine's disk)",
    )
    parser.add_argument(
        "--per-page",
        type=int,
        default=100,
        help="child links per list page (the list pages form a chain, one "
        "per latency: 100 links per 100 ms caps every contender near "
        "1,000 pages/s)",
    )
    parser.add_argument(
        "--section",
        default="results",
        help="the marked section of RESULTS.md (and the PNG's name) to write",
    )
    parser.add_argument(
        "--sink-seconds",
        type=float,
        default=8,
        help="how long each sink's capacity is measured alone",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run ours as it was at this git revision (contender "
        "ours@REV, after ours in each repeat): a change measured side by side",
    )
    args = parser.parse_args(argv)

    from bench.report import write_results

    OUT.mkdir(parents=True, exist_ok=True)
    logs = OUT / "logs"
    logs.mkdir(exist_ok=True)
    site = site_server(
        logs / "site.log", "--pages", str(max(args.n)), "--latency-ms", str(args.latency_ms)
    )
    s3_servers: dict[str, Server] = {}
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        capacity: dict[str, float] = {}
        sinks = {
            "runs_dir": str(args.runs_dir),
            "runs_dir_files_per_second": fs_capacity(args.runs_dir, args.sink_seconds),
            "project_disk_files_per_second": fs_capacity(OUT, args.sink_seconds),
        }
        print(f"sinks alone: {sinks}", flush=True)
        if "s3" in args.profiles:
            s3_servers["s3"] = s3sink_server(logs / "s3sink.log")
            capacity["s3"], sinks["s3sink_cpu_ms_per_put"] = sink_capacity(
                s3_servers["s3"], args.sink_seconds
            )
            print(
                f"s3sink alone: {capacity['s3']:.0f} PUTs/s of 35 KB from obstore, "
                f"{sinks['s3sink_cpu_ms_per_put']:.2f} ms of its CPU per PUT",
                flush=True,
            )
        if "services" in args.profiles:
            s3_servers["services"] = moto_server(logs / "moto.log")
            capacity["services"] = s3_capacity(s3_servers["services"].url, args.sink_seconds)
            print(
                f"moto alone: {capacity['services']:.0f} PUTs/s of 50 KB from 32 threads",
                flush=True,
            )
        bench = Bench(
            site,
            site.url,
            s3_servers,
            logs,
            args.timeout,
            args.settings,
            args.runs_dir,
            args.per_page,
        )
        for spec in args.variant:
            name, _, setting = spec.partition(":")
            bench.variants.setdefault(name, []).append(setting)
        known = {*CONTENDERS, *bench.contenders()}
        if unknown := set(args.contenders) - known:
            parser.error(f"unknown contenders {sorted(unknown)}: choose from {sorted(known)}")
        if args.baseline:
            name = f"ours@{args.baseline}"
            bench.baselines[name] = checkout(args.baseline, OUT / f"baseline-{args.baseline}")
            args.contenders.insert(
                args.contenders.index("ours") + 1 if "ours" in args.contenders else 0, name
            )
        rows = []
        # Each repeat runs every contender in every profile before the next repeat, each
        # contender's profiles back to back, in the opposite order every other repeat: the
        # ratios within a repeat (ours with S3 against ours with a folder, ours against
        # Celery) come from neighbouring minutes, and a drift in the machine's speed does
        # not always favour the same side.
        for n in args.n:
            for c in args.concurrency:
                for repeat in range(args.repeats):
                    profiles = args.profiles if repeat % 2 == 0 else args.profiles[::-1]
                    for contender, profile in (
                        (contender, profile)
                        for contender in args.contenders
                        for profile in profiles
                    ):
                        row = bench.run(contender, profile, n, c, repeat)
                        row["latency_ms"] = args.latency_ms
                        row["per_page"] = args.per_page
                        row["s3_capacity_puts_per_second"] = capacity.get(profile)
                        row.update(sinks)
                        rows.append(row)
                        with args.rows.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(
                            f"{profile:8} n={n:<6} c={c:<5} #{repeat} {contender:16} "
                            + (
                                f"{row['pages_per_second']:7.0f} pages/s "
                                f"{row['cpu_ms_per_page']:5.2f} ms CPU/page "
                                f"{row['peak_rss_mb']:5.0f} MB"
                                if row["ok"]
                                else f"FAILED ({row['stored']}/{n} stored, "
                                f"exit {row['exit']}, verified {row['verified']})"
                            ),
                            flush=True,
                        )
        write_results(rows, command, args.results, args.section)
        return 0 if all(r["ok"] for r in rows) else 1
    finally:
        site.stop()
        for server in s3_servers.values():
            server.stop()
        if args.baseline:
            remove_checkout(OUT / f"baseline-{args.baseline}")
        if args.runs_dir.name == "scraper-bench":  # the default tmpfs folder: ours to remove
            shutil.rmtree(args.runs_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
