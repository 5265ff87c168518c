"""When is a leased request done? When everything it produced is stored.

A child page is done once its item has left the last pipeline; a list page once its
callback's output is exhausted and every request in it has reached the scheduler, which
enqueues them in Redis before it sends the acknowledgement. The output being exhausted
is not enough: Scrapy hands a callback's output on through a queue (up to
2 x CONCURRENT_ITEMS ahead of the workers that pass requests to the engine), so its last
requests may still wait there, and a node killed then would have acknowledged a list
page whose last children never reached Redis. ``request_scheduled`` says each one has.

LeaseTracker watches callback outputs, item signals and ``request_scheduled``, and sends
``request_done`` for each leased request; the scheduler acknowledges its lease. A
callback or errback that yields no item can send ``request_done`` itself
(ListingSpider.list_failed does).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from scrapy import Request, signals
from scrapy.http import Response

from scraper.distributed.leases import FOUND_BY, LEASE, YIELDED_BY
from scraper.signals import request_done

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from typing import Self

    from scrapy.crawler import Crawler
    from twisted.python.failure import Failure


def lease_of(response: Response | Failure | None) -> tuple[str | None, Request | None]:
    """The lease token behind a response or a download failure, if any."""
    request = getattr(response, "request", None)
    if isinstance(request, Request):
        return request.meta.get(LEASE), request
    return None, None


class LeaseTracker:
    """Spider middleware: counts the items each leased response yields, and their fates."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.yielded: Counter[str] = Counter()
        self.finished: Counter[str] = Counter()
        self.unscheduled: Counter[str] = Counter()  # requests yielded, not yet scheduled
        self.output_done: set[str] = set()
        self.parents: dict[str, Request] = {}  # leased request of each token with output due

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        tracker = cls(crawler)
        for signal in (signals.item_scraped, signals.item_dropped, signals.item_error):
            crawler.signals.connect(tracker.item_finished, signal=signal)
        crawler.signals.connect(tracker.request_scheduled, signal=signals.request_scheduled)
        return tracker

    async def process_spider_output(
        self, response: Response, result: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        token, request = lease_of(response)
        try:
            async for output in result:
                if token is not None:
                    if not isinstance(output, Request):
                        self.yielded[token] += 1
                    else:
                        self.unscheduled[token] += 1
                        output.meta[YIELDED_BY] = token
                        if output.priority > 0:
                            # A list page found while crawling a leased one: the scheduler
                            # crawls it at once (see DistributedScheduler.enqueue_request).
                            output.meta[FOUND_BY] = token
                yield output
        finally:
            if token is not None and request is not None:
                self.output_done.add(token)
                self.parents[token] = request
                self._maybe_done(token, request)

    def item_finished(self, item: Any, response: Response | Failure, **kwargs: Any) -> None:
        """item_scraped / item_dropped / item_error: one item of a request has its fate."""
        token, request = lease_of(response)
        if token is None or request is None:
            return
        if not isinstance(response, Response):
            # An errback's output bypasses spider middlewares: its item is the whole output.
            self.crawler.signals.send_catch_log(request_done, request=request)
            return
        self.finished[token] += 1
        self._maybe_done(token, request)

    def request_scheduled(self, request: Request, **kwargs: Any) -> None:
        """Scrapy's request_scheduled, sent just before the engine hands the request to the
        scheduler (in the same call): one request of a leased response is on its way."""
        token = request.meta.pop(YIELDED_BY, None)
        if token is None:
            return
        self.unscheduled[token] -= 1
        parent = self.parents.get(token)
        if parent is not None:
            self._maybe_done(token, parent)

    def _maybe_done(self, token: str, request: Request) -> None:
        if (
            token in self.output_done
            and self.finished[token] >= self.yielded[token]
            and self.unscheduled[token] <= 0
        ):
            self.output_done.discard(token)
            self.yielded.pop(token, None)
            self.finished.pop(token, None)
            self.unscheduled.pop(token, None)
            self.parents.pop(token, None)
            self.crawler.signals.send_catch_log(request_done, request=request)
