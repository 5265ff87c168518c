"""Secrets stay out of logs, stats and error texts.

S3 keys, a Redis password and a Mongo password are configured the way a user would (``-s``
settings, which Scrapy echoes in its "Overridden settings" line), and each store is also
made to fail, so that its error path (messages, tracebacks) runs. Then the whole output is
searched for the secrets.

Where the crawl runs: `scrapy crawl` subprocesses for everything a real server backs
(redis-server with ``--requirepass``, moto's S3, an unreachable Mongo port). mongomock
cannot serve a subprocess, so the crawl that really writes to Mongo (with a password in
its URI) runs in this process, with a handler on the root logger catching every record.
"""

from __future__ import annotations

import io
import logging
import os
from typing import TYPE_CHECKING, Any

import pytest
import redis
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.logsetup import LogSetup
from scraper.stores import StoreError
from scraper.stores.meta import MongoMetaStore
from scraper.stores.s3 import Boto3S3BodyStore, ObstoreS3BodyStore
from scraper.testsite import free_port
from tests.helpers import (
    Server,
    Site,
    assert_children_recorded,
    crawl,
    mongo_collection,
    read_jsonl,
    records,
    redis_server,
    s3_store,
    scrapy_crawl,
    setting_args,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

KEY_ID = "AKIASECRETKEYID0001"
SECRET_KEY = "secret-SECRET-access-key-0001"
REDIS_PASSWORD = "redis-SECRET-pass-0002"
MONGO_PASSWORD = "mongo-SECRET-pass-0003"
WRONG_REDIS_PASSWORD = "wrong-SECRET-pass-0004"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
SECRETS = (KEY_ID, SECRET_KEY, REDIS_PASSWORD, MONGO_PASSWORD, WRONG_REDIS_PASSWORD)


def assert_no_secret(text: str) -> None:
    found = [secret for secret in SECRETS if secret in text]
    assert not found, f"secrets in the output: {found}"


@pytest.fixture(scope="module")
def private_redis(logs: Path) -> Iterator[Server]:
    """A redis-server that wants REDIS_PASSWORD."""
    server = redis_server(logs / "redis-private.log", "--requirepass", REDIS_PASSWORD)
    yield server
    server.stop()


def redis_url_of(server: Server, password: str = REDIS_PASSWORD) -> str:
    client = redis.Redis(port=server.port, password=REDIS_PASSWORD)
    client.flushall()
    client.close()
    return f"redis://:{password}@127.0.0.1:{server.port}/0"


def test_a_distributed_crawl_to_s3_logs_no_secret(
    site: Site, moto: Server, bucket: str, private_redis: Server, tmp_path: Path
) -> None:
    settings = {
        **s3_store(moto.url, bucket, "crawl/", credentials=CREDENTIALS),
        "REDIS_URL": redis_url_of(private_redis),
        "META_STORE": str(tmp_path / "meta.jsonl"),
        "LOG_LEVEL": "DEBUG",
    }
    result = scrapy_crawl(["-a", f"url={site.listing_url(60)}", *setting_args(settings)], tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stderr[-3000:]
    stats = result.stats
    assert stats["finish_reason"] == "finished"
    assert stats["body_store/stored"] == stats["meta_store/written"] == 60
    assert len(read_jsonl(tmp_path / "meta.jsonl")) == 60
    assert_children_recorded(stats, len(read_jsonl(tmp_path / "meta.jsonl")))
    # The secrets were there to leak: Scrapy echoes -s settings, and DEBUG shows S3 requests.
    assert "Overridden settings" in output and "redis://:***@127.0.0.1" in output
    assert_no_secret(result.stats_file.read_text())  # nor in the stats it wrote
    assert "'AWS_SECRET_ACCESS_KEY': '***'" in output
    assert "'AWS_ACCESS_KEY_ID': '***'" in output
    assert_no_secret(output)


@pytest.mark.parametrize("failing", ["mongo", "s3", "redis"])
def test_stores_that_fail_show_their_error_without_secrets(
    site: Site, moto: Server, bucket: str, private_redis: Server, tmp_path: Path, failing: str
) -> None:
    closed = free_port()
    settings = {
        **s3_store(moto.url, bucket, "crawl/", credentials=CREDENTIALS),
        "REDIS_URL": redis_url_of(private_redis),
        "META_STORE": str(tmp_path / "meta.jsonl"),
        "LOG_LEVEL": "DEBUG",
    }
    if failing == "mongo":
        settings["META_STORE"] = f"mongodb://crawler:{MONGO_PASSWORD}@127.0.0.1:{closed}/crawl"
        settings["META_STORE_CONNECT_TIMEOUT_MS"] = "300"
        expected = (
            f"META_STORE unusable, crawl stopped: MongoDB at "
            f"mongodb://crawler:***@127.0.0.1:{closed}/crawl unusable"
        )
    elif failing == "s3":
        settings["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{closed}"
        expected = f"BODY_STORE unusable, crawl stopped: S3 bucket s3://{bucket} at http"
    else:
        settings["REDIS_URL"] = redis_url_of(private_redis, WRONG_REDIS_PASSWORD)
        expected = f"REDIS_URL unusable, crawl stopped: redis://:***@127.0.0.1:{private_redis.port}"
    result = scrapy_crawl(
        ["-a", f"url={site.listing_url(20)}", *setting_args(settings)], tmp_path, timeout=120
    )

    output = result.stdout + result.stderr
    assert expected in output
    assert result.stats["finish_reason"].endswith("_unusable")
    assert_no_secret(output)
    # The crawl never started: 0 children, 0 records (with Mongo failing, its server is not
    # even listening; else the meta file under tmp_path).
    assert_children_recorded(result.stats, 0 if failing == "mongo" else len(records(tmp_path)))


@deferred_f_from_coro_f
async def test_a_crawl_into_mongo_with_a_password_logs_no_secret(
    site: Site, moto: Server, bucket: str, private_redis: Server, mongo_uri: str
) -> None:
    if os.environ.get("SCRAPER_TEST_MONGO_URI"):
        pytest.skip("needs mongomock: a real server would refuse the made-up password")
    uri = mongo_uri.replace("mongodb://", f"mongodb://crawler:{MONGO_PASSWORD}@", 1)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root, scrapy_logger = logging.getLogger(), logging.getLogger("scrapy")
    levels = root.level, scrapy_logger.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    scrapy_logger.setLevel(logging.DEBUG)
    try:
        crawler = await crawl(
            site.listing_url(40),
            **s3_store(moto.url, bucket, "crawl/", credentials=CREDENTIALS),
            REDIS_URL=redis_url_of(private_redis),
            META_STORE=uri,
            LOG_LEVEL="DEBUG",
        )
    finally:
        root.removeHandler(handler)
        root.setLevel(levels[0])
        scrapy_logger.setLevel(levels[1])

    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    assert stats["meta_store/written"] == 40
    assert mongo_collection(uri).count_documents({}) == 40
    assert_children_recorded(stats, mongo_collection(uri).count_documents({}))
    text = captured.getvalue()
    assert "Overridden settings" in text and "mongodb://crawler:***@127.0.0.1" in text
    assert_no_secret(text)
    assert_no_secret(repr(stats))


def test_store_errors_carry_no_secret() -> None:
    closed = free_port()
    errors: list[BaseException] = []
    mongo = MongoMetaStore(
        f"mongodb://crawler:{MONGO_PASSWORD}@127.0.0.1:{closed}/crawl", connect_timeout_ms=300
    )
    s3 = [
        store_class(
            "s3://bucket/crawl/",
            endpoint_url=f"http://127.0.0.1:{closed}",
            region_name="us-east-1",
            max_attempts=1,
            timeout=2,
            credentials={"aws_access_key_id": KEY_ID, "aws_secret_access_key": SECRET_KEY},
        )
        for store_class in (Boto3S3BodyStore, ObstoreS3BodyStore)
    ]
    for store in (mongo, *s3):
        with pytest.raises(StoreError) as info:
            store.open()
        errors.append(info.value)
        store.close()
    for exc in errors:
        chain: list[Any] = [exc, exc.__cause__, exc.__context__]
        assert_no_secret(" ".join(f"{e!s} {e!r}" for e in chain if e is not None))
    assert "crawler:***@" in str(errors[0])


def test_the_log_hides_secrets_in_exceptions_and_tracebacks() -> None:
    """A library may put a URI, password included, in an exception: the log must not."""
    LogSetup({MONGO_PASSWORD})
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    logger = logging.getLogger("tests.secrets")
    logger.addHandler(handler)
    try:
        try:
            try:
                raise ConnectionError(f"cannot reach mongodb://crawler:{MONGO_PASSWORD}@db:1/x")
            except ConnectionError as exc:
                raise RuntimeError(f"store failed: {exc}") from exc
        except RuntimeError:
            logger.error("Store failed", exc_info=True)
            logger.warning("Where it failed", stack_info=True)
    finally:
        logger.removeHandler(handler)

    text = captured.getvalue()
    assert "Traceback (most recent call last)" in text and "RuntimeError: store failed" in text
    assert "crawler:***@db:1/x" in text and "Stack (most recent call last)" in text
    assert_no_secret(text)
