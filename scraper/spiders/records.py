"""What a child page becomes: one PageItem, fetched or failed.

A fetched child (2xx, or a 3xx that was not followed) gives its status, headers, size,
sha256, title and canonical URL, and its body for the body store; a child that could not
be fetched still ends as one record, with the reason in ``error`` (and what its error
response said, for an HTTP error).

A child stored by an earlier crawl (its request carries the previous record, see
scraper/previous.py) is compared with it: a 304, or a body with the same sha256, is
``unchanged`` and its body is not stored again; a failure does not erase what was stored.
"""

from __future__ import annotations

import hashlib
import html
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from scrapy.exceptions import (
    CannotResolveHostError,
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadFailedError,
    DownloadTimeoutError,
    IgnoreRequest,
    ResponseDataLossError,
)
from scrapy.http import TextResponse
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.internet.error import DNSLookupError

from scraper.canonical import canonical_url
from scraper.items import PageItem
from scraper.previous import CRAWL_ID, LISTING, PREVIOUS, Previous, when
from scraper.retry import describe
from scraper.ssrf import AddressRefused

if TYPE_CHECKING:
    from collections.abc import Iterable

    from scrapy import Request
    from scrapy.http import Response
    from twisted.python.failure import Failure

#: What a fetched child is next to its previous record; ``recent``: not fetched, the site
#: gave or confirmed it less than RECRAWL_MIN_AGE ago.
Freshness = Literal["new", "changed", "unchanged", "recent"]

#: Why a child could not be fetched, in a few words (stats ``listing/child_failed/<reason>``,
#: Prometheus ``scraper_children_failed_total{reason}``): a bounded set, never a URL or host.
#: An HTTP error is its status class, ``http_4xx`` or ``http_5xx``.
FailureReason = Literal[
    "timeout",
    "refused",
    "dns",
    "connection",
    "too_large",
    "robots",
    "address_refused",
    "ignored",
    "other",
]
#: The exceptions Scrapy's download handlers raise (both handlers: scrapy/utils/
#: _download_handlers.py), and the SSRF guard's refusal, by reason; first match wins.
_REASONS: tuple[tuple[type[BaseException], FailureReason], ...] = (
    (DownloadTimeoutError, "timeout"),
    (DownloadConnectionRefusedError, "refused"),
    (CannotResolveHostError, "dns"),
    (DNSLookupError, "dns"),
    (DownloadCancelledError, "too_large"),  # what DOWNLOAD_MAXSIZE raises
    (DownloadFailedError, "connection"),
    (ResponseDataLossError, "connection"),
    (AddressRefused, "address_refused"),
)
#: What Scrapy's RobotsTxtMiddleware says when it refuses a request (an IgnoreRequest).
_ROBOTS = "Forbidden by robots.txt"

#: The fields any fetch of a page stored before sets: which crawl saw it, when, and how.
_SEEN_FIELDS = (
    "url",
    "listing_url",
    "listing",
    "crawl_id",
    "fetched_at",
    "status",
    "elapsed",
    "error",
    "unchanged",
    "gone_at",
)
#: The fields a 304 changes in the stored record: the rest (body, hash, headers) stands.
NOT_MODIFIED_FIELDS = (*_SEEN_FIELDS, "last_seen")
#: The fields a failure changes in a record stored before: its last body stays its body.
FAILED_FIELDS = (*_SEEN_FIELDS, "final_url")

#: The fields a child not asked again (RECRAWL_MIN_AGE) changes: this crawl linked it.
LINKED_FIELDS = ("listing_url", "listing", "crawl_id", "gone_at")

_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def extract_title(body: bytes, encoding: str) -> str | None:
    """The page's <title>, read with a regex: a full HTML parse costs more CPU than the fetch."""
    match = _TITLE.search(body, 0, 65536)
    if not match:
        return None
    title = html.unescape(match.group(1).decode(encoding, "replace")).strip()
    return " ".join(title.split())[:1000] or None


def child_record(
    response: Response, listing_url: str, fingerprint: str, header_names: Iterable[str]
) -> tuple[PageItem, Freshness]:
    """The record of a fetched child page, its body included unless it is unchanged."""
    meta = response.request.meta if response.request else {}
    previous = Previous.from_meta(meta.get(PREVIOUS))
    now = datetime.now(UTC)
    if response.status == 304 and previous is not None:
        return not_modified_record(response, listing_url, fingerprint, now), "unchanged"
    body = response.body
    title = canonical = None
    if isinstance(response, TextResponse):
        title = extract_title(body, response.encoding)
        canonical = canonical_url(response)
    item = PageItem(
        fingerprint=fingerprint,
        url=original_url(response.request) if response.request else response.url,
        listing_url=listing_url,
        listing=meta.get(LISTING),
        crawl_id=meta.get(CRAWL_ID),
        fetched_at=now,
        last_seen=now,
        first_seen=now,
        final_url=response.url,
        status=response.status,
        headers=headers(response, header_names),
        content_type=header(response, b"Content-Type"),
        length=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        title=title,
        elapsed=response.meta.get("download_latency"),
        canonical_url=canonical,
        body=body,
    )
    return item, compare(item, previous)


