"""The queue's Redis Cluster: the test cluster itself (tests/cluster.py), the client the
settings choose (scraper/distributed/connection.py), and what the cluster allows a
crawl's scripts: keys of one hash tag per call, spread over the masters by tag."""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AuthenticationError,
    ClusterCrossSlotError,
    ClusterDownError,
    CrossSlotTransactionError,
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.config import ConfigError
from scraper.distributed.connection import (
    OUTAGE,
    connect,
    is_cluster,
    is_outage,
    redis_client,
    redis_target,
)
from tests.cluster import Cluster
from tests.helpers import ROOT
from tests.netns import NetnsUnavailable, Network

if TYPE_CHECKING:
    from pathlib import Path

#: The hash tags of a crawl of spider "listing" in 16 partitions: the crawl's own
#: (partition 0) and one per other partition (scraper/distributed/keys.py).
TAGS = ["{listing}", *(f"{{listing:{k}}}" for k in range(1, 16))]
#: A script that writes one key and reads another: both must be in one slot.
SCRIPT = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])"


def cluster_client(url: str, **options: Any) -> RedisCluster:
    client = redis_client({"REDIS_URL": url}, **options)
    assert is_cluster(client)
    return client


def test_the_cluster_serves_every_slot_on_three_masters(redis_cluster: Cluster) -> None:
    assert len(redis_cluster.masters) == 3
    for port in redis_cluster.ports:
        info = redis_cluster.info(port)
        assert (info["cluster_state"], info["cluster_slots_ok"]) == ("ok", "16384")
        assert info["cluster_size"] == "3"


@deferred_f_from_coro_f
async def test_each_form_of_the_settings_reaches_its_redis(
    redis_cluster_url: str, redis_cluster: Cluster, redis_url: str
) -> None:
    nodes = redis_cluster.nodes
    forms: list[dict[str, str]] = [
        {"REDIS_URL": redis_cluster_url},
        {"REDIS_URL": redis_cluster_url + "/"},
        {"REDIS_URL": f"redis+cluster://{nodes.split(',')[1]}"},  # one node finds the rest
        {"REDIS_CLUSTER_NODES": nodes},
        {"REDIS_CLUSTER_NODES": f" {nodes.replace(',', ', ')} "},
    ]
    for n, settings in enumerate(forms):
        client = redis_client(settings)
        try:
            assert is_cluster(client), settings
            for tag in TAGS:
                await client.set(f"{tag}:form{n}", n)
            await client.initialize()
            assert len(client.get_primaries()) == 3
        finally:
            await client.aclose()
    plain = redis_client({"REDIS_URL": redis_url})
    try:
        assert isinstance(plain, Redis) and not is_cluster(plain)
        assert await plain.ping()
        assert plain.connection_pool.connection_kwargs["socket_timeout"] == 10
    finally:
        await plain.aclose()


@deferred_f_from_coro_f
async def test_cluster_urls_parse_to_nodes_credentials_and_tls() -> None:
    target = redis_target({"REDIS_URL": "rediss+cluster://me:p%40ss@a.example:7000,[::1]:7001,b/"})
    assert target is not None
    assert (target.cluster, target.tls, target.username, target.password) == (
        True,
        True,
        "me",
        "p@ss",
    )
    assert target.nodes == (("a.example", 7000), ("::1", 7001), ("b", 6379))
    assert str(target) == "rediss+cluster://me:***@a.example:7000,[::1]:7001,b/"
    assert "p%40ss" not in repr(target)
    client = connect(target)
    assert isinstance(client, RedisCluster)
    assert client.connection_kwargs["connection_class"] is SSLConnection
    await client.aclose()  # never connected; closed all the same
    # REDIS_PASSWORD: the password of REDIS_CLUSTER_NODES, and of a URL without one.
    target = redis_target({"REDIS_CLUSTER_NODES": "h1:1,h2:2", "REDIS_PASSWORD": "pw1"})
    assert target is not None and (target.nodes, target.password) == (
        (("h1", 1), ("h2", 2)),
        "pw1",
    )
    target = redis_target({"REDIS_URL": "redis://h:1/0", "REDIS_PASSWORD": "pw1"})
    assert target is not None and not target.cluster and target.password == "pw1"
    assert redis_target({"REDIS_URL": "", "REDIS_CLUSTER_NODES": None}) is None


