"""The Celery app and the one task of the baseline that ``bench.celery_gevent`` runs.

One task per child URL: ``requests.get(url)``, then the body to S3 (profiles ``s3`` and
``services``) or a file, and the metadata to MongoDB (``services``) or a JSON Lines
file, one write each, no batching; then an INCR
on a Redis counter so the producer knows when every page is stored.

The worker is started as ``celery -A bench.celery_tasks worker --pool=gevent ...``:
Celery's entry point monkey-patches with gevent before it imports this module, so the
module-level imports of requests, boto3, pymongo and redis get the patched socket.
The stores are configured through environment variables (``BENCH_*``, see ``_env``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
import requests
from celery import Celery, signals

STORED_KEY = "bench:celery:stored"
ERRORS_KEY = "bench:celery:errors"
READY_KEY = "bench:celery:ready"


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"BENCH_{name}", default)


app = Celery("bench_celery", broker=_env("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    broker_connection_retry_on_startup=True,  # only silences a deprecation warning
    task_ignore_result=True,  # no result backend: nobody reads task results
)

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.I | re.S)

# Per worker process: one Redis client, and the stores (set up on worker_init).
_redis = redis.Redis.from_url(_env("REDIS_URL", "redis://127.0.0.1:6379/0"))
_stores: dict[str, Any] = {}
_gauge = {
    "in_flight": 0,
    "max_in_flight": 0,
    "fetching": 0,
    "max_fetching": 0,
    "fetch_seconds": 0.0,
}


@signals.worker_init.connect
def _open_stores(**_: Any) -> None:
    if _env("PROFILE") == "local":
        Path(_env("OUT"), "bodies").mkdir(parents=True, exist_ok=True)
        return
    import boto3

    # One client per worker process, default botocore config (max_pool_connections=10).
    _stores["s3"] = boto3.client("s3", endpoint_url=_env("S3_ENDPOINT"), region_name="us-east-1")
    if _env("PROFILE") == "s3":  # bodies to S3, meta to a JSON Lines file
        return
    if _env("MONGO_URI"):
        import pymongo

        client = pymongo.MongoClient(_env("MONGO_URI"))
    else:
        import mongomock

        client = mongomock.MongoClient()
    _stores["meta"] = client["bench"]["celery_pages"]


@signals.worker_ready.connect
def _announce_ready(**_: Any) -> None:
    _redis.set(READY_KEY, "1")


@signals.task_failure.connect
def _count_failure(**_: Any) -> None:
    _redis.incr(ERRORS_KEY)


@signals.worker_shutdown.connect
def _report(**_: Any) -> None:
    out = Path(_env("OUT"))
    stats = {k: _gauge[k] for k in ("max_in_flight", "max_fetching", "fetch_seconds")}
    (out / "worker_stats.json").write_text(json.dumps(stats) + "\n")
    if "meta" in _stores:
        count = _stores["meta"].count_documents({})
        (out / "mongo_count.json").write_text(json.dumps({"meta_docs": count}) + "\n")


def _track(name: str, delta: int) -> None:
    # Greenlets only switch on I/O, so these plain counters need no lock.
    _gauge[name] += delta
    _gauge[f"max_{name}"] = max(_gauge[f"max_{name}"], _gauge[name])


@app.task
def fetch_page(url: str) -> None:
    """Fetch one child page, store its body and its metadata, count it as stored."""
    _track("in_flight", 1)
    try:
        _track("fetching", 1)
        started = time.monotonic()
        try:
            resp = requests.get(url, timeout=60)
        finally:
            _track("fetching", -1)
            _gauge["fetch_seconds"] += time.monotonic() - started
        body = resp.content
        key = hashlib.sha1(url.encode()).hexdigest()
        title = _TITLE.search(body)
        meta = {
            "url": url,
            "status": resp.status_code,
            "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "title": title.group(1).decode(resp.encoding or "utf-8", "replace") if title else None,
            "fetched_at": datetime.now(UTC).isoformat(),
        }
        out = Path(_env("OUT"))
        if _env("PROFILE") == "local":
            meta["body_key"] = f"bodies/{key}"
            (out / meta["body_key"]).write_bytes(body)
        else:
            meta["body_key"] = f"celery/{key}"
            _stores["s3"].put_object(
                Bucket=_env("BUCKET"),
                Key=meta["body_key"],
                Body=body,
                ContentType=resp.headers.get("Content-Type", "application/octet-stream"),
            )
        if _env("PROFILE") == "services":
            _stores["meta"].replace_one({"_id": url}, meta, upsert=True)
        else:
            with open(out / "meta.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(meta) + "\n")
        _redis.incr(STORED_KEY)
    finally:
        _track("in_flight", -1)
