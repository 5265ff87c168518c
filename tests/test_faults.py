"""Store faults: S3 behind a fault-injecting proxy, MongoDB failing at the pymongo call.

What a user relies on: through throttling, 5xx, resets and delays every body is stored
byte-equal; when a store stays down past every retry, nothing is dropped (bodies and
meta batches are spooled on disk) and `scrapy replay` stores them later.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest
from pymongo.errors import AutoReconnect, NetworkTimeout, WriteConcernError
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.commands.replay import replay
from scraper.spiders.listing import ListingSpider
from scraper.spool import BodySpool, append_lines, count_lines, read_lines, take_lines
from scraper.stores.meta import MongoMetaStore
from scraper.testsite import render_child
from tests.faultproxy import FaultProxy
from tests.helpers import (
    ROOT,
    S3_CLIENTS,
    S3_CREDENTIALS,
    Server,
    Site,
    assert_children_recorded,
    crawl,
    mongo_collection,
    project_settings,
    read_jsonl,
    s3_client,
    s3_store,
    scrapy_crawl,
    setting_args,
    store_settings,
)

if TYPE_CHECKING:
    from pathlib import Path

#: The issue's rates: 503 SlowDown 10%, 500 5%, connection resets 2%, and some delayed.
ISSUE_RATES = {"slowdown": 0.10, "internal": 0.05, "reset": 0.02, "delay": 0.03}


def scrapy_replay(
    settings: dict[str, Any], cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """`scrapy replay -s ...` as a user runs it, with the crawl's settings."""
    return subprocess.run(
        [sys.executable, "-m", "scrapy", "replay", *setting_args(settings), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SCRAPY_SETTINGS_MODULE": "scraper.settings"},
    )


def bucket_bodies(endpoint: str, bucket: str) -> dict[str, bytes]:
    client = s3_client(endpoint)
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    ]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def page_name(doc: dict[str, Any]) -> str:
    return str(doc["url"].rsplit("/", 1)[1])


@pytest.mark.parametrize("client", S3_CLIENTS)
def test_s3_faults_at_the_issues_rates_lose_no_byte(
    site: Site, moto: Server, bucket: str, tmp_path: Path, client: str
) -> None:
    """2,000 pages through 503 SlowDown / 500 / resets / delays: every body byte-equal."""
    with FaultProxy(
        f"http://127.0.0.1:{moto.port}", ISSUE_RATES, seed=6, delay_range=(1.0, 2.5)
    ) as proxy:
        # The client tries twice: some uploads fail both, so the pipeline's own retries show.
        settings = store_settings(
            tmp_path,
            **s3_store(proxy.url, bucket, "pages"),
            BODY_STORE_S3_CLIENT=client,
            BODY_STORE_S3_MAX_ATTEMPTS=2,
            CONCURRENT_REQUESTS=200,
            BODY_STORE_THREADS=64,
        )
        result = scrapy_crawl(
            ["-a", f"url={site.listing_url(2000)}", *setting_args(settings)],
            cwd=tmp_path,
            timeout=240,
        )
        counts = dict(proxy.counts)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    assert S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output

    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == len({d["fingerprint"] for d in docs}) == 2000
    # Every object's ETag is the MD5 of the bytes S3 holds: equal to the page's MD5 for all
    # 2,000; and every 10th object is read back in full and compared byte for byte.
    client = s3_client(f"http://127.0.0.1:{moto.port}")
    etags = {
        obj["Key"]: obj["ETag"].strip('"')
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for obj in page.get("Contents", [])
    }
    assert len(etags) == 2000
    for i, doc in enumerate(docs):
        assert doc["error"] is None and doc["body_pending"] is False
        served = render_child(page_name(doc))
        assert etags[doc["body_key"]] == hashlib.md5(served).hexdigest()
        if i % 10 == 0:
            body = client.get_object(Bucket=bucket, Key=doc["body_key"])["Body"].read()
            assert body == served

    for fault in ISSUE_RATES:  # every kind of fault really happened, at about its rate
        assert counts[fault] > 0.4 * ISSUE_RATES[fault] * 2000, counts
    stats = result.stats
    assert stats["finish_reason"] == "finished"
    assert stats["body_store/stored"] == 2000
    assert stats["body_store/sdk_retries"] > 100  # botocore's own retries
    assert stats["body_store/retries"] > 0  # then the pipeline's, with backoff
    assert "body_store/spooled" not in stats and "body_store/failed" not in stats
    assert not (tmp_path / "body-spool").exists()
    assert_children_recorded(stats, len(docs))