def compare(item: PageItem, previous: Previous | None) -> Freshness:
    """Set what the previous record says of a fetched child: the same body (and one
    stored) is unchanged and not stored again; another body is a change."""
    if previous is None or previous.sha256 is None:
        item.unchanged = False
        return "new"
    item.first_seen = when(previous.first_seen) or item.first_seen
    if previous.body_key and previous.sha256 == item.sha256:
        item.unchanged = True
        item.body_key, item.body = previous.body_key, None
        item.changed_at = when(previous.changed_at)
        return "unchanged"
    item.unchanged = False
    item.changed_at = item.fetched_at
    return "changed"


def not_modified_record(
    response: Response, listing_url: str, fingerprint: str, now: datetime
) -> PageItem:
    """A 304: the stored record stands; this crawl saw it, unchanged."""
    request = response.request
    assert request is not None
    return PageItem(
        fingerprint=fingerprint,
        url=original_url(request),
        listing_url=listing_url,
        listing=request.meta.get(LISTING),
        crawl_id=request.meta.get(CRAWL_ID),
        fetched_at=now,
        last_seen=now,
        status=response.status,
        elapsed=response.meta.get("download_latency"),
        unchanged=True,
        update_only=NOT_MODIFIED_FIELDS,
    )


def linked_record(request: Request, now: datetime) -> PageItem:
    """A child the site confirmed less than RECRAWL_MIN_AGE ago, not asked again: the
    stored record stands; only which crawl last linked it (and from where) changes."""
    return PageItem(
        fingerprint=request.cb_kwargs["fingerprint"],
        url=request.url,
        listing_url=request.cb_kwargs["listing_url"],
        listing=request.meta.get(LISTING),
        crawl_id=request.meta.get(CRAWL_ID),
        fetched_at=now,
        update_only=LINKED_FIELDS,
    )


def failed_child_record(failure: Failure, header_names: Iterable[str], max_size: int) -> PageItem:
    """The record of a child that could not be fetched: the reason, and what an HTTP
    error's response said."""
    request = request_of(failure)
    item = PageItem(
        fingerprint=request.cb_kwargs["fingerprint"],
        url=original_url(request),
        listing_url=request.cb_kwargs["listing_url"],
        listing=request.meta.get(LISTING),
        crawl_id=request.meta.get(CRAWL_ID),
        fetched_at=datetime.now(UTC),
        error=describe_failure(failure, request.meta.get("download_maxsize", max_size)),
        # A page stored before keeps its record; only what this crawl saw changes.
        update_only=FAILED_FIELDS if request.meta.get(PREVIOUS) else None,
    )
    if isinstance(failure.value, HttpError):
        response = failure.value.response
        item.final_url = response.url
        item.status = response.status
        item.headers = headers(response, header_names)
        item.content_type = header(response, b"Content-Type")
        item.length = len(response.body)
        item.elapsed = response.meta.get("download_latency")
    return item


def headers(response: Response, names: Iterable[str]) -> dict[str, str]:
    """The response headers named (META_HEADERS) that it has."""
    return {name: value for name in names if (value := header(response, name.encode()))}


def header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value is not None else None


def original_url(request: Request) -> str:
    """The URL as it was linked, before any redirect."""
    redirects = request.meta.get("redirect_urls")
    return str(redirects[0]) if redirects else request.url


def request_of(failure: Failure) -> Request:
    """The request of an errback's failure: Scrapy sets it on the Failure it passes."""
    request: Request = failure.request  # type: ignore[attr-defined]
    return request


def failure_reason(failure: Failure) -> str:
    """Why a request failed, as one of a few words: ``http_<class>xx`` for an HTTP error
    (its status class), else a FailureReason."""
    exc = failure.value
    if isinstance(exc, HttpError):
        return f"http_{exc.response.status // 100}xx"
    for kind, reason in _REASONS:
        if isinstance(exc, kind):
            return reason
    if isinstance(exc, IgnoreRequest):
        return "robots" if str(exc) == _ROBOTS else "ignored"
    return "other"


def describe_failure(failure: Failure, maxsize: int = 0) -> str:
    """One line: why a request failed."""
    exc = failure.value
    if isinstance(exc, HttpError):
        return f"HTTP {exc.response.status}"
    if isinstance(exc, DownloadCancelledError) and not str(exc) and maxsize:
        # Scrapy cancels a body that outgrows DOWNLOAD_MAXSIZE as it arrives (no
        # Content-Length to refuse it up front) without a message; only a warning says why.
        return (
            f"DownloadCancelledError: response larger than download max size ({maxsize}) "
            "as it arrived"
        )
    return describe(exc) if exc is not None else "failed, no exception given"
