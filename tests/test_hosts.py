"""Crawler nodes on separate hosts (network namespaces, tests/netns.py) sharing one Redis.

One host runs redis-server and the test site; three hosts run one crawler node each and
reach both by the server host's address, never 127.0.0.1. The partition test unplugs a
node's host for longer than the lease time while it has requests in flight.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from scraper.distributed.keys import Keys, partition_of
from scraper.distributed.queue import CLUSTER_PARTITIONS
from tests.cluster import Cluster
from tests.helpers import Node, assert_children_recorded, assert_stored_once, records, stop
from tests.netns import SUBNET, Host, NetnsUnavailable, Network

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.timeout(400)

REDIS_PORT, SITE_PORT = 6379, 8080
#: Redis on a network address wants a password (or it refuses other hosts: protected mode).
PASSWORD = secrets.token_hex(8)
#: The nodes' SSRF guard allows the test hosts' network (and nothing on 127.0.0.1).
NODE_ENV = {"SCRAPER_ALLOWED_NETWORKS": f"{SUBNET}.0/24"}


@dataclass
class Hosts:
    network: Network
    server: Host
    nodes: list[Host]

    @property
    def redis_url(self) -> str:
        return f"redis://:{PASSWORD}@{self.server.addr}:{REDIS_PORT}/0"

    def redis(self, *args: str) -> str:
        """A redis-cli command, run on the server host."""
        result = self.server.run(
            [
                "redis-cli",
                "-h",
                self.server.addr,
                "-p",
                str(REDIS_PORT),
                "--no-auth-warning",
                "-a",
                PASSWORD,
                *args,
            ]
        )
        assert result.returncode == 0, result.stderr
        return result.stdout


@pytest.fixture(scope="module")
def hosts(logs: Path) -> Iterator[Hosts]:
    """The server host (redis-server) and three node hosts; all removed at the end."""
    try:
        network = Network()
    except NetnsUnavailable as exc:
        pytest.skip(f"no test hosts on this machine: {exc}")
    redis = None
    try:
        server = network.add("server")
        nodes = [network.add(f"node{i}") for i in range(3)]
        with (logs / "hosts-redis.log").open("ab") as log:
            redis = server.popen(
                [
                    "redis-server",
                    "--bind",
                    server.addr,
                    "--port",
                    str(REDIS_PORT),
                    "--requirepass",
                    PASSWORD,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        nodes[0].wait_for_port(server.addr, REDIS_PORT)
        yield Hosts(network, server, nodes)
    finally:
        if redis is not None:
            stop(redis)
        network.close()


@dataclass
class NetSite:
    base: str

    def listing_url(self, n: int) -> str:
        return f"{self.base}/list?n={n}&per_page=100&page=1"


@pytest.fixture
def site_on(hosts: Hosts, logs: Path) -> Iterator[Callable[[int], NetSite]]:
    """Start the test site on the server host with a given latency (one per test)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(latency_ms: int) -> NetSite:
        with (logs / "hosts-site.log").open("ab") as log:
            started.append(
                hosts.server.popen(
                    [
                        sys.executable,
                        "-m",
                        "scraper.testsite",
                        "--host",
                        hosts.server.addr,
                        "--port",
                        str(SITE_PORT),
                        "--latency-ms",
                        str(latency_ms),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        hosts.nodes[0].wait_for_port(hosts.server.addr, SITE_PORT)
        return NetSite(f"http://{hosts.server.addr}:{SITE_PORT}")

    hosts.redis("FLUSHALL")
    yield start
    for proc in started:
        stop(proc)


def node_on(
    host: Host,
    hosts: Hosts,
    tmp_path: Path,
    *settings: str,
    clock: str | None = None,
    redis_url: str | None = None,
) -> Node:
    """A crawler node on ``host``; ``clock`` ("+10m") sets its clock off by libfaketime."""
    env = dict(NODE_ENV)
    if clock:
        # Preloaded into the node itself (the `faketime` command would fork it, and the
        # PID the test kills would not be the node's). Wall clock only: the monotonic
        # clock has no meaning across machines anyway.
        env.update(LD_PRELOAD=str(libfaketime()), FAKETIME=clock, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return Node(
        host.name,
        redis_url or hosts.redis_url,
        tmp_path,
        *settings,
        wrap=["ip", "netns", "exec", host.ns],
        env=env,
    )


def libfaketime() -> Path:
    """Debian's libfaketime (package faketime), or skip the test saying so."""
    for path in Path("/usr/lib").glob("*/faketime/libfaketime.so.1"):
        return path
    pytest.skip("libfaketime is not installed (Debian package faketime; bin/test installs it)")


def seed(hosts: Hosts, site: NetSite, n: int, tmp_path: Path, redis_url: str | None = None) -> None:
    """`scrapy seed` from a node host, over the network."""
    result = hosts.nodes[0].run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "seed",
            "listing",
            site.listing_url(n),
            "-s",
            f"REDIS_URL={redis_url or hosts.redis_url}",
        ],
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "listing:start_urls += 1 URL(s)" in result.stdout


def test_three_hosts_crawl_one_listing_exactly_once(
    hosts: Hosts,
    site_on: Callable[[int], NetSite],
    tmp_path: Path,
    nodes: list[Node],
) -> None:
    site = site_on(50)
    # Nodes first, then the seed: every node is waiting when the work arrives.
    nodes += [
        node_on(host, hosts, tmp_path, "REDIS_LEASE_SECONDS=30", "REDIS_IDLE_TIMEOUT=60")
        for host in hosts.nodes
    ]
    seed(hosts, site, 3000, tmp_path)
    assert [node.wait() for node in nodes] == [0, 0, 0]

    assert_stored_once(site, tmp_path, 3000)  # type: ignore[arg-type]
    stats = [node.stats() for node in nodes]
    assert all(s["finish_reason"] == "finished" for s in stats)
    assert all(s["meta_store/written"] > 0 for s in stats), stats  # every host did some
    assert sum(s["meta_store/written"] for s in stats) == 3000
    assert sum(s.get("distributed/reclaimed", 0) for s in stats) == 0
    assert_children_recorded(stats, len(records(tmp_path)))
    # Nothing went through this machine's loopback: every node used the server's address.
    for node in nodes:
        log = node.log.read_text()
        assert f"on redis://:***@{hosts.server.addr}:{REDIS_PORT}/0" in log
        assert "127.0.0.1" not in log
        assert PASSWORD not in log


def leases_of(hosts: Hosts, node: Node) -> int:
    """How many leases the node holds now (tokens are "<host>:<pid>:<id>:<n>")."""
    return sum(
        f":{node.proc.pid}:" in token for token in hosts.redis("HKEYS", "listing:leased").split()
    )


def slow_nodes(
    hosts: Hosts, tmp_path: Path, lease: int, redis_url: str | None = None
) -> list[Node]:
    """A node on each node host, for the partition tests: leases of ``lease`` seconds,
    20 requests in flight (with the site's 1 s per page: ~60 pages/s, so that a crawl of
    1,200 pages outlasts the cut, and the cut node has requests in flight when it comes)."""
    return [
        node_on(
            host,
            hosts,
            tmp_path,
            f"REDIS_LEASE_SECONDS={lease}",
            "CONCURRENT_REQUESTS=20",
            "REDIS_IDLE_TIMEOUT=60",
            redis_url=redis_url,
        )
        for host in hosts.nodes
    ]


def test_a_partitioned_node_loses_its_leases_and_rejoins_cleanly(
    hosts: Hosts,
    site_on: Callable[[int], NetSite],
    tmp_path: Path,
    nodes: list[Node],
) -> None:
    lease = 4
    site = site_on(1000)
    nodes += slow_nodes(hosts, tmp_path, lease)
    seed(hosts, site, 1200, tmp_path)
    cut_node, cut_host = nodes[0], hosts.nodes[0]
    deadline = time.monotonic() + 60
    while leases_of(hosts, cut_node) < 10:
        assert time.monotonic() < deadline, "the node never held leases"
        time.sleep(0.1)
    hosts.network.cut(cut_host)
    try:
        held_at_cut = leases_of(hosts, cut_node)  # frozen: the node cannot reach Redis
        # Longer than the lease, and than the time the other nodes take to notice.
        time.sleep(3 * lease)
        assert leases_of(hosts, cut_node) == 0  # all reclaimed by the others
    finally:
        hosts.network.restore(cut_host)
    assert [node.wait() for node in nodes] == [0, 0, 0]  # the cut node too: it rejoined

    assert_stored_once(site, tmp_path, 1200)  # type: ignore[arg-type]
    cut, *others = [node.stats() for node in nodes]
    assert cut["finish_reason"] == "finished"
    assert sum(s.get("distributed/reclaimed", 0) for s in others) >= held_at_cut
    # Its requests in flight during the cut were finished and stored again; their
    # acknowledgements came late, for leases that were no longer its own: refused.
    assert cut.get("distributed/ack_refused", 0) > 0, cut
    assert "late acknowledgements refused" in cut_node.log.read_text()
    assert cut.get("distributed/leases_lost", 0) > 0
    assert "were reclaimed by other nodes" in cut_node.log.read_text()
    assert_children_recorded([cut, *others], len(records(tmp_path)))


def test_nodes_with_clocks_minutes_off_steal_nothing_and_keep_no_dead_lease(
    hosts: Hosts,
    site_on: Callable[[int], NetSite],
    tmp_path: Path,
    nodes: list[Node],
) -> None:
    """Lease deadlines are Redis's clock (TIME in the scripts), never a node's: a node
    10 minutes ahead does not take live leases for expired ones, and the leases of a
    node 10 minutes behind that dies are reclaimed after the lease time, not 10 min."""
    lease = 10
    site = site_on(200)
    clocks = ["+10m", "-10m", None]
    nodes += [
        node_on(
            host,
            hosts,
            tmp_path,
            f"REDIS_LEASE_SECONDS={lease}",
            "CONCURRENT_REQUESTS=20",
            "REDIS_IDLE_TIMEOUT=60",
            clock=clock,
        )
        for host, clock in zip(hosts.nodes, clocks, strict=True)
    ]
    seed(hosts, site, 1200, tmp_path)
    ahead, behind, _ = nodes
    deadline = time.monotonic() + 60
    while leases_of(hosts, behind) < 10:
        assert time.monotonic() < deadline, "the node never held leases"
        time.sleep(0.1)
    behind.proc.kill()
    assert behind.wait() == -signal.SIGKILL
    killed_at = time.monotonic()
    dead_leases = leases_of(hosts, behind)
    assert dead_leases > 0
    assert [ahead.wait(), nodes[2].wait()] == [0, 0]

    # The clocks really were off (log lines carry the node's own time).
    for node, offset in ((ahead, 600), (behind, -600)):
        first = node.log.read_text().split(" [", 1)[0]
        skew = (
            datetime.strptime(first, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
            - time.time()
        )
        assert abs(skew - offset) < 120, (node.log, skew)
    assert_stored_once(site, tmp_path, 1200)  # type: ignore[arg-type]
    survivors = [ahead.stats(), nodes[2].stats()]
    # Exactly the dead node's leases were reclaimed: none of a live node was stolen.
    assert sum(s.get("distributed/reclaimed", 0) for s in survivors) == dead_leases
    assert time.monotonic() - killed_at < lease + 60  # not 10 minutes
    # No children invariant: the node behind was SIGKILLed mid-crawl, its stats never dumped.


def test_a_node_cut_off_from_one_shard_of_a_cluster_loses_its_leases_there_and_rejoins(
    hosts: Hosts,
    site_on: Callable[[int], NetSite],
    tmp_path: Path,
    nodes: list[Node],
) -> None:
    """The partition test on a 3-master Redis Cluster, the node cut off from one master
    only: the one holding the site's partition (its queue, leases and dedup). Its leases
    there are reclaimed by the others; it rejoins and the crawl ends exactly once."""
    lease = 4
    site = site_on(1000)
    with Cluster(tmp_path / "cluster", host=hosts.server, password=PASSWORD) as cluster:
        partition = partition_of(hosts.server.addr, CLUSTER_PARTITIONS)
        leased = Keys.of("listing", partition, cluster=True).leased
        shard_port = cluster.ports[cluster.master_of(leased)]

        def leases_there(node: Node) -> int:
            tokens = cluster.cli("HKEYS", leased, port=shard_port).stdout.split()
            return sum(f":{node.proc.pid}:" in token for token in tokens)

        nodes += slow_nodes(hosts, tmp_path, lease, cluster.url)
        seed(hosts, site, 1200, tmp_path, cluster.url)
        cut_node, cut_host = nodes[0], hosts.nodes[0]
        deadline = time.monotonic() + 60
        while leases_there(cut_node) < 10:
            assert time.monotonic() < deadline, "the node never held leases"
            time.sleep(0.1)
        hosts.network.cut_port(cut_host, hosts.server.addr, shard_port)
        try:
            held_at_cut = leases_there(cut_node)
            time.sleep(3 * lease)
            assert leases_there(cut_node) == 0  # all reclaimed by the others
        finally:
            hosts.network.restore_ports(cut_host)
        assert [node.wait() for node in nodes] == [0, 0, 0]  # the cut node too

    assert_stored_once(site, tmp_path, 1200)  # type: ignore[arg-type]
    cut, *others = [node.stats() for node in nodes]
    assert cut["finish_reason"] == "finished"
    assert sum(s.get("distributed/reclaimed", 0) for s in others) >= held_at_cut
    # It learnt that those leases were no longer its own: refused late acknowledgements
    # (requests that finished during the cut), or leases found lost when it extended them.
    assert cut.get("distributed/ack_refused", 0) + cut.get("distributed/leases_lost", 0) > 0
    assert_children_recorded([cut, *others], len(records(tmp_path)))
    for node in nodes:
        assert PASSWORD not in node.log.read_text()
