"""Bodies in S3: moto's server over HTTP, boto3 with endpoint_url, as a real deployment."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.stores import StoreError
from scraper.stores.body import FSBodyStore
from scraper.stores.s3 import Boto3S3BodyStore, ObstoreS3BodyStore
from scraper.testsite import render_child
from tests.helpers import (
    REFUSED_KEY_ID,
    S3_CLIENTS,
    S3_CREDENTIALS,
    Server,
    Site,
    assert_children_recorded,
    crawl,
    mongo_collection,
    read_jsonl,
    records,
    s3_client,
    s3_store,
    store_settings,
)
from tests.tcpproxy import TcpProxy

if TYPE_CHECKING:
    from pathlib import Path


def all_objects(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = obj
    return objects


@pytest.mark.parametrize("client", S3_CLIENTS)
@deferred_f_from_coro_f
async def test_bodies_in_s3_are_byte_equal_under_prefix_and_fingerprint(
    site: Site, moto: Server, bucket: str, tmp_path: Path, client: str
) -> None:
    endpoint = f"http://127.0.0.1:{moto.port}"
    crawler = await crawl(
        site.listing_url(300),
        CONCURRENT_REQUESTS=300,
        **store_settings(tmp_path, **s3_store(endpoint, bucket, "run-1", client)),
    )

    docs = read_jsonl(tmp_path / "meta.jsonl")
    client = s3_client(endpoint)
    objects = all_objects(client, bucket)
    assert len(docs) == len(objects) == 300
    for doc in docs:
        assert doc["body_key"] == f"run-1/{doc['fingerprint']}"
        obj = client.get_object(Bucket=bucket, Key=doc["body_key"])
        assert obj["Body"].read() == render_child(doc["url"].rsplit("/", 1)[1])
        assert obj["ContentType"] == "text/html; charset=utf-8"
    assert crawler.stats.get_value("body_store/stored") == 300
    assert_children_recorded(crawler.stats.get_stats(), len(docs))


@deferred_f_from_coro_f
async def test_gzip_bodies_are_marked_and_unzip_to_the_page(
    site: Site, moto: Server, bucket: str, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{moto.port}"
    crawler = await crawl(
        site.listing_url(20),
        BODY_STORE_GZIP=True,
        **store_settings(tmp_path, **s3_store(endpoint, bucket, "")),
    )

    client = s3_client(endpoint)
    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == 20
    for doc in docs:
        assert doc["body_key"] == doc["fingerprint"] + ".gz"
        obj = client.get_object(Bucket=bucket, Key=doc["body_key"])
        assert obj["ContentEncoding"] == "gzip"
        assert gzip.decompress(obj["Body"].read()) == render_child(doc["url"].rsplit("/", 1)[1])
    assert_children_recorded(crawler.stats.get_stats(), len(docs))


@pytest.mark.parametrize("client", S3_CLIENTS)
@deferred_f_from_coro_f
async def test_s3_outage_mid_crawl_loses_no_body(
    site: Site, moto: Server, bucket: str, tmp_path: Path, client: str
) -> None:
    """S3 drops off the network for 3 s mid-crawl, then comes back: every body is stored."""
    proxy = TcpProxy(("127.0.0.1", moto.port))
    proxy.start()
    endpoint = f"http://127.0.0.1:{proxy.port}"
    outage: dict[str, int] = {}

    async def cut_when_some_are_stored(crawler: Any) -> None:
        while (crawler.stats.get_value("body_store/stored") or 0) < 40:
            await asyncio.sleep(0.01)
        outage["stored_before"] = crawler.stats.get_value("body_store/stored")
        proxy.stop()
        await asyncio.sleep(3)
        outage["stored_during"] = (
            crawler.stats.get_value("body_store/stored") - outage["stored_before"]
        )
        proxy.start()

    from scrapy.crawler import Crawler

    from scraper.spiders.listing import ListingSpider
    from tests.helpers import project_settings

    crawler = Crawler(
        ListingSpider,
        project_settings(
            CONCURRENT_REQUESTS=100,
            **store_settings(tmp_path, **s3_store(endpoint, bucket, "o", client)),
        ),
    )
    watcher = asyncio.ensure_future(cut_when_some_are_stored(crawler))
    try:
        await crawler.crawl_async(url=site.listing_url(400))
        await watcher
    finally:
        proxy.stop()

    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == 400
    assert all(d["error"] is None and d["body_key"] for d in docs)
    objects = all_objects(s3_client(f"http://127.0.0.1:{moto.port}"), bucket)
    assert sorted(objects) == sorted(d["body_key"] for d in docs)
    assert outage["stored_before"] < 400 and outage["stored_during"] <= 100  # it hit mid-crawl
    assert crawler.stats.get_value("body_store/retries") > 0
    assert crawler.stats.get_value("body_store/failed") is None
    assert_children_recorded(crawler.stats.get_stats(), len(docs))


@pytest.mark.parametrize("client", S3_CLIENTS)
@deferred_f_from_coro_f
async def test_missing_bucket_stops_the_crawl_at_start(
    site: Site, moto: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, client: str
) -> None:
    endpoint = f"http://127.0.0.1:{moto.port}"
    crawler = await crawl(
        site.listing_url(10),
        **store_settings(tmp_path, **s3_store(endpoint, "no-such-bucket", "", client)),
    )
    assert crawler.stats.get_value("finish_reason") == "body_store_unusable"
    assert crawler.stats.get_value("item_scraped_count") is None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"BODY_STORE unusable, crawl stopped: S3 bucket s3://no-such-bucket at "
        f"{endpoint} does not exist"
    ]
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


@pytest.mark.parametrize("client", S3_CLIENTS)
@deferred_f_from_coro_f
async def test_refused_credentials_stop_the_crawl_at_start(
    site: Site, s3sink: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, client: str
) -> None:
    endpoint = f"http://127.0.0.1:{s3sink.port}"
    bucket = f"refused-{client}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    refused = {"AWS_ACCESS_KEY_ID": REFUSED_KEY_ID, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    crawler = await crawl(
        site.listing_url(10),
        **store_settings(tmp_path, **s3_store(endpoint, bucket, "", client, refused)),
    )
    assert crawler.stats.get_value("finish_reason") == "body_store_unusable"
    assert crawler.stats.get_value("item_scraped_count") is None
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"BODY_STORE unusable, crawl stopped: S3 bucket s3://{bucket} at "
        f"{endpoint}: access denied for these credentials"
    ]
    assert "wrong-secret" not in caplog.text
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


@pytest.mark.parametrize("store_class", [ObstoreS3BodyStore, Boto3S3BodyStore])
def test_s3_store_never_lets_a_key_name_another_object(
    moto: Server, bucket: str, store_class: type[ObstoreS3BodyStore | Boto3S3BodyStore]
) -> None:
    store = store_class(
        f"s3://{bucket}/p",
        endpoint_url=f"http://127.0.0.1:{moto.port}",
        region_name="us-east-1",
        credentials={k.lower(): v for k, v in S3_CREDENTIALS.items()},
    )
    store.open()
    for key in ("../x", "a/b", "", "ABCDEF0123456789", "0" * 16 + "/../.."):
        with pytest.raises(ValueError, match="invalid body key"):
            store.put(key, b"x", None, None)
    assert store.put("0" * 40, b"x", None, None) == "p/" + "0" * 40
    store.close()


def test_fs_store_keeps_every_key_inside_its_folder(tmp_path: Path) -> None:
    store = FSBodyStore(tmp_path / "bodies")
    store.open()
    for key in ("../../etc/passwd", "/abs", "ab/../../x", "ab", "x" * 40):
        with pytest.raises(ValueError, match="invalid body key"):
            store.put(key, b"x", None, None)
    assert store.put("ab" * 20, b"body", None, None) == f"ab/{'ab' * 20}"
    assert (tmp_path / "bodies" / "ab" / ("ab" * 20)).read_bytes() == b"body"
    assert [p.name for p in (tmp_path / "bodies").rglob("*")] == ["ab", "ab" * 20]


def test_fs_store_that_cannot_write_says_so(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot be created"):
        FSBodyStore(tmp_path / "file" / "bodies").open()


@deferred_f_from_coro_f
async def test_no_s3_or_mongo_call_runs_on_the_reactor_thread(
    site: Site,
    moto: Server,
    bucket: str,
    mongo_uri: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every HTTP request botocore sends and every Mongo call is made off the reactor thread."""
    from scraper.stores.meta import MongoMetaStore

    reactor_thread = threading.current_thread()
    threads: dict[str, set[str]] = {"s3": set(), "mongo": set()}

    original_open = Boto3S3BodyStore.open

    def open_and_watch(self: Boto3S3BodyStore) -> None:
        original_open(self)
        self.client.meta.events.register(
            "before-send.s3", lambda **_: threads["s3"].add(threading.current_thread().name)
        )

    monkeypatch.setattr(Boto3S3BodyStore, "open", open_and_watch)
    for name in ("open", "write", "close"):
        original = getattr(MongoMetaStore, name)

        def watched(self: Any, *args: Any, _original: Any = original) -> Any:
            threads["mongo"].add(threading.current_thread().name)
            return _original(self, *args)

        monkeypatch.setattr(MongoMetaStore, name, watched)

    endpoint = f"http://127.0.0.1:{moto.port}"
    settings = {
        **store_settings(tmp_path, **s3_store(endpoint, bucket, "")),
        "META_STORE": mongo_uri,
        "BODY_STORE_S3_CLIENT": "boto3",
    }  # obstore's own I/O is in Rust: next test
    crawler = await crawl(site.listing_url(100), **settings)

    assert crawler.stats.get_value("meta_store/written") == 100
    assert threads["s3"] and threads["mongo"]
    assert reactor_thread.name not in threads["s3"] | threads["mongo"]
    assert all(t.startswith("body-store") for t in threads["s3"])
    # The writer's one thread, and the one RECRAWL reads previous records in.
    assert threads["mongo"] == {"meta-store_0", "recrawl_0"}
    assert len(threads["s3"]) > 4  # S3 uploads use BODY_STORE_THREADS, not the folder's cap
    assert_children_recorded(
        crawler.stats.get_stats(), mongo_collection(mongo_uri).count_documents({})
    )


