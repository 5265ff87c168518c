"""Benchmark contender: the Celery + gevent setup that this project replaces.

The setup, as users ran it and as reconstructed here:

- ``celery worker --pool=gevent --concurrency=1000`` with a Redis broker, stock config
  (prefetch multiplier, acks, no result backend); started here as a child process.
- One task per child URL (``bench.celery_tasks.fetch_page``): ``requests.get(url)`` with
  no session, then one S3 ``put_object`` (boto3 client per worker process, default
  botocore config) and one MongoDB ``replace_one(upsert=True)``: no batching
  (``--profile services``). ``--profile s3`` keeps the S3 PUT and appends the meta line
  to ``meta.jsonl``; ``--profile local`` writes a file per body and that line.
- A producer script (this process) fetches the list page with ``requests.get``, follows
  ``rel="next"`` and calls ``fetch_page.delay(url)`` for each child link as it finds it.

Deviations, for bounded runs only: ``requests.get(url, timeout=60)``; without
``--mongo-uri`` the worker uses mongomock in memory and writes its document count to
``DIR/mongo_count.json`` at shutdown.

Completion: each task INCRs a Redis counter after both writes; we poll it every 50 ms.
``wall_seconds`` runs from the first list-page fetch (worker already ready) until the
counter reaches N; ``startup_seconds`` from worker launch until its ``worker_ready``
signal. The worker is stopped with SIGTERM (warm shutdown) and waited for, so its CPU
time is accounted to this process tree. Published figures for this setup: 100 pages in
7-8 s, 2,100 pages in 2 min.

    python -m bench.celery_gevent --url LIST_URL --n N --concurrency C --profile local \\
        --out DIR --redis-url redis://127.0.0.1:PORT/0 [--s3-endpoint URL --bucket NAME]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import lxml.html
import redis
import requests

from bench import celery_tasks

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="first list page")
    p.add_argument("--n", type=int, required=True, help="child pages expected")
    p.add_argument("--concurrency", type=int, default=1000, help="gevent greenlets")
    p.add_argument("--profile", choices=("local", "s3", "services"), default="local")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--s3-endpoint")
    p.add_argument("--bucket")
    p.add_argument("--mongo-uri")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the whole run")
    args = p.parse_args(argv)
    if args.profile in ("s3", "services") and not (args.s3_endpoint and args.bucket):
        p.error(f"--profile {args.profile} needs --s3-endpoint and --bucket")
    return args


def prepare(args: argparse.Namespace, r: redis.Redis) -> None:
    """Clear what a previous run left: output files, counters, the Mongo collection."""
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "bodies", ignore_errors=True)
    for name in ("meta.jsonl", "mongo_count.json", "worker_stats.json", "report.json"):
        (args.out / name).unlink(missing_ok=True)
    r.delete(celery_tasks.STORED_KEY, celery_tasks.ERRORS_KEY, celery_tasks.READY_KEY)
    if args.profile == "local":
        return
    # moto and bench/s3sink.py accept any credentials; real ones from the environment win.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    import boto3

    s3 = boto3.client("s3", endpoint_url=args.s3_endpoint, region_name="us-east-1")
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=args.bucket)
    if args.mongo_uri and args.profile == "services":
        import pymongo

        with pymongo.MongoClient(args.mongo_uri) as client:
            client["bench"]["celery_pages"].drop()


def start_worker(args: argparse.Namespace) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        BENCH_REDIS_URL=args.redis_url,
        BENCH_PROFILE=args.profile,
        BENCH_OUT=str(args.out.resolve()),
        BENCH_S3_ENDPOINT=args.s3_endpoint or "",
        BENCH_BUCKET=args.bucket or "",
        BENCH_MONGO_URI=args.mongo_uri or "",
    )
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.celery_tasks",
        "worker",
        "--pool=gevent",
        f"--concurrency={args.concurrency}",
        "--loglevel=WARNING",
        "--purge",
        "-n",
        f"bench{os.getpid()}@%h",
    ]
    with open(args.out / "worker.log", "wb") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen) -> None:
    """Warm shutdown (SIGTERM), then wait; SIGKILL only if it hangs."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def produce(list_url: str, deadline: float) -> int:
    """Fetch list pages along rel=next and enqueue one task per child link."""
    enqueued, seen, url = 0, set(), list_url
    while url and url not in seen and time.monotonic() < deadline:
        seen.add(url)
        resp = requests.get(url, timeout=60)
        resp.raise_for_status()
        doc = lxml.html.fromstring(resp.content)
        for href in doc.xpath('//a[contains(concat(" ", @class, " "), " child ")]/@href'):
            celery_tasks.fetch_page.delay(urljoin(url, href))
            enqueued += 1
        nxt = doc.xpath('//a[@rel="next"]/@href')
        url = urljoin(url, nxt[0]) if nxt else None
    return enqueued


def wait_for(predicate, deadline: float, worker: subprocess.Popen) -> bool:
    while not predicate():
        if time.monotonic() >= deadline or worker.poll() is not None:
            return False
        time.sleep(0.05)
    return True


def run(args: argparse.Namespace) -> dict:
    deadline = time.monotonic() + args.timeout
    celery_tasks.app.conf.broker_url = args.redis_url
    r = redis.Redis.from_url(args.redis_url)
    prepare(args, r)
    report: dict = {
        "stored": 0,
        "meta_docs": 0,
        "wall_seconds": None,
        "startup_seconds": None,
        "errors": 0,
        "enqueued": 0,
    }
    launched = time.monotonic()
    worker = start_worker(args)
    try:
        if not wait_for(lambda: r.exists(celery_tasks.READY_KEY), deadline, worker):
            print(
                f"celery worker not ready (exit {worker.poll()}), see worker.log", file=sys.stderr
            )
            return report
        t0 = time.monotonic()
        report["startup_seconds"] = round(t0 - launched, 3)
        report["enqueued"] = produce(args.url, deadline)
        report["produce_seconds"] = round(time.monotonic() - t0, 3)

        def counts() -> tuple[int, int]:
            stored, errors = r.mget(celery_tasks.STORED_KEY, celery_tasks.ERRORS_KEY)
            return int(stored or 0), int(errors or 0)

        wait_for(lambda: sum(counts()) >= args.n, deadline, worker)
        t1 = time.monotonic()
        report["stored"], report["errors"] = counts()
        if report["stored"] >= args.n:
            report["wall_seconds"] = round(t1 - t0, 3)
            report["pages_per_second"] = round(args.n / (t1 - t0), 1)
    finally:
        stopping = time.monotonic()
        stop_worker(worker)
        report["shutdown_seconds"] = round(time.monotonic() - stopping, 3)
    # The worker is our only child: its CPU time, start-up and shutdown included.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    report["worker_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 3)
    for name in ("worker_stats.json", "mongo_count.json"):
        with contextlib.suppress(FileNotFoundError):
            report.update(json.loads((args.out / name).read_text()))
    fetch_seconds = report.pop("fetch_seconds", None)
    if report["wall_seconds"] and fetch_seconds is not None:
        # Little's law: the mean number of requests.get calls really in flight.
        report["mean_fetching"] = round(fetch_seconds / report["wall_seconds"], 1)
    if args.profile in ("local", "s3"):  # meta in a JSON Lines file
        with contextlib.suppress(FileNotFoundError), open(args.out / "meta.jsonl", "rb") as f:
            report["meta_docs"] = sum(1 for _ in f)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM from the harness still stops (and waits for) the worker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = run(args)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0 if report["stored"] >= args.n else 1


if __name__ == "__main__":
    sys.exit(main())
