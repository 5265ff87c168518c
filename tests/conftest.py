"""Fixtures only: real servers on 127.0.0.1, each stopped by its PID at teardown.

What a test imports (the crawl runner, store settings, nodes, seeding) is in
tests/helpers.py; how a server is started, in bench/servers.py.
"""

from __future__ import annotations

import os
import uuid
from typing import TYPE_CHECKING, Any

import pytest
import redis

from bench.servers import Server, moto_server, redis_server, s3sink_server, use_mongomock
from scraper.stores.meta import MongoMetaStore
from tests.cluster import Cluster
from tests.helpers import (
    LIMIT_RPS,
    LIMITED_HOST,
    MANY_HOSTS,
    REFUSED_KEY_ID,
    SLOW_HOST,
    Node,
    Site,
    running_site,
    s3_client,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# SCRAPER_ALLOWED_NETWORKS (the test site on 127.0.0.1) is set by tests.helpers, imported
# above, before it copies the environment into ENV.


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Crawler nodes a test starts (Node): stopped at teardown."""
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


@pytest.fixture(scope="session")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="session")
def site(logs: Path) -> Iterator[Site]:
    """The project's test site: no latency, /fault/slow 1.5 s, /fault/huge 3 MiB."""
    with running_site(logs / "site.log", "--slow-ms", "1500", "--huge-mb", "3") as site:
        yield site


@pytest.fixture(scope="session")
def many_sites(logs: Path) -> Iterator[Site]:
    """The test site on MANY_HOSTS hosts more (127.0.0.2 onwards), each answering after
    100 ms, but SLOW_HOST after 2 s and LIMITED_HOST 429 beyond LIMIT_RPS requests a
    second. A crawl of them needs MANY_SITES (ALLOWED_NETWORKS=127.0.0.0/8)."""
    with running_site(
        logs / "many-sites.log",
        "--latency-ms",
        "100",
        "--slow-host",
        SLOW_HOST,
        "--slow-host-ms",
        "2000",
        "--limited-host",
        LIMITED_HOST,
        "--limit-rps",
        str(LIMIT_RPS),
        hosts=MANY_HOSTS,
    ) as site:
        yield site


@pytest.fixture(scope="session")
def moto(logs: Path) -> Iterator[Server]:
    """moto's S3 server in its own process."""
    server = moto_server(logs / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3sink(logs: Path) -> Iterator[Server]:
    """bench/s3sink.py: a fast S3-compatible server that counts who signed each request,
    and refuses the key id REFUSED_KEY_ID."""
    server = s3sink_server(logs / "s3sink.log", "--refuse-key", REFUSED_KEY_ID)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_session(logs: Path) -> Iterator[Server]:
    server = redis_server(logs / "redis.log")
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: Server) -> str:
    """The session's redis-server, emptied for this test."""
    client = redis.Redis(port=redis_session.port)
    client.flushall()
    client.close()
    return f"redis://127.0.0.1:{redis_session.port}/0"


@pytest.fixture(scope="session")
def redis_cluster(logs: Path) -> Iterator[Cluster]:
    """A Redis Cluster of 3 masters on 127.0.0.1 (tests/cluster.py), up in ~2 s."""
    with Cluster(logs / "redis-cluster") as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_url(redis_cluster: Cluster) -> str:
    """The session's Redis Cluster, emptied for this test (scripts too):
    ``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3``."""
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def bucket(moto: Server) -> str:
    """A new, empty bucket on the moto server."""
    name = f"bodies-{uuid.uuid4().hex[:12]}"
    s3_client(moto.url).create_bucket(Bucket=name)
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
        base = "mongodb://127.0.0.1:27017"
        client_factory = use_mongomock(monkeypatch.setattr)  # one store for every client
    uri = f"{base}/{db}"
    yield uri
    client = client_factory(uri)
    client.drop_database(db)
    client.close()
