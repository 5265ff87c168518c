"""Request fingerprints that keep list pages and child pages apart.

A URL can be both: WordPress's page 1 links ``/page/20/`` in its pager, and a site may
link a list page from another list page's content. With one fingerprint per URL, the
first request for it wins the dupefilter and the other is dropped: a list page fetched
as a child never has its children taken (issue 13's lost page 20), or a child stored
as a list page never gets a record. List-page requests (``meta["list_page"]``) get a
fingerprint of their own, so each URL is crawled once *as a list page* and stored once
*as a child*. Children keep Scrapy's fingerprint: it is their record's id and body key.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from scrapy.utils.request import RequestFingerprinter

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler

#: request.meta key: this request is a list page (a sitemap counts as one).
LIST_PAGE = "list_page"


class ListingFingerprinter:
    """Scrapy's fingerprint for children; a distinct one for list pages."""

    def __init__(self, crawler: Crawler | None = None) -> None:
        self._default = RequestFingerprinter(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def fingerprint(self, request: Request) -> bytes:
        fingerprint = self._default.fingerprint(request)
        if request.meta.get(LIST_PAGE):
            return hashlib.sha1(b"list page\0" + fingerprint).digest()
        return fingerprint