@deferred_f_from_coro_f
async def test_obstore_uploads_are_awaited_on_the_loop_and_bounded(
    site: Site,
    moto: Server,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default client: every PUT is obstore's put_async, awaited on the event loop (its
    HTTP runs in Rust threads), never a blocking call on the reactor thread, and at most
    BODY_STORE_S3_IN_FLIGHT are in flight."""
    import obstore

    calls = {"async": 0, "sync": 0, "in_flight": 0, "most": 0}
    original = obstore.put_async

    async def watched(*args: Any, **kwargs: Any) -> Any:
        calls["async"] += 1
        calls["in_flight"] += 1
        calls["most"] = max(calls["most"], calls["in_flight"])
        try:
            return await original(*args, **kwargs)
        finally:
            calls["in_flight"] -= 1

    def sync_put(*args: Any, **kwargs: Any) -> Any:
        calls["sync"] += 1
        raise AssertionError("a blocking PUT during a crawl")

    monkeypatch.setattr(obstore, "put_async", watched)
    monkeypatch.setattr(obstore, "put", sync_put)
    endpoint = f"http://127.0.0.1:{moto.port}"
    crawler = await crawl(
        site.listing_url(120),
        BODY_STORE_S3_IN_FLIGHT=8,
        CONCURRENT_REQUESTS=100,
        **store_settings(tmp_path, **s3_store(endpoint, bucket, "")),
    )

    assert crawler.stats.get_value("body_store/stored") == 120
    assert calls["async"] == 120 and calls["sync"] == 0
    assert 1 < calls["most"] <= 8
    assert len(all_objects(s3_client(endpoint), bucket)) == 120
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


@pytest.mark.parametrize("source", ["environment", "profile"])
@pytest.mark.parametrize("client", S3_CLIENTS)
@deferred_f_from_coro_f
async def test_credentials_come_from_boto3s_chain(
    site: Site,
    s3sink: Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    client: str,
    source: str,
) -> None:
    """No credential in the settings: boto3's chain finds them (environment variables, or
    a profile of a shared credentials file, session token included), whichever client
    sends the PUTs; the server sees them sign every request."""
    endpoint = f"http://127.0.0.1:{s3sink.port}"
    bucket = f"creds-{source}-{client}"
    s3_client(endpoint).create_bucket(Bucket=bucket)  # before the environment changes
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    key_id, token = f"AKIA{source.upper()}{client.upper()}", f"token-{source}-{client}"
    if source == "environment":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    else:
        (tmp_path / "credentials").write_text(
            f"[crawler]\naws_access_key_id = {key_id}\naws_secret_access_key = secret\n"
            f"aws_session_token = {token}\n"
        )
        monkeypatch.setenv("AWS_PROFILE", "crawler")

    crawler = await crawl(
        site.listing_url(30),
        BODY_STORE=f"s3://{bucket}/",
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION_NAME="eu-west-1",
        BODY_STORE_S3_CLIENT=client,
        META_STORE=str(tmp_path / "meta.jsonl"),
    )

    assert crawler.stats.get_value("body_store/stored") == 30
    with urllib.request.urlopen(f"{endpoint}/_stats", timeout=10) as r:
        seen = json.loads(r.read())
    assert seen["signed_by"][key_id] >= 31  # the bucket check and 30 PUTs
    assert seen["tokens"][token] == seen["signed_by"][key_id]
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))