@pytest.mark.parametrize(
    ("settings", "setting", "message"),
    [
        (
            {"REDIS_URL": "redis+cluster://:hunter22@h:1", "REDIS_CLUSTER_NODES": "h:1"},
            "REDIS_CLUSTER_NODES",
            "set REDIS_URL or REDIS_CLUSTER_NODES, not both "
            "(REDIS_URL='redis+cluster://:***@h:1', REDIS_CLUSTER_NODES='h:1')",
        ),
        (
            {"REDIS_URL": "redis+cluster://:hunter22@h:1/2"},
            "REDIS_URL",
            "REDIS_URL='redis+cluster://:***@h:1/2': a Redis Cluster has no database numbers "
            "nor options: end the URL after the last host:port",
        ),
        (
            {"REDIS_URL": "redis+cluster://:hunter22@h:port"},
            "REDIS_URL",
            "REDIS_URL='redis+cluster://:***@h:port': 'h:port' is not host:port "
            "(Port could not be cast to integer value as 'port')",
        ),
        (
            {"REDIS_URL": "redis+cluster://:hunter22@,"},
            "REDIS_URL",
            "REDIS_URL='redis+cluster://:***@,': no host:port of a cluster node",
        ),
        (
            {"REDIS_URL": "redis-cluster://:hunter22@h:1"},
            "REDIS_URL",
            "REDIS_URL='redis-cluster://:***@h:1': unknown scheme 'redis-cluster' (use "
            "redis://, rediss://, unix://, redis+cluster://, rediss+cluster://)",
        ),
        (
            {"REDIS_CLUSTER_NODES": "h:1,h:99999"},
            "REDIS_CLUSTER_NODES",
            "REDIS_CLUSTER_NODES='h:1,h:99999': 'h:99999' is not host:port "
            "(Port out of range 0-65535)",
        ),
        (
            {"REDIS_CLUSTER_NODES": "redis://:hunter22@h:1"},
            "REDIS_CLUSTER_NODES",
            "REDIS_CLUSTER_NODES is host:port,host:port (no scheme, no password: give the "
            "password as REDIS_PASSWORD, or use REDIS_URL=redis+cluster://...)",
        ),
        (
            {"REDIS_URL": "redis://:hunter22@h:1/0", "REDIS_PASSWORD": "other"},
            "REDIS_PASSWORD",
            "REDIS_URL='redis://:***@h:1/0' has a password and REDIS_PASSWORD another: "
            "give it once",
        ),
    ],
)
def test_settings_that_cannot_work_say_why_in_one_line(
    settings: dict[str, str], setting: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        redis_client(settings)
    assert (raised.value.setting, str(raised.value)) == (setting, message)
    assert "hunter22" not in str(raised.value) and "\n" not in str(raised.value)


@deferred_f_from_coro_f
async def test_scripts_run_on_the_master_of_their_hash_tag(
    redis_cluster_url: str, redis_cluster: Cluster
) -> None:
    client = cluster_client(redis_cluster_url)
    script = client.register_script(SCRIPT)
    try:
        for tag in TAGS:
            assert await script(keys=[f"{tag}:a", f"{tag}:b"], args=["x"]) == 1
        redis_cluster.flush()  # every master forgets the script: EVALSHA gets NOSCRIPT
        for tag in TAGS:  # ... and AsyncScript loads it again, on the master it needs
            assert await script(keys=[f"{tag}:a", f"{tag}:b"], args=["x"]) == 1
        assert await script(keys=["{listing:7}:a", "{listing:7}:b"], args=["x"]) == 2
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_keys_of_two_slots_in_one_call_are_refused(
    redis_cluster_url: str, redis_cluster: Cluster
) -> None:
    client = cluster_client(redis_cluster_url)
    script = client.register_script(SCRIPT)
    try:
        # A new client knows no slots yet: the first call goes to any master, and Redis
        # says CROSSSLOT (ClusterCrossSlotError, a ResponseError).
        with pytest.raises(ClusterCrossSlotError) as crossslot:
            await script(keys=["{listing}:a", "{listing:1}:b"], args=["x"])
        assert str(crossslot.value) == "Keys in request don't hash to the same slot"
        # Once it knows them, the client refuses before sending: a RedisClusterException,
        # not a RedisError.
        with pytest.raises(RedisClusterException) as refused:
            await script(keys=["{listing}:a", "{listing:1}:b"], args=["x"])
        assert str(refused.value) == "EVALSHA - all keys must map to the same key slot"
        assert not is_outage(crossslot.value) and not is_outage(refused.value)
        # A key the script builds itself, not in KEYS: Redis 7.0 lets it through when its
        # slot is on the same master, and refuses it on another: declare every key.
        away = next(
            tag for tag in TAGS if redis_cluster.master_of(tag) != redis_cluster.master_of(TAGS[0])
        )
        with pytest.raises(ResponseError, match="non local key in a cluster node script"):
            await client.eval("return redis.call('GET', ARGV[1])", 1, "{listing}:a", f"{away}:b")
        # A transaction across slots: refused by the client; in one slot, it runs.
        with pytest.raises(CrossSlotTransactionError):
            async with client.pipeline(transaction=True) as pipe:
                await pipe.set("{listing}:a", 1).incr("{listing:1}:b").execute()
        async with client.pipeline(transaction=True) as pipe:
            assert await pipe.set("{listing:2}:a", 1).incr("{listing:2}:b").execute() == [
                True,
                1,
            ]
        # A pipeline without a transaction may span slots (one batch per master)...
        async with client.pipeline(transaction=False) as pipe:
            assert await pipe.incr("{listing}:n").incr("{listing:1}:n").execute() == [1, 1]
        # ... and sends a script's EVALSHA without loading the script first: a master that
        # has not run it yet answers NOSCRIPT (redis-py 8; redis-py 7 refused scripts there).
        with pytest.raises(NoScriptError):
            async with client.pipeline(transaction=False) as pipe:
                await script(keys=["{listing:3}:a", "{listing:3}:b"], args=["x"], client=pipe)
                await pipe.execute()
    finally:
        await client.aclose()


@deferred_f_from_coro_f
async def test_one_connection_per_master_and_call_in_flight(
    redis_cluster_url: str, redis_cluster: Cluster
) -> None:
    client = cluster_client(redis_cluster_url)
    try:
        for tag in TAGS:  # one call at a time: one connection to each master
            await client.get(f"{tag}:a")
        assert sorted(len(node._connections) for node in client.get_nodes()) == [1, 1, 1]
        # Calls at once: one connection each (none waits for another), per master.
        await asyncio.gather(*(client.blpop([f"{{listing:1}}:{i}"], 0.1) for i in range(8)))
        by_port = {node.port: len(node._connections) for node in client.get_nodes()}
        assert by_port[redis_cluster.ports[redis_cluster.master_of("{listing:1}")]] == 8
    finally:
        await client.aclose()
    # Past max_connections (100 a master by default) a call fails at once, not waits.
    client = cluster_client(redis_cluster_url, max_connections=2)
    try:
        calls = (client.blpop([f"{{listing}}:{i}"], 0.1) for i in range(3))
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        refused = [o for o in outcomes if o is not None]
        assert len(refused) == 1 and isinstance(refused[0], MaxConnectionsError), outcomes
        assert is_outage(refused[0])  # a ConnectionError: the pump waits and retries
    finally:
        await client.aclose()


def test_the_partitions_spread_over_the_three_masters(redis_cluster: Cluster) -> None:
    slots = [redis_cluster.keyslot(tag) for tag in TAGS]
    assert slots == [key_slot(tag.encode()) for tag in TAGS]  # the client's own map agrees
    masters = [redis_cluster.master_of(tag) for tag in TAGS]
    # redis-cli --cluster create gives master i slots [i*16384/3, (i+1)*16384/3).
    assert masters == [slot * 3 // 16384 for slot in slots]
    # 16 partitions of "listing": 4, 5 and 7 on the three masters (3 partitions would
    # leave the first master idle: {listing}, {listing:1}, {listing:2} are on 2, 1, 2).
    assert [masters.count(i) for i in range(3)] == [4, 5, 7]
    assert sorted(set(masters[:3])) == [1, 2]


@deferred_f_from_coro_f
async def test_a_master_down_is_an_outage_then_the_cluster_heals(tmp_path: Path) -> None:
    """A cluster of its own (masters are stopped), with a password given as
    REDIS_PASSWORD: every error on the way is an outage, and none shows the password."""
    password = secrets.token_hex(8)
    settings = {"REDIS_PASSWORD": password}
    # Two retries, no backoff: the same errors as the default 10 retries, sooner.
    quick = Retry(NoBackoff(), 2)
    with Cluster(tmp_path / "cluster", password=password, node_timeout_ms=500) as cluster:
        settings["REDIS_CLUSTER_NODES"] = cluster.nodes
        down_tag = "{listing:1}"
        up_tag = next(t for t in TAGS if cluster.master_of(t) != cluster.master_of(down_tag))
        down = cluster.master_of(down_tag)
        client = cluster_client(cluster.url, retry=quick)
        unauthenticated = cluster_client(f"redis+cluster://{cluster.nodes}", retry=quick)
        fresh = redis_client(settings, retry=quick)  # first used once every master is down
        errors: list[BaseException] = []
        try:
            # No password: the client cannot map the cluster ("...: HELLO must be called
            # with the client already authenticated"), caused by an AuthenticationError.
            with pytest.raises(RedisClusterException, match="cannot be connected") as raised:
                await unauthenticated.get("{listing}:a")
            assert isinstance(raised.value.__cause__, AuthenticationError)
            await client.set(f"{down_tag}:a", 1)
            cluster.stop_master(down)
            # Its keys: the connection is refused. The other masters' keys still work
            # until the others mark it failed (cluster-node-timeout)...
            with pytest.raises(RedisConnectionError) as raised:
                await client.get(f"{down_tag}:a")
            errors.append(raised.value)
            assert await client.set(f"{up_tag}:a", 1)
            deadline = asyncio.get_running_loop().time() + 10
            while cluster.info(cluster.ports[(down + 1) % 3]).get("cluster_state") != "fail":
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            # ... then, with cluster-require-full-coverage (Redis's default), none does.
            with pytest.raises(ClusterDownError, match=r"^The cluster is down$") as raised:
                await client.get(f"{up_tag}:a")
            errors.append(raised.value)
            # Back, it serves again (empty: no persistence), through the same client.
            cluster.start_master(down)
            assert await client.get(f"{down_tag}:a") is None
            assert await client.incr(f"{up_tag}:n") == 1
            # All down: a new client cannot even find the cluster.
            cluster.stop()
            with pytest.raises(RedisClusterException, match="cannot be connected") as raised:
                await fresh.get(f"{up_tag}:a")
            assert not isinstance(raised.value, OUTAGE)  # the class alone does not say...
            errors.append(raised.value)  # ... its cause does: is_outage
        finally:
            for each in (client, unauthenticated, fresh):
                await each.aclose()
    for error in errors:
        assert is_outage(error), repr(error)
        assert password not in str(error) and password not in repr(error)


def test_the_cluster_runs_as_a_script_until_stopped(tmp_path: Path) -> None:
    """`python -m tests.cluster` (for benchmarks): prints REDIS_URL, stops on SIGTERM."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.cluster", "--dir", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("REDIS_URL=redis+cluster://127.0.0.1:"), line
        nodes = line.removeprefix("REDIS_URL=redis+cluster://")
        ports = [int(node.rsplit(":", 1)[1]) for node in nodes.split(",")]
        assert len(ports) == 3
        ping = subprocess.run(
            ["redis-cli", "-c", "-p", str(ports[0]), "SET", "{listing:3}:a", "1"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        assert ping.stdout.strip() == "OK"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    for port in ports:  # every master went with it
        down = subprocess.run(
            ["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True, timeout=10
        )
        assert "Connection refused" in down.stdout + down.stderr


def test_a_cluster_on_a_test_host_and_a_node_cut_from_one_master(tmp_path: Path) -> None:
    """On a test host (tests/netns.py): the masters announce the host's address and want
    the password; ``cut_port`` takes one node host off one master, and only that one."""
    try:
        network = Network()
    except NetnsUnavailable as exc:
        pytest.skip(f"no test hosts on this machine: {exc}")
    password = secrets.token_hex(8)
    with network:
        server, node, other = (network.add(name) for name in ("server", "node0", "node1"))
        with Cluster(tmp_path / "cluster", host=server, password=password) as cluster:
            assert cluster.url == (
                f"redis+cluster://:{password}@{server.addr}:7001,"
                f"{server.addr}:7002,{server.addr}:7003"
            )
            slots = cluster.cli("CLUSTER", "SLOTS").stdout.split()
            assert "127.0.0.1" not in slots and server.addr in slots

            def pings(host: Any) -> list[str]:
                """PING to each master from ``host``: PONG, or "" if none within 1 s."""
                answers = []
                for port in cluster.ports:
                    cli = ["redis-cli", "-h", server.addr, "-p", str(port), "-a", password]
                    result = host.run(["timeout", "1", *cli, "--no-auth-warning", "PING"])
                    answers.append(result.stdout.strip())
                return answers

            assert pings(node) == ["PONG"] * 3
            network.cut_port(node, server.addr, cluster.ports[1])
            try:
                assert pings(node) == ["PONG", "", "PONG"]
                assert pings(other) == ["PONG"] * 3
                assert cluster.info(cluster.ports[1])["cluster_state"] == "ok"
            finally:
                network.restore_ports(node)
            assert pings(node) == ["PONG"] * 3
