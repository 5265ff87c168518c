"""The two storage pipelines: body first, then meta.

Both keep every network call off the reactor thread: S3 uploads run on a bounded
pool of threads, the meta store on one writer thread fed with batches. (A local
body folder is written in place: a 35 KB local write costs less than the thread
hand-off, see BODY_STORE_FS_THREADS.) An item leaves BodyStorePipeline only once
its body is stored, and MetaStorePipeline only once its batch is written, so a
finished item is a stored item. What a store still refuses after its retries is
spooled to local disk (scraper/spool.py) for `scrapy replay`: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from itemadapter import ItemAdapter

from scraper.config import ConfigError, stop_crawl
from scraper.retry import describe, with_backoff
from scraper.spool import BodySpool, append_lines
from scraper.stores import (
    RejectedDocuments,
    build_body_store,
    build_meta_store,
    redact,
)
from scraper.work import nothing_on_the_way

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Self

    from scrapy.crawler import Crawler

    from scraper.stores import BodyStore, MetaStore

logger = logging.getLogger(__name__)

T = TypeVar("T")


async def _call(executor: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the store's threads, or right here for a store that has none."""
    if executor is None:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def _open_store(
    build: Callable[[Crawler, str], Any],
    crawler: Crawler,
    setting: str,
    uri: str,
    threads: int,
) -> tuple[Any, ThreadPoolExecutor | None]:
    """Build a store and its thread pool, open it there; a store that cannot work stops the
    crawl with one line."""
    executor = None
    try:
        store = build(crawler, uri)
        size = min(threads, store.max_threads)
        if size > 0:
            executor = ThreadPoolExecutor(
                size, thread_name_prefix=setting.lower().replace("_", "-")
            )
        # Opening may reach a server (a bucket check): never on the reactor thread.
        await asyncio.get_running_loop().run_in_executor(executor, store.open)
    except ConfigError as exc:  # StoreError among them
        if executor is not None:
            executor.shutdown(wait=False)
        raise stop_crawl(logger, exc.setting or setting, exc) from None
    logger.info("%(setting)s: %(uri)s", {"setting": setting, "uri": redact(uri)})
    return store, executor


