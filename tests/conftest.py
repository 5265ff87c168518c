"""Fixtures: real servers on free 127.0.0.1 ports, each stopped by its PID at teardown."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from scrapy.crawler import Crawler
from scrapy.settings import Settings

from scraper.spiders.listing import ListingSpider
from scraper.stores.meta import MongoMetaStore
from scraper.testsite import Listing, free_port, render_child, wait_for_port

if TYPE_CHECKING:
    from collections.abc import Iterator

# The SSRF guard (scraper/ssrf.py) refuses loopback addresses unless allowed: every test crawls
# the test site on 127.0.0.1. scraper.settings reads this when first imported (not yet: see
# project_settings()), and `scrapy crawl` subprocesses inherit it. Tests of the guard override
# ALLOWED_NETWORKS themselves.
os.environ["SCRAPER_ALLOWED_NETWORKS"] = "127.0.0.1/32"

ROOT = Path(__file__).resolve().parent.parent
#: The S3 clients a body store can use (BODY_STORE_S3_CLIENT): the S3 tests run with each.
S3_CLIENTS = ["obstore", "boto3"]
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process this test session started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Server:
    """A subprocess listening on a fixed 127.0.0.1 port; can be stopped and started again."""

    def __init__(self, args: list[str], port: int, log: Path, cwd: Path = ROOT) -> None:
        self.args, self.port, self.log, self.cwd = args, port, log, cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        wait_for_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass
class Site:
    """The running test site."""

    base: str
    server: Server

    def listing_url(self, n: int, per_page: int = 100, faults: bool = False) -> str:
        return self.base + Listing(n, per_page, faults).query(1)

    def stats(self, reset: bool = False) -> dict[str, int]:
        url = f"{self.base}/_stats" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.fixture
def nodes() -> Iterator[list[Any]]:
    """Crawler nodes a test starts (Node): stopped at teardown."""
    started: list[Any] = []
    yield started
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@contextmanager
def running_site(log: Path, *args: str) -> Iterator[Site]:
    """The project's test site in its own process, with these command-line options."""
    port = free_port()
    server = Server(
        [sys.executable, "-m", "scraper.testsite", "--port", str(port), *args], port, log
    )
    server.start()
    try:
        yield Site(f"http://127.0.0.1:{port}", server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def site(logs: Path) -> Iterator[Site]:
    """The project's test site: no latency, /fault/slow 1.5 s, /fault/huge 3 MiB."""
    with running_site(logs / "site.log", "--slow-ms", "1500", "--huge-mb", "3") as site:
        yield site


@pytest.fixture(scope="session")
def moto(logs: Path) -> Iterator[Server]:
    """moto's S3 server in its own process."""
    port = free_port()
    server = Server(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        port,
        logs / "moto.log",
    )
    server.start()
    yield server
    server.stop()


#: The environment of a `scrapy` command a test runs as a user would.
ENV = {**os.environ, "SCRAPY_SETTINGS_MODULE": "scraper.settings"}


def scrapy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scrapy", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


class Node:
    """One crawler process of a distributed crawl, logging to its own file."""

    def __init__(
        self,
        name: str,
        redis_url: str,
        tmp_path: Path,
        *settings: str,
        wrap: list[str] | None = None,
        env: dict[str, str] | None = None,
        url: str | None = None,
        spider_args: dict[str, str] | None = None,
    ) -> None:
        """``wrap``: a command the node runs under (``ip netns exec <ns>``);
        ``env``: variables added to the node's environment; ``url``: ``-a url=``;
        ``spider_args``: more ``-a name=value``."""
        self.log = tmp_path / f"{name}.log"
        self.stats_file = tmp_path / f"{name}.stats.json"
        args = [
            *(wrap or []),
            sys.executable,
            "-m",
            "scrapy",
            "crawl",
            "listing",
            "-s",
            f"REDIS_URL={redis_url}",
            "-s",
            f"BODY_STORE={tmp_path / 'bodies'}",
            "-s",
            f"META_STORE={tmp_path / 'meta.jsonl'}",
            "-s",
            "REDIS_LEASE_SECONDS=3",
            "-s",
            "CONCURRENT_REQUESTS=100",
            "-s",
            f"LOG_FILE={self.log}",
            "-s",
            "PROGRESS_INTERVAL=1",
            "-s",
            f"STATS_FILE={self.stats_file}",
        ]
        for setting in settings:
            args += ["-s", setting]
        for name, value in (({"url": url} if url else {}) | (spider_args or {})).items():
            args += ["-a", f"{name}={value}"]
        self.proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env={**ENV, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def stats(self) -> dict[str, Any]:
        """The node's final stats (STATS_FILE): it must have ended (not SIGKILLed)."""
        return json.loads(self.stats_file.read_text())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def seed(site: Site, redis_url: str, tmp_path: Path, n: int) -> None:
    result = scrapy(
        "seed", "listing", site.listing_url(n), "-s", f"REDIS_URL={redis_url}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "listing:start_urls += 1 URL(s)" in result.stdout


def wait_for_leases_of(node: Node, redis_url: str, timeout: float = 60) -> None:
    """Until the node holds leases (lease tokens are "<host>:<pid>:<id>:<n>")."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if any(
                f":{node.proc.pid}:".encode() in token for token in client.hkeys("listing:leased")
            ):
                return
            time.sleep(0.02)
    finally:
        client.close()
    raise AssertionError(f"node {node.proc.pid} never held a lease")


REFUSED_KEY_ID = "AKIAREFUSED"


@pytest.fixture(scope="session")
def s3sink(logs: Path) -> Iterator[Server]:
    """bench/s3sink.py: a fast S3-compatible server that counts who signed each request,
    and refuses the key id REFUSED_KEY_ID."""
    port = free_port()
    server = Server(
        [sys.executable, "-m", "bench.s3sink", "--port", str(port), "--refuse-key", REFUSED_KEY_ID],
        port,
        logs / "s3sink.log",
    )
    server.start()
    yield server
    server.stop()


def redis_server(port: int, log: Path, *extra: str) -> Server:
    """A redis-server (Debian's package) on 127.0.0.1:port; extra args e.g. for persistence."""
    return Server(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ],
        port,
        log,
    )


@pytest.fixture(scope="session")
def redis_session(logs: Path) -> Iterator[Server]:
    server = redis_server(free_port(), logs / "redis.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: Server) -> str:
    """The session's redis-server, emptied for this test."""
    client = redis.Redis(port=redis_session.port)
    client.flushall()
    client.close()
    return f"redis://127.0.0.1:{redis_session.port}/0"


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


@pytest.fixture
def bucket(moto: Server) -> str:
    """A new, empty bucket on the moto server."""
    name = f"bodies-{uuid.uuid4().hex[:12]}"
    s3_client(f"http://127.0.0.1:{moto.port}").create_bucket(Bucket=name)
    return name


@pytest.fixture
def mongo_uri(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Mongo URI: SCRAPER_TEST_MONGO_URI's real server, else mongomock behind pymongo's API.

    The database is new for each test and dropped after it.
    """
    db = f"scraper_test_{uuid.uuid4().hex[:10]}"
    real = os.environ.get("SCRAPER_TEST_MONGO_URI")
    if real:
        base = real.rstrip("/")
        client_factory: Any = MongoMetaStore.client_class
    else:
        import mongomock
        import mongomock.collection

        # mongomock 4.3 predates pymongo 4.11, whose ReplaceOne passes `sort` to the bulk
        # builder; accept it (we never set it) so the store's real bulk_write call runs.
        add_replace = mongomock.collection.BulkOperationBuilder.add_replace

        def add_replace_without_sort(self: Any, *args: Any, sort: Any = None, **kw: Any) -> Any:
            assert sort is None
            return add_replace(self, *args, **kw)

        monkeypatch.setattr(
            mongomock.collection.BulkOperationBuilder, "add_replace", add_replace_without_sort
        )
        base = "mongodb://127.0.0.1:27017"
        store = mongomock.store.ServerStore()  # shared by every client of this test
        client_factory = functools.partial(mongomock.MongoClient, _store=store)
        monkeypatch.setattr(MongoMetaStore, "client_class", client_factory)
    uri = f"{base}/{db}"
    yield uri
    client = client_factory(uri)
    client.drop_database(db)
    client.close()


def mongo_collection(uri: str, name: str = "pages") -> Any:
    """The collection the crawl wrote to, through the same client class as the crawl."""
    client = MongoMetaStore.client_class(uri)
    return client.get_default_database()[name]


def project_settings(**overrides: Any) -> Settings:
    settings = Settings()
    settings.setmodule("scraper.settings", priority="project")
    settings.update({"PROGRESS_INTERVAL": 0, **overrides}, priority="cmdline")
    return settings


async def crawl(
    url: str | None, spider_args: dict[str, str] | None = None, **settings: Any
) -> Crawler:
    """Run ListingSpider in this process (the test reactor) and return its crawler."""
    crawler = Crawler(ListingSpider, project_settings(**settings))
    await crawler.crawl_async(url=url, **(spider_args or {}))
    return crawler


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def local_stores(folder: Path) -> dict[str, Any]:
    """Settings that store a crawl's bodies and meta under ``folder``."""
    return {
        "BODY_STORE": str(folder / "bodies"),
        "META_STORE": str(folder / "meta.jsonl"),
        "META_STORE_SPOOL": str(folder / "spool.jsonl"),
        "BODY_STORE_SPOOL": str(folder / "body-spool"),
    }


def records(folder: Path) -> list[dict[str, Any]]:
    """The meta records of a crawl into ``folder`` (none if it never wrote its file)."""
    meta = folder / "meta.jsonl"
    return read_jsonl(meta) if meta.exists() else []


def assert_children_recorded(
    stats: dict[str, Any] | list[dict[str, Any]], child_records: int
) -> None:
    """The invariant every crawl keeps: each child it counted (``listing/children``, summed
    over nodes) ended as exactly one record, and no record was written for an uncounted one.
    A crawl stopped before the end (single node) says how many it left uncrawled
    (``listing/children_not_crawled``); a finished one leaves none."""
    every = stats if isinstance(stats, list) else [stats]
    counted = sum(s.get("listing/children", 0) for s in every)
    not_crawled = sum(s.get("listing/children_not_crawled", 0) for s in every)
    assert counted - not_crawled == child_records, (
        f"listing/children {counted} - not crawled {not_crawled} != {child_records} records"
    )
    for s in every:
        if s.get("finish_reason") == "finished":
            assert "listing/children_not_crawled" not in s, s


class Crawled(subprocess.CompletedProcess[str]):
    """A finished `scrapy crawl`: its exit code and output, and the stats it wrote."""

    stats_file: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def stats(self) -> dict[str, Any]:
        """The crawl's final stats (STATS_FILE), {} if it ended before writing them."""
        if not self.stats_file.exists():
            return {}
        return json.loads(self.stats_file.read_text())  # type: ignore[no-any-return]


def scrapy_crawl(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> Crawled:
    """Run `scrapy crawl listing ...` as a user would, from ``cwd`` with the project settings;
    its stats are read from the JSON file it writes (STATS_FILE), not from its log."""
    stats_file = cwd / ".crawl-stats" / f"{uuid.uuid4().hex[:8]}.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "crawl",
            "listing",
            *args,
            "-s",
            f"STATS_FILE={stats_file}",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "SCRAPY_SETTINGS_MODULE": "scraper.settings", **(env or {})},
    )
    crawled = Crawled(result.args, result.returncode, result.stdout, result.stderr)
    crawled.stats_file = stats_file
    return crawled


def log_stats(text: str) -> dict[str, Any]:
    """The integer and word stats of the last "Dumping Scrapy stats" block of a crawl log."""
    block = text.rsplit("Dumping Scrapy stats", 1)[1]
    return {
        key: int(value) if value.isdigit() else value.strip("'")
        for key, value in re.findall(r"'([\w/]+)': ('[\w]+'|\d+)", block)
    }


def assert_stored_once(site: Site, tmp_path: Path, n: int) -> None:
    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len({d["fingerprint"] for d in docs}) == n
    assert len(docs) == n  # one line per page: replays were compacted away
    assert {d["url"] for d in docs} == {f"{site.base}/page/{i}" for i in range(n)}
    for doc in docs:
        body = (tmp_path / "bodies" / doc["body_key"]).read_bytes()
        assert body == render_child(doc["url"].rsplit("/", 1)[1])


def wait_for_lines(path: Path, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {count} lines")
