"""PageItem: what one crawled child page becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter

if TYPE_CHECKING:
    from datetime import datetime


@dataclass
class PageItem:
    """One child page: its meta document plus its body.

    Every discovered child URL ends as exactly one PageItem: a failed fetch too,
    with ``status`` (if the server answered) and ``error`` set and no body.
    The body goes to the body store; everything else is the meta document.
    """

    fingerprint: str  # request fingerprint, hex: the meta document's id and the body's key
    url: str
    listing_url: str
    fetched_at: datetime
    final_url: str | None = None  # after redirects
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    length: int | None = None
    sha256: str | None = None
    title: str | None = None
    elapsed: float | None = None  # download latency, seconds
    error: str | None = None
    canonical_url: str | None = None  # the page's <link rel="canonical">, absolute
    duplicate_of: str | None = None  # DEDUP_CANONICAL: the fingerprint that holds its body
    body_key: str | None = None  # set by BodyStorePipeline once the body is stored
    # True while the body waits in BODY_STORE_SPOOL (the store refused it past every retry;
    # body_key is None until `scrapy replay` stores it and clears this).
    body_pending: bool = False
    # Recurring crawls (scraper/recrawl.py). ``listing`` is the list page the crawl started
    # from (its first page, or the URL template/file line/sitemap it was given) and
    # ``crawl_id`` the crawl that last linked this child; ``first_seen``/``last_seen`` when
    # a crawl first/last fetched it; ``changed_at`` when a crawl found its body different
    # from the one stored before (None while it never changed); ``unchanged`` whether this
    # crawl found it as stored (a 304, or the same sha256); ``gone_at`` when a complete
    # crawl of its listing no longer linked it (None while it is linked).
    listing: str | None = None
    crawl_id: str | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    changed_at: datetime | None = None
    unchanged: bool | None = None
    gone_at: datetime | None = None
    body: bytes | None = field(default=None, repr=False)
    # The fields this record changes in the stored one (a 304, a failure of a page stored
    # before: what was stored stays); None: the record is whole.
    update_only: tuple[str, ...] | None = field(default=None, repr=False)


@dataclass
class LinkedRecords:
    """The records of children a re-crawl did not ask again (RECRAWL_MIN_AGE, see
    scraper/recrawl.py), one item for a list page's lookup: each a partial update of a
    stored record. One item, not one each: Scrapy processes a response's items one at a
    time (CONCURRENT_ITEMS = 1), each waiting for its meta batch to be written, so a
    thousand small items would be a thousand writes."""

    records: list[PageItem]


#: Item fields that are not part of the meta document.
NOT_STORED = ("body", "update_only")


def meta_documents(item: Any) -> list[dict[str, Any]]:
    """What the meta store gets of an item: one document, or LinkedRecords' each."""
    if isinstance(item, LinkedRecords):
        return [meta_document(record) for record in item.records]
    return [meta_document(item)]


def meta_document(item: Any) -> dict[str, Any]:
    """What the meta store gets of an item: everything but its body, or only the fields
    the item updates."""
    adapter = ItemAdapter(item)
    only = adapter.get("update_only")
    if only:
        return {k: adapter.get(k) for k in ("fingerprint", *only)}
    return {k: v for k, v in adapter.items() if k not in NOT_STORED}