class BodyStorePipeline:
    """Stores each 2xx body under its fingerprint and sets ``body_key``.

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
    ) -> None:
        self.crawler = crawler
        self.uri = uri
        self.gzip = gzip
        self.retry_timeout = retry_timeout
        self.threads = threads
        self.spool = BodySpool(spool)
        self.spool_logged = 0.0
        self.executor: ThreadPoolExecutor | None = None
        self.store: BodyStore | None = None

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
        )

    async def open_spider(self) -> None:
        self.store, self.executor = await _open_store(
            build_body_store, self.crawler, "BODY_STORE", self.uri, self.threads
        )

    async def close_spider(self) -> None:
        stats = self.crawler.stats
        assert stats is not None
        if self.store is not None:
            # Retries made inside botocore (its "standard" mode), which our own stats miss.
            sdk_retries = getattr(self.store, "sdk_retries", 0)
            if sdk_retries:
                stats.set_value("body_store/sdk_retries", sdk_retries)
            await _call(self.executor, self.store.close)
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
        store = self.store
        assert store is not None
        put_async = getattr(store, "put_async", None)
        if put_async is not None:  # the store awaits its own I/O (obstore's S3 client)
            stored_key, data, encoding = self._stored_form(key, body)
            return str(await put_async(stored_key, data, content_type, encoding))

        def put() -> str:  # runs in an upload thread (if the store has any), gzip included
            stored_key, data, encoding = self._stored_form(key, body)
            return store.put(stored_key, data, content_type, encoding)

        return await _call(self.executor, put)

    async def _spool(self, adapter: ItemAdapter, key: str, body: bytes, exc: Exception) -> None:
        """Keep a body the store refused in the spool, with its record marked pending; if
        even that fails, the record says the body is missing and why."""
        stats = self.crawler.stats
        assert stats is not None
        adapter["body_pending"] = True
        doc = {k: v for k, v in adapter.items() if k != "body"}
        content_type = adapter.get("content_type")

        def spool() -> None:
            spool_key, data, encoding = self._stored_form(key, body)
            self.spool.put(spool_key, data, content_type, encoding, doc)

        try:
            await _call(self.executor, spool)
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


class MetaStorePipeline:
    """Writes each item's meta document (everything but the body) in batched upserts.

    A batch is flushed when it holds ``META_STORE_BATCH_SIZE`` documents, when it is
    ``META_STORE_FLUSH_INTERVAL`` seconds old, when the crawl has nothing left to
    download (its last items would otherwise wait for the timer), and at close. Each
    item waits for its batch, so a finished item is a stored one. A batch that still
    fails after ``META_STORE_RETRY_TIMEOUT`` seconds is spooled to ``META_STORE_SPOOL``
    (JSON Lines) and logged: nothing is dropped.
    """

    def __init__(
        self,
        crawler: Crawler,
        uri: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        retry_timeout: float = 300,
        spool: str = "data/meta-spool.jsonl",
    ) -> None:
        self.crawler = crawler
        self.uri = uri
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.retry_timeout = retry_timeout
        self.spool = Path(spool)
        self.executor: ThreadPoolExecutor | None = None
        self.store: MetaStore | None = None
        self.batch: list[dict[str, Any]] = []
        self.batch_done: asyncio.Future[None] | None = None
        self.flushes: set[asyncio.Task[None]] = set()
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        s = crawler.settings
        return cls(
            crawler,
            s.get("META_STORE"),
            batch_size=s.getint("META_STORE_BATCH_SIZE"),
            flush_interval=s.getfloat("META_STORE_FLUSH_INTERVAL"),
            retry_timeout=s.getfloat("META_STORE_RETRY_TIMEOUT"),
            spool=s.get("META_STORE_SPOOL"),
        )

    async def open_spider(self) -> None:
        # One writer thread: batches are written in order, one at a time.
        self.store, self.executor = await _open_store(
            build_meta_store, self.crawler, "META_STORE", self.uri, 1
        )

    async def close_spider(self) -> None:
        self._flush()
        while self.flushes:
            await asyncio.gather(*self.flushes, return_exceptions=True)
        if self.store is not None:
            await _call(self.executor, self.store.close)
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        stats = self.crawler.stats
        spooled = stats.get_value("meta_store/spooled", 0) if stats is not None else 0
        if spooled:
            rejected = stats.get_value("meta_store/rejected", 0)
            logger.error(
                "%(n)d meta documents were spooled to %(spool)s: run `scrapy replay` "
                "with this crawl's settings once META_STORE %(when)s",
                {
                    "n": spooled,
                    "spool": self.spool,
                    "when": f"takes them ({rejected} were refused for good: see above)"
                    if rejected
                    else "is back",
                },
            )

    async def process_item(self, item: Any) -> Any:
        doc = {k: v for k, v in ItemAdapter(item).items() if k != "body"}
        if self.batch_done is None:
            self.batch_done = asyncio.get_running_loop().create_future()
            self.timer = asyncio.get_running_loop().call_later(self.flush_interval, self._flush)
        done = self.batch_done
        self.batch.append(doc)
        if len(self.batch) >= self.batch_size or self._draining():
            self._flush()
        await asyncio.shield(done)
        return item

    def _draining(self) -> bool:
        """No item is on its way: flush now rather than wait for the timer."""
        try:
            return nothing_on_the_way(self.crawler)
        except RuntimeError:  # used outside a crawl (no engine)
            return False

    def _flush(self) -> None:
        """Hand the current batch to the writer thread (on the reactor, never blocking)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.batch or self.batch_done is None:
            return
        docs, done = self.batch, self.batch_done
        self.batch, self.batch_done = [], None
        task = asyncio.ensure_future(self._write(docs, done))
        self.flushes.add(task)
        task.add_done_callback(self.flushes.discard)

    async def _write(self, docs: list[dict[str, Any]], done: asyncio.Future[None]) -> None:
        stats = self.crawler.stats
        store, executor = self.store, self.executor
        assert stats is not None and store is not None
        failed: list[dict[str, Any]] = docs
        error: Exception
        try:
            await with_backoff(
                lambda: _call(executor, store.write, docs),
                what="meta_store",
                timeout=self.retry_timeout,
                stats=stats,
                retry_on=store.transient_errors,
            )
        except RejectedDocuments as exc:
            # Refused for good, not an outage (so not retried): the rest of the batch is
            # written, the refused documents are spooled at once.
            failed, error = exc.docs, exc
            stats.inc_value("meta_store/rejected", len(failed))
            if len(docs) > len(failed):
                stats.inc_value("meta_store/written", len(docs) - len(failed))
                stats.inc_value("meta_store/batches")
        except Exception as exc:
            error = exc
        else:
            stats.inc_value("meta_store/written", len(docs))
            stats.inc_value("meta_store/batches")
            done.set_result(None)
            return
        stats.inc_value("meta_store/failed", len(failed))
        try:
            await _call(executor, self._spool, failed)
        except OSError as spool_exc:
            logger.critical(
                "%(n)d meta documents LOST: store failed (%(error)s) and the "
                "spool %(spool)s too (%(spool_error)s)",
                {
                    "n": len(failed),
                    "error": describe(error),
                    "spool": self.spool,
                    "spool_error": describe(spool_exc),
                },
            )
            done.set_exception(error)
            return
        stats.inc_value("meta_store/spooled", len(failed))
        if isinstance(error, RejectedDocuments):
            logger.error(
                "META_STORE refused %(n)d of %(total)d documents for good (%(why)s): "
                "spooled to %(spool)s; `scrapy replay` writes them once the cause is "
                "fixed",
                {"n": len(failed), "total": len(docs), "why": error, "spool": self.spool},
            )
        else:
            logger.error(
                "%(n)d meta documents spooled to %(spool)s: %(error)s",
                {"n": len(failed), "spool": self.spool, "error": describe(error)},
            )
        done.set_result(None)

    def _spool(self, docs: list[dict[str, Any]]) -> None:
        append_lines(self.spool, docs)
