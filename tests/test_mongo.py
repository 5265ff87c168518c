"""Meta in MongoDB: mongomock on pymongo's API, or a real server with SCRAPER_TEST_MONGO_URI."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from pymongo.errors import DuplicateKeyError
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from scraper.commands.replay import replay
from scraper.items import PageItem
from scraper.pipelines import MetaStorePipeline
from scraper.spool import count_lines
from scraper.stores.meta import GONE_INDEX
from scraper.testsite import render_child
from tests.helpers import (
    S3_CREDENTIALS,
    Server,
    Site,
    assert_children_recorded,
    crawl,
    mongo_collection,
    project_settings,
    s3_client,
    store_settings,
)

if TYPE_CHECKING:
    from pathlib import Path


@deferred_f_from_coro_f
async def test_meta_documents_are_written_in_batches_of_the_set_size(
    site: Site, mongo_uri: str, tmp_path: Path
) -> None:
    crawler = await crawl(
        site.listing_url(50),
        **store_settings(
            tmp_path, META_STORE=mongo_uri, META_STORE_BATCH_SIZE=7, META_STORE_FLUSH_INTERVAL=60
        ),
    )

    pages = mongo_collection(mongo_uri)
    assert pages.count_documents({}) == 50
    assert crawler.stats.get_value("meta_store/written") == 50
    assert crawler.stats.get_value("meta_store/batches") >= 8  # 7 full, then the tail
    doc = pages.find_one({"url": f"{site.base}/page/3"})
    assert doc["_id"] == doc["fingerprint"] and doc["status"] == 200
    assert doc["title"] == "Child page 3" and doc["length"] == len(render_child(3))
    assert "body" not in doc
    assert_children_recorded(crawler.stats.get_stats(), pages.count_documents({}))


@deferred_f_from_coro_f
async def test_the_last_partial_batch_is_written_when_the_crawl_drains(
    site: Site, mongo_uri: str, tmp_path: Path
) -> None:
    """The tail of a crawl does not wait for the flush timer (here a minute) to finish."""
    started = time.monotonic()
    crawler = await crawl(
        site.listing_url(30),
        CONCURRENT_REQUESTS=100,
        **store_settings(
            tmp_path, META_STORE=mongo_uri, META_STORE_BATCH_SIZE=1000, META_STORE_FLUSH_INTERVAL=60
        ),
    )
    assert mongo_collection(mongo_uri).count_documents({}) == 30
    assert crawler.stats.get_value("meta_store/written") == 30
    assert time.monotonic() - started < 30
    assert_children_recorded(
        crawler.stats.get_stats(), mongo_collection(mongo_uri).count_documents({})
    )


@deferred_f_from_coro_f
async def test_recrawl_leaves_the_same_number_of_documents(
    site: Site, mongo_uri: str, tmp_path: Path
) -> None:
    url = site.listing_url(60, per_page=25)
    first_crawler = await crawl(url, **store_settings(tmp_path, META_STORE=mongo_uri))
    first = {d["_id"]: d["fetched_at"] for d in mongo_collection(mongo_uri).find()}
    assert_children_recorded(first_crawler.stats.get_stats(), len(first))
    crawler = await crawl(url, **store_settings(tmp_path, META_STORE=mongo_uri))
    second = {d["_id"]: d["fetched_at"] for d in mongo_collection(mongo_uri).find()}

    assert crawler.stats.get_value("meta_store/written") == 60
    assert len(first) == len(second) == 60 and first.keys() == second.keys()
    assert all(second[k] > first[k] for k in first)
    # Every document now in the collection is the second crawl's (each one newer, above).
    assert_children_recorded(crawler.stats.get_stats(), len(second))


@deferred_f_from_coro_f
async def test_unique_index_on_fingerprint_is_ensured_at_open(
    site: Site, mongo_uri: str, tmp_path: Path
) -> None:
    crawler = await crawl(site.listing_url(3), **store_settings(tmp_path, META_STORE=mongo_uri))
    pages = mongo_collection(mongo_uri)
    assert_children_recorded(crawler.stats.get_stats(), pages.count_documents({}))
    index = next(i for i in pages.index_information().values() if i["key"] == [("fingerprint", 1)])
    assert index["unique"] is True
    fingerprint = pages.find_one()["fingerprint"]
    with pytest.raises(DuplicateKeyError):
        pages.insert_one({"_id": "other", "fingerprint": fingerprint})
    # The end-of-crawl marking of gone records reads an index, not the whole collection.
    assert [i["key"] for i in pages.index_information().values()].count(GONE_INDEX) == 1
    if os.environ.get("SCRAPER_TEST_MONGO_URI"):  # a real server says how it would run it
        plan = pages.find(
            {"listing": {"$in": ["x"]}, "crawl_id": {"$ne": "y"}, "gone_at": None}
        ).explain()
        assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"])


async def open_pipeline(mongo_uri: str, **kwargs: Any) -> MetaStorePipeline:
    """A MetaStorePipeline outside a crawl (no engine): only size and time flush it."""
    crawler = get_crawler(settings_dict={"META_STORE_COLLECTION": "pages"})
    crawler.stats.open_spider()
    pipeline = MetaStorePipeline(crawler, mongo_uri, **kwargs)
    await pipeline.open_spider()
    return pipeline


@deferred_f_from_coro_f
async def test_an_item_returns_only_once_its_batch_is_written(mongo_uri: str) -> None:
    """A lone item is flushed by time, and process_item() returns after the write."""
    pipeline = await open_pipeline(mongo_uri, batch_size=100, flush_interval=0.3)
    crawler = pipeline.crawler
    item = PageItem(
        fingerprint="f" * 40,
        url="http://x/1",
        listing_url="http://x/",
        fetched_at=datetime.now(UTC),
        status=200,
        body=b"body",
    )
    started = time.monotonic()
    assert await pipeline.process_item(item) is item
    waited = time.monotonic() - started
    pages = mongo_collection(mongo_uri)
    assert pages.count_documents({"_id": "f" * 40}) == 1
    assert 0.25 < waited < 5
    await pipeline.close_spider()
    assert crawler.stats.get_value("meta_store/batches") == 1


@deferred_f_from_coro_f
async def test_a_full_batch_is_written_without_waiting_for_the_timer(mongo_uri: str) -> None:
    pipeline = await open_pipeline(mongo_uri, batch_size=5, flush_interval=60)
    items = [
        PageItem(
            fingerprint=f"{i:040x}",
            url=f"http://x/{i}",
            listing_url="http://x/",
            fetched_at=datetime.now(UTC),
        )
        for i in range(5)
    ]
    await asyncio.wait_for(asyncio.gather(*(pipeline.process_item(i) for i in items)), 10)
    assert mongo_collection(mongo_uri).count_documents({}) == 5
    await pipeline.close_spider()


@deferred_f_from_coro_f
async def test_documented_s3_and_mongo_command(
    site: Site, moto: Server, bucket: str, mongo_uri: str, tmp_path: Path
) -> None:
    """`scrapy crawl listing -a url=... -s BODY_STORE=s3://... -s META_STORE=mongodb://...`"""
    endpoint = f"http://127.0.0.1:{moto.port}"
    crawler = await crawl(
        site.listing_url(120),
        BODY_STORE=f"s3://{bucket}/pages",
        META_STORE=mongo_uri,
        AWS_ENDPOINT_URL=endpoint,
        AWS_REGION_NAME="us-east-1",
        **S3_CREDENTIALS,
        CONCURRENT_REQUESTS=1000,
    )
    pages = mongo_collection(mongo_uri)
    client = s3_client(endpoint)
    assert pages.count_documents({}) == 120
    for doc in pages.find():
        body = client.get_object(Bucket=bucket, Key=doc["body_key"])["Body"].read()
        assert body == render_child(doc["url"].rsplit("/", 1)[1])
    assert crawler.stats.get_value("finish_reason") == "finished"
    assert_children_recorded(crawler.stats.get_stats(), pages.count_documents({}))


@deferred_f_from_coro_f
async def test_documents_refused_for_good_are_spooled_at_once_not_retried(
    site: Site, mongo_uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A unique index of the user's on listing_url: every page after the first breaks it.
    A retry cannot help, so none is made (not for META_STORE_RETRY_TIMEOUT); the refused
    documents are spooled, the others written, and replay writes them once it is fixed."""
    pages = mongo_collection(mongo_uri)
    pages.create_index("listing_url", unique=True)
    settings = store_settings(
        tmp_path, META_STORE=mongo_uri, META_STORE_RETRY_TIMEOUT=600, META_STORE_BATCH_SIZE=10
    )
    crawler = await crawl(site.listing_url(30), **settings)

    stats = crawler.stats
    assert stats.get_value("finish_reason") == "checks_failed"  # 29 of 30 records spooled
    assert pages.count_documents({}) == 1
    assert stats.get_value("meta_store/written") == 1
    assert stats.get_value("meta_store/rejected") == stats.get_value("meta_store/spooled") == 29
    assert stats.get_value("meta_store/retries") is None
    assert count_lines(tmp_path / "meta-spool.jsonl") == 29
    assert_children_recorded(
        stats.get_stats(), pages.count_documents({}) + count_lines(tmp_path / "meta-spool.jsonl")
    )
    said = [r.getMessage() for r in caplog.records if r.name == "scraper.pipelines"]
    refused = [line for line in said if line.startswith("META_STORE refused")]
    assert refused and all("for good (E11000" in line for line in refused)
    assert "29 were refused for good" in said[-1] and "spooled" in said[-1]

    pages.drop_index("listing_url_1")  # the cause, fixed
    report = await replay(project_settings(**settings), retry_timeout=5, say=lambda _: None)
    assert report.ok and report.meta_written == 29
    assert {d["url"] for d in pages.find()} == {f"{site.base}/page/{i}" for i in range(30)}
