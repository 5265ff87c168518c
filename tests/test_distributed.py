"""Distributed crawling: crawler processes sharing one crawl through a real redis-server."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import pytest
import redis

from scraper.distributed.codec import encode
from scraper.fingerprint import ListingFingerprinter
from scraper.spiders.listing import ListingSpider
from tests.helpers import (
    ENV,
    ROOT,
    Node,
    Site,
    assert_children_recorded,
    assert_stored_once,
    records,
    redis_server,
    running_site,
    scrapy,
    seed,
    wait_for_leases_of,
    wait_for_lines,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture(scope="module")
def site_50ms_latency(logs: Path) -> Iterator[Site]:
    """A test site with 50 ms latency, so that a crawl lasts long enough to be disturbed."""
    with running_site(logs / "dist-site.log", "--latency-ms", "50") as site:
        yield site


@pytest.fixture(params=["one-redis", "cluster"])
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """The test once on one redis-server, once on a 3-master Redis Cluster."""
    return str(
        request.getfixturevalue(
            "redis_url" if request.param == "one-redis" else "redis_cluster_url"
        )
    )


def test_three_nodes_share_one_crawl_and_close_by_themselves(
    site_50ms_latency: Site, any_redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    redis_url = any_redis_url
    seed(site_50ms_latency, redis_url, tmp_path, 3000)
    # Leases long enough that a node starved of CPU on a busy machine keeps its own: this
    # test asserts that nothing was reclaimed.
    nodes += [Node(f"node{i}", redis_url, tmp_path, "REDIS_LEASE_SECONDS=30") for i in range(3)]
    assert [node.wait() for node in nodes] == [0, 0, 0]

    assert_stored_once(site_50ms_latency, tmp_path, 3000)
    stats = [node.stats() for node in nodes]
    assert all(s["finish_reason"] == "finished" for s in stats)
    assert all(s["meta_store/written"] > 0 for s in stats)  # the work was shared
    assert sum(s["meta_store/written"] for s in stats) == 3000
    assert sum(s.get("distributed/reclaimed", 0) for s in stats) == 0
    assert_children_recorded(stats, len(records(tmp_path)))
    status = scrapy("status", "listing", "-s", f"REDIS_URL={redis_url}", cwd=tmp_path)
    assert "queued 0  leased 0  start_urls 0  seen (dedup) 3030" in status.stdout


def test_a_node_killed_mid_crawl_loses_nothing(
    site_50ms_latency: Site, any_redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    redis_url = any_redis_url
    seed(site_50ms_latency, redis_url, tmp_path, 3000)
    nodes += [Node(f"node{i}", redis_url, tmp_path) for i in range(3)]
    wait_for_lines(tmp_path / "meta.jsonl", 300)
    wait_for_leases_of(nodes[0], redis_url)
    os.kill(nodes[0].proc.pid, signal.SIGKILL)
    assert nodes[0].wait() == -signal.SIGKILL
    assert [node.wait() for node in nodes[1:]] == [0, 0]

    assert_stored_once(site_50ms_latency, tmp_path, 3000)
    survivors = [node.stats() for node in nodes[1:]]
    assert sum(s.get("distributed/reclaimed", 0) for s in survivors) > 0
    assert all(s["finish_reason"] == "finished" for s in survivors)
    # No children invariant: node0 was SIGKILLed mid-crawl, its stats were never dumped.


def test_redis_restart_mid_crawl(
    site_50ms_latency: Site, tmp_path: Path, nodes: list[Node], logs: Path
) -> None:
    data = tmp_path / "redis-data"
    data.mkdir()
    server = redis_server(
        logs / "redis-restart.log",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        str(data),
    )
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        seed(site_50ms_latency, url, tmp_path, 3000)
        nodes += [Node(f"node{i}", url, tmp_path) for i in range(2)]
        wait_for_lines(tmp_path / "meta.jsonl", 500)
        server.stop()
        time.sleep(2)
        server.start()
        assert [node.wait() for node in nodes] == [0, 0]
    finally:
        server.stop()
    assert_stored_once(site_50ms_latency, tmp_path, 3000)
    stats = [node.stats() for node in nodes]
    assert sum(s.get("distributed/redis_errors", 0) for s in stats) > 0  # the outage was seen
    assert "Redis unreachable" in nodes[0].log.read_text()
    assert_children_recorded(stats, len(records(tmp_path)))


def test_garbage_in_redis_is_logged_and_skipped(
    site_50ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    import pickle

    client = redis.Redis.from_url(redis_url)

    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    payload = pickle.dumps({"url": "http://x", "callback": Boom()})
    client.rpush(
        "listing:start_urls",
        "not a url",
        payload,
        "{broken json",
        json.dumps({"url": 5}),
        "x" * 2_000_000,
    )
    client.zadd("listing:sites", {"x": 0})  # a site with queued requests: these
    client.zadd(
        "listing:q:x",
        {
            b"1 " + payload: -5,
            "2 {not json": -4,
            "3 " + json.dumps({"url": "http://x", "callback": "nope"}): 1,
            "4 " + "y" * 2_000_000: -3,
        },
    )
    client.close()
    seed(site_50ms_latency, redis_url, tmp_path, 200)
    nodes.append(Node("node0", redis_url, tmp_path))
    assert nodes[0].wait() == 0

    assert not (tmp_path / "pwned").exists()
    assert_stored_once(site_50ms_latency, tmp_path, 200)
    stats = nodes[0].stats()
    assert stats["distributed/rejected/start_urls"] == 5
    assert stats["distributed/rejected/requests"] == 4
    assert nodes[0].log.read_text().count("that is not ours") == 9
    assert_children_recorded(stats, len(records(tmp_path)))


def test_bloom_filter_dedup_crawl(
    site_50ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    seed(site_50ms_latency, redis_url, tmp_path, 500)
    nodes.append(
        Node("node0", redis_url, tmp_path, "REDIS_DUPEFILTER=bloom", "REDIS_BLOOM_CAPACITY=100000")
    )
    assert nodes[0].wait() == 0
    assert_stored_once(site_50ms_latency, tmp_path, 500)
    client = redis.Redis.from_url(redis_url)
    assert client.exists("listing:bloom") and not client.exists("listing:dupefilter")
    assert int(client.get("listing:bloom_count")) == 505  # 500 children + 5 list pages
    client.close()
    assert_children_recorded(nodes[0].stats(), len(records(tmp_path)))


def test_redis_round_trips_per_page(
    site_50ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """Batched and off the hot path: well under 3 Redis round trips per page."""
    client = redis.Redis.from_url(redis_url)
    seed(site_50ms_latency, redis_url, tmp_path, 2000)
    client.config_resetstat()
    nodes.append(Node("node0", redis_url, tmp_path, "CONCURRENT_REQUESTS=500"))
    assert nodes[0].wait() == 0
    stats = client.info("commandstats")
    client.close()
    # Each script call, pipeline (MULTI) and single command from a client is one round trip;
    # the commands a script runs inside Redis are not.
    trips = sum(
        stats.get(f"cmdstat_{c}", {}).get("calls", 0)
        for c in ("evalsha", "eval", "multi", "ping", "hello", "client|setinfo")
    )
    assert_stored_once(site_50ms_latency, tmp_path, 2000)
    assert trips / 2000 < 3, trips
    assert_children_recorded(nodes[0].stats(), len(records(tmp_path)))


def test_a_list_page_already_queued_and_given_by_url_is_crawled_once(
    site_50ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """A node started with `-a url=` for a list page another node already queued: its
    start request goes through the queue's dedup, so the list page (and its chain of
    next pages) is crawled once, not once per copy."""
    url = site_50ms_latency.listing_url(3000, per_page=1000)
    client = redis.Redis.from_url(redis_url)
    spider = ListingSpider(url=url)
    request = spider.list_request(url)
    entry = ListingFingerprinter().fingerprint(request).hex()  # a list page's own
    client.zadd("listing:q:127.0.0.1", {f"1 {encode(request, spider)}": -1e12 + 1})
    client.zadd("listing:sites", {"127.0.0.1": 0})
    client.set("listing:queued", 1)
    client.sadd("listing:dupefilter", entry)
    client.set("listing:seq", 1)
    client.close()
    nodes.append(Node("node0", redis_url, tmp_path, "CONCURRENT_REQUESTS=1000", url=url))
    assert nodes[0].wait() == 0

    assert_stored_once(site_50ms_latency, tmp_path, 3000)
    stats = nodes[0].stats()
    assert stats["listing/list_pages"] == 3
    assert stats["listing/children"] == 3000
    assert_children_recorded(stats, len(records(tmp_path)))


def test_idle_nodes_ask_redis_little_and_still_take_work_at_once(
    site_50ms_latency: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """Nodes with nothing to do back off their LEASE calls (measured before: ~55 round
    trips per idle node per second, 46 of them empty LEASEs, docs/scaling.md); the
    status read still brings them work as soon as it is seeded."""
    client = redis.Redis.from_url(redis_url)
    nodes += [
        Node(f"node{i}", redis_url, tmp_path, "REDIS_WAIT_FOR_START_URLS=True") for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while client.hlen("listing:nodes") < 2:
        assert time.monotonic() < deadline, "the nodes never sent a heartbeat"
        time.sleep(0.1)
    time.sleep(2)  # past the backoff's first steps
    client.config_resetstat()
    time.sleep(5)
    stats = client.info("commandstats")
    trips = sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "multi"))
    assert trips / 2 / 5 < 10, stats  # per idle node per second

    # Enough work that one node alone needs seconds: the idle one must join within them.
    seed(site_50ms_latency, redis_url, tmp_path, 1500)
    wait_for_lines(tmp_path / "meta.jsonl", 1500, timeout=60)
    client.close()
    for node in nodes:
        node.proc.send_signal(signal.SIGTERM)  # they would wait for more start URLs
    assert [node.wait() for node in nodes] == [0, 0]
    assert_stored_once(site_50ms_latency, tmp_path, 1500)
    assert all(node.stats().get("meta_store/written", 0) > 0 for node in nodes)
    assert_children_recorded([node.stats() for node in nodes], len(records(tmp_path)))


def test_seed_and_status_commands_explain_what_they_need(tmp_path: Path) -> None:
    env_without = {k: v for k, v in ENV.items() if k != "SCRAPER_REDIS_URL"}
    result = scrapy("status", "listing", cwd=ROOT, env=env_without)
    assert result.returncode == 2
    assert "REDIS_URL is not set" in result.stderr
    result = scrapy(
        "seed", "listing", "ftp://x/", "-s", "REDIS_URL=redis://127.0.0.1:1/0", cwd=tmp_path
    )
    assert result.returncode == 2
    assert "start URL is not an http(s) URL" in result.stderr
