"""scrapy replay: store what crawls spooled while a store was down.

    scrapy replay -s BODY_STORE=s3://bucket/prefix -s META_STORE=mongodb://...  # the crawl's -s

1. The meta spool (``META_STORE_SPOOL``): every document is upserted into
   ``META_STORE`` (keyed by fingerprint, so a document written twice is one record).
2. The body spool (``BODY_STORE_SPOOL``): every body is uploaded to ``BODY_STORE``
   under its key, then its meta record is upserted with ``body_key`` set and
   ``body_pending`` false.

A spooled item is removed only once it is stored; what fails stays for the next run,
which is always safe (both writes are idempotent). The exit code is 1 if anything is
left in a spool. Store URIs are printed with their passwords replaced by ``***``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy import Spider
from scrapy.commands import ScrapyCommand
from scrapy.crawler import Crawler
from scrapy.exceptions import UsageError
from scrapy.settings import Settings
from scrapy.statscollectors import StatsCollector
from scrapy.utils.log import configure_logging

from scraper.logsetup import install, secrets_in
from scraper.retry import describe, with_backoff
from scraper.spool import (
    BodySpool,
    SpooledBody,
    count_lines,
    read_lines,
    rejected_path,
    take_lines,
)
from scraper.stores import StoreError, build_body_store, build_meta_store, redact

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.settings import BaseSettings

    from scraper.stores import BodyStore, MetaStore

#: Rounds of "take the meta spool, write it": a crawl appending all the time cannot keep a
#: replay going forever.
MAX_META_ROUNDS = 10
#: Bodies that failed, one line each, before the summary's count says the rest.
MAX_ERRORS_SHOWN = 10


@dataclass
class ReplayReport:
    """What one replay did; ``left`` is what is still spooled (0 means success)."""

    meta_written: int = 0
    bodies_stored: int = 0
    meta_left: int = 0
    bodies_left: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.meta_left or self.bodies_left or self.errors)


class _Stores:
    """The two stores, each opened on first use, with the threads that call them."""

    def __init__(self, settings: BaseSettings) -> None:
        if not isinstance(settings, Settings):
            settings = Settings(settings)
        self.crawler = Crawler(Spider, settings)  # store factories read crawler.settings only
        self.stats = StatsCollector(self.crawler)
        self.meta: MetaStore | None = None
        self.body: BodyStore | None = None
        self.meta_threads = ThreadPoolExecutor(1, thread_name_prefix="replay-meta")
        self.body_threads: ThreadPoolExecutor | None = None

    async def call(self, executor: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def open_meta(self) -> MetaStore:
        if self.meta is None:
            store = build_meta_store(self.crawler, self.crawler.settings["META_STORE"])
            await self.call(self.meta_threads, store.open)
            self.meta = store
        return self.meta

    async def open_body(self) -> BodyStore:
        if self.body is None:
            store = build_body_store(self.crawler, self.crawler.settings["BODY_STORE"])
            threads = max(
                1, min(self.crawler.settings.getint("BODY_STORE_THREADS"), store.max_threads)
            )
            self.body_threads = ThreadPoolExecutor(threads, thread_name_prefix="replay-body")
            await self.call(self.body_threads, store.open)
            self.body = store
        return self.body

    async def close(self) -> None:
        for store, executor in ((self.body, self.body_threads), (self.meta, self.meta_threads)):
            if store is not None and executor is not None:
                try:
                    await self.call(executor, store.close)
                except Exception as exc:  # closing is best effort; what was written is stored
                    logging.getLogger(__name__).warning(
                        "Closing a store: %(error)s", {"error": describe(exc)}
                    )
            if executor is not None:
                executor.shutdown(wait=True)


async def replay(
    settings: BaseSettings, *, retry_timeout: float = 30, say: Callable[[str], None] = print
) -> ReplayReport:
    """Replay both spools named in ``settings`` into the stores named there."""
    report = ReplayReport()
    meta_spool = Path(settings["META_STORE_SPOOL"])
    bodies = BodySpool(settings["BODY_STORE_SPOOL"])
    docs_waiting, bodies_waiting = count_lines(meta_spool), bodies.count()
    if not docs_waiting and not bodies_waiting:
        say(
            f"Nothing to replay: META_STORE_SPOOL {meta_spool} and BODY_STORE_SPOOL "
            f"{bodies.root} are empty."
        )
        return report
    say(
        f"Replaying {docs_waiting} meta document(s) from {meta_spool} and {bodies_waiting} "
        f"body(ies) from {bodies.root}"
    )
    stores = _Stores(settings)
    try:
        meta_store_ok = await _replay_meta(stores, meta_spool, retry_timeout, report, say)
        if bodies_waiting and not meta_store_ok:
            say("Bodies not replayed: their records could not be updated in META_STORE")
        elif bodies_waiting:
            await _replay_bodies(
                stores, bodies, settings.getint("BODY_STORE_THREADS"), retry_timeout, report, say
            )
    finally:
        await stores.close()
    report.meta_left, report.bodies_left = count_lines(meta_spool), bodies.count()
    retries = sum(
        stores.stats.get_value(f"{what}/retries", 0) for what in ("meta_store", "body_store")
    )
    say(
        f"Replayed: {report.meta_written} meta document(s) written, {report.bodies_stored} "
        f"body(ies) stored and their records updated ({retries} retries). Left in the "
        f"spools: {report.meta_left} document(s), {report.bodies_left} body(ies)."
    )
    if not report.ok:
        say(
            "Not everything could be replayed; run `scrapy replay` again once the stores "
            "are back (replaying twice is safe)."
        )
    return report


async def _write_meta(stores: _Stores, docs: list[dict[str, Any]], timeout: float) -> None:
    store = await stores.open_meta()
    await with_backoff(
        lambda: stores.call(stores.meta_threads, store.write, docs),
        what="meta_store",
        timeout=timeout,
        stats=stores.stats,
        retry_on=store.transient_errors,
    )


async def _replay_meta(
    stores: _Stores, spool: Path, timeout: float, report: ReplayReport, say: Callable[[str], None]
) -> bool:
    """Write the meta spool into META_STORE; False if the store failed."""
    batch_size = max(1, stores.crawler.settings.getint("META_STORE_BATCH_SIZE"))
    for _ in range(MAX_META_ROUNDS):
        taken = take_lines(spool)
        if taken is None:
            return True
        docs, bad = read_lines(taken)
        try:
            for start in range(0, len(docs), batch_size):
                batch = docs[start : start + batch_size]
                await _write_meta(stores, batch, timeout)
                report.meta_written += len(batch)
        except Exception as exc:
            report.errors.append(f"META_STORE: {_describe(exc)}")
            say(
                f"META_STORE {redact(stores.crawler.settings['META_STORE'])} did not take the "
                f"spooled documents: {_describe(exc)}; they stay in {taken}"
            )
            return False
        if bad:
            # Kept aside for a person to look at; the next replay goes on without them.
            rejected = rejected_path(spool)
            with rejected.open("ab") as f:
                f.writelines(line if line.endswith(b"\n") else line + b"\n" for line in bad)
            report.errors.append(f"{spool}: {len(bad)} unreadable line(s)")
            say(
                f"{spool}: {len(bad)} line(s) are not meta documents (a line cut by a crash?); "
                f"moved to {rejected}"
            )
        taken.unlink()
    return True


async def _replay_bodies(
    stores: _Stores,
    spool: BodySpool,
    threads: int,
    timeout: float,
    report: ReplayReport,
    say: Callable[[str], None],
) -> None:
    try:
        store = await stores.open_body()
    except StoreError as exc:
        report.errors.append(f"BODY_STORE: {exc}")
        say(f"BODY_STORE unusable: {exc}")
        return
    assert stores.body_threads is not None
    executor = stores.body_threads

    async def upload(entry: SpooledBody) -> str:
        return await with_backoff(
            lambda: stores.call(
                executor, store.put, entry.key, entry.body, entry.content_type, entry.encoding
            ),
            what="body_store",
            timeout=timeout,
            stats=stores.stats,
            retry_on=store.transient_errors,
        )

    paths = list(spool.paths())
    chunk = max(1, threads) * 4
    for start in range(0, len(paths), chunk):
        entries = []
        for path in paths[start : start + chunk]:
            try:
                entries.append(spool.read(path))
            except FileNotFoundError:
                continue  # another replay took it
            except (OSError, ValueError) as exc:
                report.errors.append(f"{path}: {exc}")
                say(f"{path} is not a spooled body ({describe(exc)}); left in place")
        results = await asyncio.gather(*(upload(e) for e in entries), return_exceptions=True)
        stored: list[SpooledBody] = []
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, BaseException):
                report.errors.append(f"BODY_STORE: {_describe(result)}")
                if len(report.errors) <= MAX_ERRORS_SHOWN:  # the count is in the summary
                    say(f"Body {entry.key} not stored: {_describe(result)}")
                continue
            entry.doc.update(body_key=result, body_pending=False)
            stored.append(entry)
        if not stored:
            continue
        try:
            await _write_meta(stores, [e.doc for e in stored], timeout)
        except Exception as exc:
            # The bodies are stored, their records still say pending: keep the spooled
            # bodies, the next replay uploads them again (same key) and updates the records.
            report.errors.append(f"META_STORE: {_describe(exc)}")
            say(
                f"{len(stored)} record(s) not updated: {_describe(exc)}; bodies kept in "
                f"{spool.root}"
            )
            continue
        for entry in stored:
            spool.remove(entry)
        report.bodies_stored += len(stored)


def _describe(exc: BaseException) -> str:
    return redact(str(exc)) if isinstance(exc, StoreError) else redact(describe(exc))


class Command(ScrapyCommand):
    requires_project = True
    requires_crawler_process = False  # no crawl: the stores are called from asyncio.run

    def syntax(self) -> str:
        return "[-s BODY_STORE=... -s META_STORE=...] [--retry-timeout SECONDS]"

    def short_desc(self) -> str:
        return "Store what crawls spooled while a store was down (BODY/META_STORE_SPOOL)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--retry-timeout",
            type=float,
            default=30,
            help="seconds each write keeps retrying a failing store (default 30)",
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        if args:
            raise UsageError("replay takes no arguments; name the stores with -s as for the crawl")
        assert self.settings is not None
        configure_logging(self.settings)
        secrets = secrets_in(self.settings)
        if secrets:
            install(sorted(secrets, key=len, reverse=True))
        try:
            report = asyncio.run(replay(self.settings, retry_timeout=opts.retry_timeout))
        except StoreError as exc:
            print(f"Replay stopped: {exc}")
            self.exitcode = 1
            return
        self.exitcode = 0 if report.ok else 1
