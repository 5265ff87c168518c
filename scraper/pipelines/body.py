"""BodyStorePipeline: each 2xx body to the body store, before its record is written."""

from __future__ import annotations

import gzip
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

from scraper.items import meta_document
from scraper.metrics import IGNORED, store_latency
from scraper.pipelines.store_calls import call, open_store
from scraper.retry import describe, with_backoff
from scraper.spool import BodySpool
from scraper.stores import build_body_store

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

    from scraper.metrics import Observer
    from scraper.stores import BodyStore

#: Both pipelines log as "scraper.pipelines", the name users filter on.
logger = logging.getLogger("scraper.pipelines")


class BodyStorePipeline:
    """Stores each 2xx body under its fingerprint and sets ``body_key``; with
    ``BODY_STORE_VERSIONS``, under ``<fingerprint>-<sha256>``, so that each distinct
    version of a page is kept. A body a re-crawl found unchanged comes without its body
    (scraper/recrawl.py) and is not stored again.

    A body the store still refuses after ``BODY_STORE_RETRY_TIMEOUT`` seconds (and
    botocore's own retries) is spooled to ``BODY_STORE_SPOOL`` and its record marked
    ``body_pending``; `scrapy replay` stores it later.
    """

    def __init__(
        self,
        crawler: Crawler,
        uri: str,
        *,
        threads: int = 32,
        gzip: bool = False,
        retry_timeout: float = 300,
        spool: str = "data/body-spool",
        versions: bool = False,
    ) -> None:
        self.crawler = crawler
        self.uri = uri
        self.gzip = gzip
        self.versions = versions
        self.retry_timeout = retry_timeout
        self.threads = threads
        self.spool = BodySpool(spool)
        self.spool_logged = 0.0
        self.executor: ThreadPoolExecutor | None = None
        self.store: BodyStore | None = None
        self.put_seconds: Observer = IGNORED

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        s = crawler.settings
        return cls(
            crawler,
            s.get("BODY_STORE"),
            threads=s.getint("BODY_STORE_THREADS"),
            gzip=s.getbool("BODY_STORE_GZIP"),
            retry_timeout=s.getfloat("BODY_STORE_RETRY_TIMEOUT"),
            spool=s.get("BODY_STORE_SPOOL"),
            versions=s.getbool("BODY_STORE_VERSIONS"),
        )

    async def open_spider(self) -> None:
        self.store, self.executor = await open_store(
            build_body_store, self.crawler, "BODY_STORE", self.uri, self.threads
        )
        self.put_seconds = store_latency(self.crawler, "body")

    async def close_spider(self) -> None:
        stats = self.crawler.stats
        assert stats is not None
        if self.store is not None:
            # Retries made inside botocore (its "standard" mode), which our own stats miss.
            sdk_retries = getattr(self.store, "sdk_retries", 0)
            if sdk_retries:
                stats.set_value("body_store/sdk_retries", sdk_retries)
            await call(self.executor, self.store.close)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        spooled = stats.get_value("body_store/spooled", 0)
        if spooled:
            logger.error(
                "%(n)d bodies were spooled to %(spool)s (their records say "
                "body_pending): run `scrapy replay` with this crawl's settings once "
                "BODY_STORE is back",
                {"n": spooled, "spool": self.spool.root},
            )

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        body = adapter.get("body")
        status = adapter.get("status") or 0
        if body is None or not 200 <= status < 300 or self.store is None:
            return item
        stats = self.crawler.stats
        assert stats is not None
        key = adapter["fingerprint"]
        if self.versions:  # one object per distinct body, not one per page
            key = f"{key}-{adapter['sha256']}"
        try:
            adapter["body_key"] = await with_backoff(
                lambda: self._put(key, body, adapter.get("content_type")),
                what="body_store",
                timeout=self.retry_timeout,
                stats=stats,
                retry_on=self.store.transient_errors,
            )
        except Exception as exc:
            await self._spool(adapter, key, body, exc)
            return item
        stats.inc_value("body_store/stored")
        stats.inc_value("body_store/bytes", len(body))
        return item

    def _stored_form(self, key: str, body: bytes) -> tuple[str, bytes, str | None]:
        """The key, bytes and content encoding a body is stored with."""
        if self.gzip:
            return key + ".gz", gzip.compress(body, 6), "gzip"
        return key, body, None

    async def _put(self, key: str, body: bytes, content_type: str | None) -> str:
        started = time.perf_counter()
        stored_key = await self._upload(key, body, content_type)
        self.put_seconds.observe(time.perf_counter() - started)
        return stored_key

    async def _upload(self, key: str, body: bytes, content_type: str | None) -> str:
        store = self.store
        assert store is not None
        put_async = getattr(store, "put_async", None)
        if put_async is not None:  # the store awaits its own I/O (obstore's S3 client)
            stored_key, data, encoding = self._stored_form(key, body)
            return str(await put_async(stored_key, data, content_type, encoding))

        def put() -> str:  # runs in an upload thread (if the store has any), gzip included
            stored_key, data, encoding = self._stored_form(key, body)
            return store.put(stored_key, data, content_type, encoding)

        return await call(self.executor, put)

    async def _spool(self, adapter: ItemAdapter, key: str, body: bytes, exc: Exception) -> None:
        """Keep a body the store refused in the spool, with its record marked pending; if
        even that fails, the record says the body is missing and why."""
        stats = self.crawler.stats
        assert stats is not None
        adapter["body_pending"] = True
        doc = meta_document(adapter.item)
        content_type = adapter.get("content_type")

        def spool() -> None:
            spool_key, data, encoding = self._stored_form(key, body)
            self.spool.put(spool_key, data, content_type, encoding, doc)

        try:
            await call(self.executor, spool)
        except (OSError, ValueError) as spool_exc:
            adapter["body_pending"] = False
            stats.inc_value("body_store/failed")
            adapter["error"] = f"body not stored: {describe(exc)}"
            logger.error(
                "Body of %(url)s not stored: %(error)s; not spooled either: %(spool_error)s",
                {
                    "url": adapter.get("url"),
                    "error": describe(exc),
                    "spool_error": describe(spool_exc),
                },
            )
            return
        stats.inc_value("body_store/spooled")
        now = time.monotonic()
        if now - self.spool_logged > 5:  # one line every few seconds during an outage
            self.spool_logged = now
            logger.error(
                "BODY_STORE still failing after %(timeout)ds of retries (%(error)s): "
                "bodies go to %(spool)s, %(n)d so far; `scrapy replay` stores them",
                {
                    "timeout": self.retry_timeout,
                    "error": describe(exc),
                    "spool": self.spool.root,
                    "n": stats.get_value("body_store/spooled"),
                },
            )
