"""Stopping a crawl: SIGTERM once drains and exits 0; a second one stops at once.

Every crawl here is a `scrapy crawl` subprocess (as a user or scrapyd runs it) against a
test site with 500 ms latency, so that requests are in flight when the signal arrives.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest
import redis

from scraper.testsite import render_child
from tests.helpers import (
    ENV,
    Node,
    Site,
    assert_children_recorded,
    assert_stored_once,
    read_jsonl,
    records,
    running_site,
    scrapy_crawl,
    seed,
    setting_args,
    store_settings,
    wait_for_leases_of,
    wait_for_lines,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from subprocess import Popen

LATENCY_MS = 500


@pytest.fixture(scope="module")
def site_500ms_latency(logs: Path) -> Iterator[Site]:
    with running_site(logs / "shutdown-site.log", "--latency-ms", str(LATENCY_MS)) as site:
        yield site


def wait_until(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"never happened: {what} (crawl exit code {proc.poll()})")


def body_files(tmp_path: Path) -> list[Path]:
    root = tmp_path / "bodies"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def stop_within(proc: subprocess.Popen[bytes], seconds: float) -> tuple[int, float]:
    """Wait for ``proc`` to end by itself; its exit code and how long it took."""
    started = time.monotonic()
    try:
        code = proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError(f"the crawl did not stop within {seconds} s") from None
    return code, time.monotonic() - started


def popen_crawl(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    """`scrapy crawl listing <args>` started in the background, as a user would; its
    output goes to the LOG_FILE the arguments name."""
    return subprocess.Popen(
        [sys.executable, "-m", "scrapy", "crawl", "listing", *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def leases_in_redis(redis_url: str) -> tuple[int, int]:
    client = redis.Redis.from_url(redis_url)
    try:
        return client.zcard("listing:leases"), client.hlen("listing:leased")
    finally:
        client.close()


def test_sigterm_drains_a_single_node_crawl_and_exits_0(
    site_500ms_latency: Site, tmp_path: Path
) -> None:
    log = tmp_path / "crawl.log"
    settings = store_settings(
        tmp_path,
        CONCURRENT_REQUESTS=40,
        META_STORE_FLUSH_INTERVAL=2,
        LOG_FILE=log,
        STATS_FILE=tmp_path / "stats.json",
    )
    proc = popen_crawl(
        ["-a", f"url={site_500ms_latency.listing_url(2000)}", *setting_args(settings)], tmp_path
    )
    try:
        wait_until(lambda: len(body_files(tmp_path)) >= 150, "150 bodies stored", proc)
        proc.send_signal(signal.SIGTERM)
        code, seconds = stop_within(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert code == 0
    text = log.read_text()
    assert "Received SIGTERM, shutting down gracefully" in text
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["finish_reason"] == "shutdown"
    docs = read_jsonl(tmp_path / "meta.jsonl")
    stored = stats["meta_store/written"]
    assert 150 <= stored < 2000  # stopped mid-crawl...
    # ...and everything it counted as stored is there: the last batch was flushed at close.
    assert len(docs) == stored == stats["body_store/stored"] == len(body_files(tmp_path))
    assert len({d["fingerprint"] for d in docs}) == stored
    for doc in docs:
        body = (tmp_path / "bodies" / doc["body_key"]).read_bytes()
        assert body == render_child(doc["url"].rsplit("/", 1)[1])
    # No temporary or spooled leftovers.
    assert not [p for p in tmp_path.rglob("*.tmp")]
    assert not (tmp_path / "meta-spool.jsonl").exists()
    assert seconds < 30
    # What it found and left uncrawled is counted and said (a single node's queue is in
    # the process: the crawl has to be started again).
    assert_children_recorded(stats, len(docs))
    assert stats["listing/children_not_crawled"] > 0
    assert (
        f"{stats['listing/children_not_crawled']} discovered children were not crawled: "
        "the crawl stopped (shutdown) first" in text
    )


def test_sigterm_hands_a_nodes_leases_back_at_once(
    site_500ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    seed(site_500ms_latency, redis_url, tmp_path, 800)
    # Leases long enough that none expires on a busy machine: any reclaim below would be
    # one that this node failed to hand back.
    nodes.append(
        Node("node0", redis_url, tmp_path, "CONCURRENT_REQUESTS=40", "REDIS_LEASE_SECONDS=60")
    )
    wait_for_lines(tmp_path / "meta.jsonl", 100)
    wait_for_leases_of(nodes[0], redis_url)
    nodes[0].proc.send_signal(signal.SIGTERM)
    code, seconds = stop_within(nodes[0].proc, 30)

    assert code == 0 and seconds < 30
    assert leases_in_redis(redis_url) == (0, 0)  # acknowledged or handed back, none left
    first = nodes[0].stats()
    assert first["finish_reason"] == "shutdown"
    assert first["distributed/released"] > 0  # leased, not started, handed back
    assert first["meta_store/written"] < 800

    nodes.append(
        Node("node1", redis_url, tmp_path, "CONCURRENT_REQUESTS=100", "REDIS_LEASE_SECONDS=60")
    )
    assert nodes[1].wait() == 0
    second = nodes[1].stats()
    assert second["finish_reason"] == "finished"
    assert second.get("distributed/reclaimed", 0) == 0  # nothing waited for a lease to expire
    assert_stored_once(site_500ms_latency, tmp_path, 800)
    # Nothing stored by the first node was crawled again.
    assert first["meta_store/written"] + second["meta_store/written"] == 800
    # Two crawls into one store: what each counted, summed, is what the store holds.
    assert_children_recorded([first, second], len(records(tmp_path)))


def test_a_second_sigterm_stops_at_once_and_leases_expire(
    site_500ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    seed(site_500ms_latency, redis_url, tmp_path, 800)
    nodes.append(Node("node0", redis_url, tmp_path, "CONCURRENT_REQUESTS=40"))
    wait_for_lines(tmp_path / "meta.jsonl", 100)
    wait_for_leases_of(nodes[0], redis_url)
    nodes[0].proc.send_signal(signal.SIGTERM)
    time.sleep(LATENCY_MS / 1000 / 2)  # the first one is being handled: requests in flight
    nodes[0].proc.send_signal(signal.SIGTERM)
    stop_within(nodes[0].proc, 10)

    assert "Received SIGTERM twice, forcing unclean shutdown" in nodes[0].log.read_text()
    leases, leased = leases_in_redis(redis_url)
    assert leases > 0 and leased == leases  # not handed back: they must expire

    nodes.append(
        Node("node1", redis_url, tmp_path, "CONCURRENT_REQUESTS=100", "REDIS_LEASE_SECONDS=60")
    )  # its own leases never expire: what it
    # reclaims is the first node's
    assert nodes[1].wait() == 0
    second = nodes[1].stats()
    assert second["finish_reason"] == "finished"
    assert second["distributed/reclaimed"] > 0
    assert_stored_once(site_500ms_latency, tmp_path, 800)
    assert leases_in_redis(redis_url) == (0, 0)
    # No children invariant: node0 stopped at once (a second SIGTERM), before flushing its
    # records or dumping its stats.


def start_crawl_with_jobdir(site: Site, tmp_path: Path, n: int) -> tuple[list[str], Popen[bytes]]:
    """A `scrapy crawl` of ``n`` children (50 per list page) with JOBDIR, logging to
    first.log; its arguments, to run it again, and its process."""
    args = [
        "-a",
        f"url={site.listing_url(n, per_page=50)}",
        *setting_args(store_settings(tmp_path, CONCURRENT_REQUESTS=40, JOBDIR=tmp_path / "job")),
    ]
    proc = popen_crawl([*args, "-s", f"LOG_FILE={tmp_path / 'first.log'}"], tmp_path)
    return args, proc


def test_jobdir_resumes_a_crawl_stopped_with_sigterm_and_fetches_nothing_twice(
    site_500ms_latency: Site, tmp_path: Path
) -> None:
    site = site_500ms_latency
    site.stats(reset=True)
    args, proc = start_crawl_with_jobdir(site, tmp_path, 600)
    try:
        wait_until(lambda: len(body_files(tmp_path)) >= 100, "100 bodies stored", proc)
        proc.send_signal(signal.SIGTERM)
        code, _ = stop_within(proc, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert code == 0
    stored_first = len(records(tmp_path))
    assert 100 <= stored_first < 600
    said = (tmp_path / "first.log").read_text()
    assert "saved them in JOBDIR" in said and "Run the same command again to resume" in said

    resumed = scrapy_crawl(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert resumed.stats["finish_reason"] == "finished"
    assert resumed.stats["meta_store/written"] == 600 - stored_first
    assert_stored_once(site, tmp_path, 600)
    # Each of the 600 children and 12 list pages was fetched once, across both runs.
    assert site.stats()["hits"] == 600 + 12


def test_jobdir_of_a_killed_crawl_is_refused_with_one_line(
    site_500ms_latency: Site, tmp_path: Path
) -> None:
    args, proc = start_crawl_with_jobdir(site_500ms_latency, tmp_path, 600)
    try:
        wait_until(lambda: len(body_files(tmp_path)) >= 50, "50 bodies stored", proc)
    finally:
        proc.kill()  # SIGKILL: Scrapy never saves the queue, only what it had seen
        proc.wait(10)
    stored = len(records(tmp_path))

    again = scrapy_crawl(args, cwd=tmp_path)
    # Resumed, it would skip every page the killed crawl had seen and end "finished"
    # with pages missing; it stops and says why instead.
    assert again.returncode == 1
    assert "JOBDIR unusable, crawl stopped" in again.output
    assert "Start again with a new JOBDIR" in again.output
    assert again.stats["finish_reason"] == "jobdir_unusable"
    assert len(records(tmp_path)) == stored
