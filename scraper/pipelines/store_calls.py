"""A store's own threads: open it there, call it there, never on the reactor thread
(a store that has no threads is called in place)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from scraper.config import ConfigError, stop_crawl
from scraper.stores import redact

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.crawler import Crawler

#: One logger for both pipelines, under the name users filter on.
logger = logging.getLogger("scraper.pipelines")

T = TypeVar("T")


async def call(executor: ThreadPoolExecutor | None, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in the store's threads, or right here for a store that has none."""
    if executor is None:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def open_store(
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
