"""PageItem: what one crawled child page becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    body: bytes | None = field(default=None, repr=False)
