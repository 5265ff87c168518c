"""MetaStorePipeline: each item's record to the meta store, in batched upserts."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scraper.items import meta_documents
from scraper.metrics import IGNORED, store_latency
from scraper.pipelines.store_calls import call, open_store
from scraper.retry import describe, with_backoff
from scraper.spool import append_lines
from scraper.stores import RejectedDocuments, build_meta_store
from scraper.work import nothing_on_the_way

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

    from scraper.metrics import Observer
    from scraper.stores import MetaStore

#: Both pipelines log as "scraper.pipelines", the name users filter on.
logger = logging.getLogger("scraper.pipelines")


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
        self.write_seconds: Observer = IGNORED
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
        self.store, self.executor = await open_store(
            build_meta_store, self.crawler, "META_STORE", self.uri, 1
        )
        self.write_seconds = store_latency(self.crawler, "meta")

    async def close_spider(self) -> None:
        self._flush()
        while self.flushes:
            await asyncio.gather(*self.flushes, return_exceptions=True)
        if self.store is not None:
            await call(self.executor, self.store.close)
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
        docs = meta_documents(item)
        if self.batch_done is None:
            self.batch_done = asyncio.get_running_loop().create_future()
            self.timer = asyncio.get_running_loop().call_later(self.flush_interval, self._flush)
        done = self.batch_done
        self.batch.extend(docs)
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
                lambda: self._timed_write(store, executor, docs),
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
            await call(executor, self._spool, failed)
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

    async def _timed_write(
        self, store: MetaStore, executor: ThreadPoolExecutor | None, docs: list[dict[str, Any]]
    ) -> None:
        started = time.perf_counter()
        await call(executor, store.write, docs)
        self.write_seconds.observe(time.perf_counter() - started)

    def _spool(self, docs: list[dict[str, Any]]) -> None:
        append_lines(self.spool, docs)
