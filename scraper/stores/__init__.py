"""Body stores and meta stores, chosen by the scheme of a URI setting.

Stores are plain blocking classes: the pipelines call them only from their own
worker threads, never from the reactor thread. Settings may add schemes
(``BODY_STORES`` / ``META_STORES``), as Scrapy's ``FEED_STORAGES`` does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from scrapy.utils.misc import load_object

from scraper.config import ConfigError

if TYPE_CHECKING:
    from datetime import datetime

    from scrapy.crawler import Crawler

    from scraper.previous import Previous

BODY_STORES_BASE = {
    "": "scraper.stores.body.FSBodyStore",
    "file": "scraper.stores.body.FSBodyStore",
    "s3": "scraper.stores.s3.S3BodyStore",
}
META_STORES_BASE = {
    "": "scraper.stores.meta.JsonLinesMetaStore",
    "file": "scraper.stores.meta.JsonLinesMetaStore",
    "mongodb": "scraper.stores.meta.MongoMetaStore",
    "mongodb+srv": "scraper.stores.meta.MongoMetaStore",
}


class StoreError(ConfigError):
    """A store that cannot be used as configured (a bucket missing, keys refused, a file
    that is not ours): the configuration error of a store. The message is one line, free
    of secrets; ``setting`` is named by whoever knows it (the pipeline opening the store)
    when the store does not."""

    def __init__(self, why: str, setting: str = "") -> None:
        super().__init__(setting, why)


class RejectedDocuments(Exception):
    """The meta store refused some documents for good (not an outage): retrying the same
    write cannot help. The others of the batch were written. The message is one line."""

    def __init__(self, docs: list[dict[str, Any]], reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.docs = docs


class BodyStore(Protocol):
    """Where bodies go. Methods block; callers run them in worker threads."""

    #: Errors worth retrying (the store is down or slow), as opposed to bugs and refusals.
    transient_errors: tuple[type[BaseException], ...]
    #: The most worker threads that help (the pipeline uses min(BODY_STORE_THREADS, this));
    #: 0 means the store is fast local I/O, called on the reactor thread.
    max_threads: int

    def open(self) -> None:
        """Check that the store can be written to; raise StoreError if not."""

    def put(self, key: str, body: bytes, content_type: str | None, encoding: str | None) -> str:
        """Store ``body`` under ``key`` (overwriting) and return where it went. A store may
        also have ``async def put_async(...)`` (same arguments): the pipeline then awaits
        it on the event loop instead of calling ``put`` in a thread."""

    def close(self) -> None:
        """Release connections."""


class MetaStore(Protocol):
    """Where meta documents go. Methods block; callers run them in one worker thread."""

    transient_errors: tuple[type[BaseException], ...]

    def open(self) -> None:
        """Connect, ensure the unique index; raise StoreError if the store is unusable."""

    def write(self, docs: list[dict[str, Any]]) -> None:
        """Upsert ``docs`` keyed by their ``fingerprint``: a replayed document replaces its twin."""

    def close(self) -> None:
        """Make everything written durable and release connections."""


class PreviousRecords(Protocol):
    """A meta store that a re-crawl can read (scraper/recrawl.py). Methods block."""

    def previous(self, fingerprints: list[str]) -> dict[str, Previous]:
        """What the store holds of these fingerprints (those it has), in one call."""

    def mark_gone(self, listings: list[str], crawl_id: str, when: datetime) -> int:
        """Set ``gone_at`` on the records of these listings not linked by crawl
        ``crawl_id`` (nor marked already); how many."""


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``, fit for logs and errors."""
    return re.sub(r"(?<=://)([^:/@]*):[^@/]*@", r"\1:***@", uri)


def _store_class(uri: str, setting: str, base: dict[str, str], extra: dict[str, str]) -> Any:
    schemes = {**base, **extra}
    scheme = urlsplit(uri).scheme.lower() if "://" in uri else ""
    if scheme not in schemes:
        known = ", ".join(f"{s}://" for s in sorted(schemes) if s) + ", or a local path"
        raise StoreError(f"{setting}={redact(uri)!r}: unknown scheme {scheme!r} (use {known})")
    return load_object(schemes[scheme])


def build_body_store(crawler: Crawler, uri: str) -> BodyStore:
    """The body store for ``uri`` (``BODY_STORE``)."""
    cls = _store_class(uri, "BODY_STORE", BODY_STORES_BASE, crawler.settings.getdict("BODY_STORES"))
    store: BodyStore = cls.from_crawler(crawler, uri)
    return store


def build_meta_store(crawler: Crawler, uri: str) -> MetaStore:
    """The meta store for ``uri`` (``META_STORE``)."""
    cls = _store_class(uri, "META_STORE", META_STORES_BASE, crawler.settings.getdict("META_STORES"))
    store: MetaStore = cls.from_crawler(crawler, uri)
    return store
