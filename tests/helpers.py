"""The test kit: how a test runs a crawl, sets its stores, starts nodes and seeds Redis.

Plain functions and classes that test modules import (tests/conftest.py holds only the
fixtures, built from these); the servers themselves are started by bench/servers.py,
which the benchmark shares.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from scrapy.crawler import Crawler
from scrapy.settings import Settings

from bench import servers
from bench.servers import ROOT, Server, redis_server, site_server, stop
from scraper.spiders.listing import ListingSpider
from scraper.stores.meta import MongoMetaStore
from scraper.testsite import Listing, host_addresses, render_child

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["ROOT", "Server", "redis_server", "stop"]  # re-exported for the tests

#: The S3 clients a body store can use (BODY_STORE_S3_CLIENT): the S3 tests run with each.
S3_CLIENTS = ["obstore", "boto3"]
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}
#: The key id the session's S3 sink refuses (conftest.py's s3sink fixture).
REFUSED_KEY_ID = "AKIAREFUSED"


@dataclass
class Site:
    """The running test site; with ``hosts``, also on those loopback addresses (``--hosts``:
    127.0.0.2 onwards, the same port), each a site of its own."""

    base: str
    server: Server
    hosts: list[str] = field(default_factory=list)

    def listing_url(self, n: int, per_page: int = 100, faults: bool = False) -> str:
        return self.base + Listing(n, per_page, faults).query(1)

    def host_base(self, host: str) -> str:
        return f"http://{host}:{self.server.port}"

    def listing_urls(
        self, n: int, per_page: int = 100, hosts: list[str] | None = None
    ) -> list[str]:
        """The first list page of the same listing on each host (all of them by default)."""
        return [self.host_base(h) + Listing(n, per_page).query(1) for h in hosts or self.hosts]

    def write_urls_file(
        self, path: Path, n: int, per_page: int = 100, hosts: list[str] | None = None
    ) -> Path:
        """A urls_file (``-a urls_file=``) of listing_urls, one a line."""
        path.write_text("".join(f"{url}\n" for url in self.listing_urls(n, per_page, hosts)))
        return path

    def stats(self, reset: bool = False) -> dict[str, int]:
        return self._get("/_stats", reset)  # type: ignore[no-any-return]

    def host_stats(self, reset: bool = False) -> dict[str, dict[str, float]]:
        """Per host (address): hits (429s included), refused (429s), max_in_flight,
        first and last arrival (time.time()), max_per_second (most in any 1 s window)."""
        return self._get("/_hosts", reset)  # type: ignore[no-any-return]

    def _get(self, path: str, reset: bool) -> Any:
        url = f"{self.base}{path}" + ("?reset=1" if reset else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())


@contextmanager
def running_site(log: Path, *args: str, hosts: int = 0) -> Iterator[Site]:
    """The project's test site in its own process, with these command-line options; on
    ``hosts`` more loopback addresses too (crawl them with MANY_SITES allowed)."""
    server = site_server(log, *args, *(("--hosts", str(hosts)) if hosts else ()))
    try:
        yield Site(server.url, server, host_addresses(hosts))
    finally:
        server.stop()


#: The many_sites fixture (tests/conftest.py): this many hosts, one slow (2 s), one that
#: answers 429 with Retry-After: 1 beyond LIMIT_RPS requests a second.
MANY_HOSTS = 20
SLOW_HOST = "127.0.0.2"
LIMITED_HOST = "127.0.0.3"
LIMIT_RPS = 10
#: The setting a crawl of the test site's many hosts needs: the SSRF guard allows only
#: 127.0.0.1 in tests (below), and the hosts are 127.0.0.2 onwards.
MANY_SITES = {"ALLOWED_NETWORKS": ["127.0.0.0/8"]}


#: The SSRF guard (scraper/ssrf.py) refuses loopback addresses unless allowed, and every
#: test crawls the test site on 127.0.0.1: set here, before ENV copies the environment
#: (scraper.settings reads it when first imported; `scrapy` subprocesses inherit it).
#: Tests of the guard override ALLOWED_NETWORKS themselves.
os.environ["SCRAPER_ALLOWED_NETWORKS"] = "127.0.0.1/32"
#: The environment of a `scrapy` command a test runs as a user would.
ENV = {**os.environ, "SCRAPY_SETTINGS_MODULE": "scraper.settings"}


def scrapy(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a `scrapy` command as a user would (the project's settings, or ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "scrapy", *args],
        cwd=cwd,
        env=ENV if env is None else env,
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
        node_settings = {
            "REDIS_URL": redis_url,
            "BODY_STORE": tmp_path / "bodies",
            "META_STORE": tmp_path / "meta.jsonl",
            "REDIS_LEASE_SECONDS": 3,
            "CONCURRENT_REQUESTS": 100,
            "LOG_FILE": self.log,
            "PROGRESS_INTERVAL": 1,
            "STATS_FILE": self.stats_file,
        }
        args = [
            *(wrap or []),
            *(sys.executable, "-m", "scrapy", "crawl", "listing"),
            *setting_args(node_settings),
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


def sync_redis(redis_url: str) -> Any:
    """A synchronous client of one Redis or (``redis+cluster://h:p,...``) a cluster."""
    if not redis_url.startswith("redis+cluster://"):
        return redis.Redis.from_url(redis_url)
    from redis.cluster import ClusterNode, RedisCluster

    hosts = redis_url.split("://", 1)[1].rsplit("@", 1)[-1].strip("/")
    password = (
        redis_url.split("://", 1)[1].rsplit("@", 1)[0].lstrip(":") if "@" in redis_url else None
    )
    nodes = [ClusterNode(h, int(p)) for h, p in (item.rsplit(":", 1) for item in hosts.split(","))]
    return RedisCluster(startup_nodes=nodes, password=password)


def wait_for_leases_of(node: Node, redis_url: str, timeout: float = 60) -> None:
    """Until the node holds leases (lease tokens are "<partition>/<host>:<pid>:<id>:<n>"),
    in any partition."""
    client = sync_redis(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for key in client.scan_iter(match="*leased", count=1000):
                if any(f":{node.proc.pid}:".encode() in t for t in client.hkeys(key)):
                    return
            time.sleep(0.02)
    finally:
        client.close()
    raise AssertionError(f"node {node.proc.pid} never held a lease")


def s3_client(endpoint: str) -> Any:
    """A boto3 client of the test S3 server at ``endpoint``, with the tests' keys."""
    return servers.s3_client(endpoint, S3_CREDENTIALS)


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


def store_settings(folder: Path, **overrides: Any) -> dict[str, Any]:
    """The settings of a crawl's stores, every file under ``folder``: bodies in
    ``bodies/``, meta in ``meta.jsonl``, and both spools (``meta-spool.jsonl``,
    ``body-spool/``) there too; ``overrides`` name another store (``BODY_STORE=s3://...``,
    ``META_STORE=mongodb://...``, see s3_store) or add settings. The spools are always set:
    the project's (data/...) are relative to the working directory, the checkout for a
    crawl in the test process."""
    return {
        "BODY_STORE": str(folder / "bodies"),
        "META_STORE": str(folder / "meta.jsonl"),
        "META_STORE_SPOOL": str(folder / "meta-spool.jsonl"),
        "BODY_STORE_SPOOL": str(folder / "body-spool"),
        **overrides,
    }


def s3_store(
    endpoint: str,
    bucket: str,
    prefix: str = "",
    client: str | None = None,
    credentials: Mapping[str, str] = S3_CREDENTIALS,
) -> dict[str, Any]:
    """The settings of a body store in S3 at ``endpoint`` (moto, the sink, a fault proxy):
    ``s3://bucket/prefix``, with BODY_STORE_S3_CLIENT ``client`` if given."""
    return {
        "BODY_STORE": f"s3://{bucket}/{prefix}",
        "AWS_ENDPOINT_URL": endpoint,
        **({"BODY_STORE_S3_CLIENT": client} if client else {}),
        "AWS_REGION_NAME": "us-east-1",
        **credentials,
    }


def setting_args(settings: Mapping[str, Any]) -> list[str]:
    """``-s NAME=VALUE`` for each setting: the command line of `scrapy crawl` or `replay`."""
    return [arg for name, value in settings.items() for arg in ("-s", f"{name}={value}")]


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