@pytest.mark.parametrize("client", S3_CLIENTS)
@deferred_f_from_coro_f
async def test_s3_down_past_every_retry_spools_bodies_and_replay_stores_them(
    site: Site, moto: Server, bucket: str, tmp_path: Path, client: str
) -> None:
    n = 150
    moto_url = f"http://127.0.0.1:{moto.port}"
    with FaultProxy(moto_url) as proxy:
        settings = store_settings(
            tmp_path,
            **s3_store(proxy.url, bucket, "pages"),
            BODY_STORE_S3_CLIENT=client,
            BODY_STORE_S3_MAX_ATTEMPTS=1,
            BODY_STORE_RETRY_TIMEOUT=1,
        )

        def s3_goes_down() -> None:  # the bucket was checked at open; S3 fails from here on
            proxy.down = True

        crawler = Crawler(ListingSpider, project_settings(**settings))
        crawler.signals.connect(s3_goes_down, signal=signals.spider_opened)
        started = time.monotonic()
        await crawler.crawl_async(url=site.listing_url(n))
        assert time.monotonic() - started < 60  # nothing blocks forever

        # Nothing dropped: every page has its record, marked pending, and its body spooled.
        stats = crawler.stats
        # It ran to its end, but no body reached S3: CHECK_MAX_SPOOLED_SHARE says so.
        assert stats.get_value("finish_reason") == "checks_failed"
        assert stats.get_value("body_store/spooled") == n
        assert stats.get_value("body_store/failed") is None
        assert stats.get_value("meta_store/written") == n
        docs = read_jsonl(tmp_path / "meta.jsonl")
        assert len(docs) == n
        assert all(
            d["body_pending"] is True and d["body_key"] is None and d["error"] is None for d in docs
        )
        assert_children_recorded(stats.get_stats(), len(docs))
        spool = BodySpool(tmp_path / "body-spool")
        assert spool.count() == n
        assert bucket_bodies(moto_url, bucket) == {}

        # Replay while S3 is still down: a clear failure, non-zero exit, the spool intact.
        result = scrapy_replay(settings, tmp_path, "--retry-timeout", "1")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert f"Left in the spools: 0 document(s), {n} body(ies)." in output
        assert S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output
        assert spool.count() == n

        # S3 half back (every other upload throttled, no retry): what is stored leaves the
        # spool and its record is updated; what is not stays, still pending.
        proxy.down = False
        proxy.rates = {"slowdown": 0.5}
        result = scrapy_replay(settings, tmp_path, "--retry-timeout", "0")
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        left = spool.count()
        assert 0 < left < n
        assert f"Left in the spools: 0 document(s), {left} body(ies)." in output
        docs = read_jsonl(tmp_path / "meta.jsonl")
        assert len(docs) == n
        assert sum(d["body_pending"] for d in docs) == left
        assert len(bucket_bodies(moto_url, bucket)) == n - left

        # S3 is back: replay uploads the rest and clears their records' pending flag.
        proxy.rates = {}
        result = scrapy_replay(settings, tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert (
            f"Replayed: 0 meta document(s) written, {left} body(ies) stored and their "
            "records updated"
        ) in output
        assert "Left in the spools: 0 document(s), 0 body(ies)." in output
        assert S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output

    assert spool.count() == 0
    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == len({d["fingerprint"] for d in docs}) == n  # updated, not added
    stored = bucket_bodies(moto_url, bucket)
    assert len(stored) == n
    for doc in docs:
        assert doc["body_pending"] is False and doc["error"] is None
        assert doc["body_key"] == f"pages/{doc['fingerprint']}"
        assert stored[doc["body_key"]] == render_child(page_name(doc))

    # A second replay finds nothing to do.
    again = scrapy_replay(settings, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Nothing to replay" in again.stdout
    assert read_jsonl(tmp_path / "meta.jsonl") == docs


@deferred_f_from_coro_f
async def test_gzip_bodies_are_spooled_and_replayed_as_they_would_have_been_stored(
    site: Site, moto: Server, bucket: str, tmp_path: Path
) -> None:
    n = 12
    moto_url = f"http://127.0.0.1:{moto.port}"
    with FaultProxy(moto_url) as proxy:
        settings = store_settings(
            tmp_path,
            **s3_store(proxy.url, bucket, "pages"),
            BODY_STORE_GZIP=True,
            BODY_STORE_S3_MAX_ATTEMPTS=1,
            BODY_STORE_RETRY_TIMEOUT=0.5,
        )

        def s3_goes_down() -> None:
            proxy.down = True

        crawler = Crawler(ListingSpider, project_settings(**settings))
        crawler.signals.connect(s3_goes_down, signal=signals.spider_opened)
        await crawler.crawl_async(url=site.listing_url(n))
        assert crawler.stats.get_value("body_store/spooled") == n
        assert sorted(p.name for p in BodySpool(tmp_path / "body-spool").paths()) == sorted(
            d["fingerprint"] + ".gz" for d in read_jsonl(tmp_path / "meta.jsonl")
        )
        assert_children_recorded(
            crawler.stats.get_stats(), len(read_jsonl(tmp_path / "meta.jsonl"))
        )

        proxy.down = False
        said: list[str] = []
        report = await replay(project_settings(**settings), say=said.append)
        assert report.ok and report.bodies_stored == n, said

    client = s3_client(moto_url)
    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == n
    for doc in docs:
        assert doc["body_key"] == f"pages/{doc['fingerprint']}.gz" and not doc["body_pending"]
        obj = client.get_object(Bucket=bucket, Key=doc["body_key"])
        assert obj["ContentEncoding"] == "gzip"
        assert obj["ContentType"] == "text/html; charset=utf-8"
        assert gzip.decompress(obj["Body"].read()) == render_child(page_name(doc))


@deferred_f_from_coro_f
async def test_a_body_neither_stored_nor_spooled_still_gets_its_record(
    site: Site, moto: Server, bucket: str, tmp_path: Path
) -> None:
    """S3 down and the spool folder unusable (a file is in the way): the crawl still ends,
    every page has its record, saying why its body is missing."""
    (tmp_path / "not-a-folder").write_text("")
    with FaultProxy(f"http://127.0.0.1:{moto.port}") as proxy:
        settings = store_settings(
            tmp_path,
            **s3_store(proxy.url, bucket, "pages"),
            BODY_STORE_S3_MAX_ATTEMPTS=1,
            BODY_STORE_RETRY_TIMEOUT=0.5,
            BODY_STORE_SPOOL=str(tmp_path / "not-a-folder" / "spool"),
        )

        def s3_goes_down() -> None:
            proxy.down = True

        crawler = Crawler(ListingSpider, project_settings(**settings))
        crawler.signals.connect(s3_goes_down, signal=signals.spider_opened)
        await crawler.crawl_async(url=site.listing_url(20))

    assert crawler.stats.get_value("finish_reason") == "checks_failed"  # no body stored
    assert crawler.stats.get_value("body_store/failed") == 20
    assert crawler.stats.get_value("body_store/spooled") is None
    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == 20
    for doc in docs:
        assert doc["body_key"] is None and doc["body_pending"] is False
        # boto3: "ClientError: An error occurred (SlowDown)..."; obstore: "S3PutError: PUT
        # <key>: 503 SlowDown".
        assert doc["error"].startswith("body not stored: "), doc["error"]
        assert "SlowDown" in doc["error"] and len(doc["error"]) < 300, doc["error"]
    assert_children_recorded(crawler.stats.get_stats(), len(docs))


class FlakyCollection:
    """A pymongo collection whose ``bulk_write`` fails as a sick server would."""

    ERRORS = (
        lambda: AutoReconnect("connection reset by peer"),
        lambda: NetworkTimeout("timed out"),
        lambda: WriteConcernError("waiting for replication timed out", 64),
    )

    def __init__(self, collection: Any, failures: int) -> None:
        self.collection = collection
        self.failures = failures  # calls that fail from now on; -1: every call ("down")
        self.first_batch_only = False  # True: only the first batch written meets the failures
        self.first_batch: str | None = None
        self.calls: list[tuple[str, float, bool]] = []  # (batch's first id, when, failed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.collection, name)

    def bulk_write(self, ops: list[Any], **kwargs: Any) -> Any:
        batch = ops[0]._filter["_id"]
        self.first_batch = self.first_batch or batch
        failing = self.failures != 0 and (not self.first_batch_only or batch == self.first_batch)
        self.calls.append((batch, time.monotonic(), failing))
        if failing:
            self.failures -= 1 if self.failures > 0 else 0
            raise self.ERRORS[len(self.calls) % len(self.ERRORS)]()
        return self.collection.bulk_write(ops, **kwargs)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch) -> list[FlakyCollection]:
    """Every MongoMetaStore opened from now on writes through a FlakyCollection (failing
    nothing until the test says so)."""
    made: list[FlakyCollection] = []
    original_open = MongoMetaStore.open

    def open_flaky(self: MongoMetaStore) -> None:
        original_open(self)
        self.collection = FlakyCollection(self.collection, 0)
        made.append(self.collection)

    monkeypatch.setattr(MongoMetaStore, "open", open_flaky)
    return made


@deferred_f_from_coro_f
async def test_mongo_write_errors_are_retried_with_backoff_and_nothing_is_lost(
    site: Site,
    mongo_uri: str,
    tmp_path: Path,
    flaky: list[FlakyCollection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 200
    original_open = MongoMetaStore.open

    def open_then_fail_four_writes(self: MongoMetaStore) -> None:
        original_open(self)
        self.collection.failures = 4  # of the first batch, so its gaps show the backoff
        self.collection.first_batch_only = True

    monkeypatch.setattr(MongoMetaStore, "open", open_then_fail_four_writes)
    crawler = await crawl(site.listing_url(n), **store_settings(tmp_path, META_STORE=mongo_uri))

    assert mongo_collection(mongo_uri).count_documents({}) == n
    stats = crawler.stats
    assert stats.get_value("meta_store/written") == n
    assert stats.get_value("meta_store/retries") == 4
    assert stats.get_value("meta_store/spooled") is None
    assert not (tmp_path / "meta-spool.jsonl").exists()
    assert_children_recorded(stats.get_stats(), mongo_collection(mongo_uri).count_documents({}))
    (collection,) = [c for c in flaky if c.calls]  # the pipeline's (RECRAWL only reads)
    assert sum(failed for _, _, failed in collection.calls) == 4
    # Backoff: the first batch's 5 attempts are at least 0.5 s, 1 s, 2 s, 4 s apart.
    times = [when for batch, when, _ in collection.calls if batch == collection.first_batch]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 4
    for i, gap in enumerate(gaps):
        assert 0.5 * 2**i * 0.9 <= gap < 0.5 * 2**i + 5, gaps


@deferred_f_from_coro_f
async def test_mongo_down_until_close_spools_the_batches_and_replay_writes_them(
    site: Site,
    mongo_uri: str,
    tmp_path: Path,
    flaky: list[FlakyCollection],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mongo fails every write until the crawl ends: the batches are spooled; once Mongo is
    back, replay (in this process: mongomock's data lives here) writes every document."""
    n = 120
    original_open = MongoMetaStore.open
    mongo_down = True

    def open_maybe_down(self: MongoMetaStore) -> None:
        original_open(self)
        self.collection.failures = -1 if mongo_down else 0

    monkeypatch.setattr(MongoMetaStore, "open", open_maybe_down)
    settings = store_settings(
        tmp_path, META_STORE=mongo_uri, META_STORE_RETRY_TIMEOUT=1, META_STORE_BATCH_SIZE=50
    )
    crawler = await crawl(site.listing_url(n), **settings)

    stats = crawler.stats
    # It ran to its end, but no record reached Mongo: CHECK_MAX_SPOOLED_SHARE and
    # CHECK_MIN_STORED say so.
    assert stats.get_value("finish_reason") == "checks_failed"
    assert stats.get_value("checks/failed") == 2
    assert stats.get_value("meta_store/spooled") == stats.get_value("meta_store/failed") == n
    assert stats.get_value("meta_store/retries") > 0
    assert mongo_collection(mongo_uri).count_documents({}) == 0
    spool = tmp_path / "meta-spool.jsonl"
    assert count_lines(spool) == n
    # Every record is in the meta spool (Mongo took none).
    assert_children_recorded(
        stats.get_stats(), mongo_collection(mongo_uri).count_documents({}) + count_lines(spool)
    )

    # Replay while Mongo is still down: reported, nothing removed.
    said: list[str] = []
    report = await replay(project_settings(**settings), retry_timeout=1, say=said.append)
    assert not report.ok and report.meta_left == n and report.meta_written == 0
    assert any("did not take the spooled documents" in s for s in said), said
    assert count_lines(spool) == n

    mongo_down = False
    said.clear()
    report = await replay(project_settings(**settings), retry_timeout=5, say=said.append)
    assert report.ok, said
    assert report.meta_written == n and report.meta_left == 0
    pages = mongo_collection(mongo_uri)
    assert pages.count_documents({}) == n
    assert count_lines(spool) == 0 and not spool.exists()
    for doc in pages.find():
        assert isinstance(doc["fetched_at"], datetime)  # a date again, as a direct write has
        assert doc["_id"] == doc["fingerprint"]
        body = (tmp_path / "bodies" / doc["body_key"]).read_bytes()
        assert body == render_child(page_name(doc))

    said.clear()
    report = await replay(project_settings(**settings), say=said.append)
    assert report.ok and report.meta_written == 0
    assert said == [
        f"Nothing to replay: META_STORE_SPOOL {spool} and BODY_STORE_SPOOL "
        f"{tmp_path / 'body-spool'} are empty."
    ]
    assert pages.count_documents({}) == n


def test_meta_spool_taken_while_crawls_append_loses_no_line(tmp_path: Path) -> None:
    """Replay takes the meta spool away while several writers append: every line written
    ends in exactly one taken file."""
    spool = tmp_path / "meta-spool.jsonl"
    written = 4 * 200

    def writer(w: int) -> None:
        for i in range(200):
            append_lines(spool, [{"fingerprint": f"{w:02x}{i:038x}", "n": i}])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    taken: list[str] = []
    while any(t.is_alive() for t in threads) or spool.exists():
        path = take_lines(spool)
        if path is not None:
            docs, bad = read_lines(path)
            assert not bad
            taken += [d["fingerprint"] for d in docs]
            path.unlink()
    assert len(taken) == len(set(taken)) == written


@deferred_f_from_coro_f
async def test_a_cut_line_in_the_meta_spool_is_set_aside_and_the_rest_replayed(
    tmp_path: Path,
) -> None:
    """A crash mid-append leaves half a line: replay writes the documents, moves the line to
    `<spool>.rejected`, says so and fails once; the next replay has nothing left to do."""
    spool = tmp_path / "meta-spool.jsonl"
    docs = [
        {
            "fingerprint": f"{i:040x}",
            "url": f"http://x/{i}",
            "fetched_at": "2026-11-27T12:00:00+00:00",
        }
        for i in range(3)
    ]
    append_lines(spool, docs)
    with spool.open("ab") as f:
        f.write(b'{"fingerprint": "cut')
    settings = project_settings(**store_settings(tmp_path, META_STORE_SPOOL=str(spool)))
    said: list[str] = []
    report = await replay(settings, say=said.append)
    assert not report.ok and report.meta_written == 3 and report.meta_left == 0
    assert [d["fingerprint"] for d in read_jsonl(tmp_path / "meta.jsonl")] == [
        d["fingerprint"] for d in docs
    ]
    assert (tmp_path / "meta-spool.jsonl.rejected").read_bytes() == b'{"fingerprint": "cut\n'
    assert any("1 line(s) are not meta documents" in line for line in said), said
    assert not spool.exists()

    said.clear()
    report = await replay(settings, say=said.append)
    assert report.ok and said[0].startswith("Nothing to replay")


def test_replay_needs_no_arguments() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scrapy", "replay", "extra"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "replay takes no arguments" in result.stderr
