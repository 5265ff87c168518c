"""The downloader: Scrapy's, with each slot's concurrency held when requests queue up.

Scrapy 2.19's ``Downloader._process_queue`` starts a slot's queued requests while
``slot.free_transfer_slots() > 0``; but under the asyncio reactor each download starts as
a task (``loop.create_task``), and counts as transferring only once that task runs. So a
slot handed 40 requests at once starts all 40, whatever its concurrency: measured, 38 in
flight at the site on a slot of 3 (tests/test_sites.py). What held a per-site limit until
then was the download handler's connection pool per host, sized from
CONCURRENT_REQUESTS_PER_DOMAIN when the handler is built; a slot's concurrency changed
later (a per-site limit applied after the start, scraper/sites.py; a slot slowed by
Retry-After, scraper/politeness.py) was not held.

Here a request counts as transferring from the moment it leaves the slot's queue (the
download adds it again, a no-op on a set, and removes it when done).

In a distributed crawl the delays between requests to a site are a pace shared by every
node, kept in Redis (scraper/distributed/queue.py): each request comes with its start time.
``shared_pace`` then takes the slots' own delays away; kept, each node's randomized delay
(±50%) made some requests late and the next ones bunch up behind them at the site.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

from scrapy.core.downloader import Downloader as ScrapyDownloader
from scrapy.utils.asyncio import call_later
from scrapy.utils.defer import _schedule_coro

if TYPE_CHECKING:
    from scrapy.core.downloader import Slot


class Downloader(ScrapyDownloader):
    """Scrapy's Downloader (DOWNLOADER), holding each slot's concurrency."""

    def _process_queue(self, slot: Slot) -> None:
        # Scrapy 2.19's, but for the line marked.
        if slot.latercall:
            return
        now = monotonic()
        delay = slot.download_delay()
        if delay:
            penalty = delay - now + slot.lastseen
            if penalty > 0:
                slot.latercall = call_later(penalty, self._latercall, slot)
                return
        while slot.queue and slot.free_transfer_slots() > 0:
            slot.lastseen = now
            request, queue_dfd = slot.queue.popleft()
            slot.transferring.add(request)  # counted now: the task starts later
            _schedule_coro(self._wait_for_download(slot, request, queue_dfd))
            if delay:  # no burst when requests are spaced by a delay
                self._process_queue(slot)
                break

    def shared_pace(self) -> None:
        """Delays between requests to a site are kept by the crawl, not by each slot: slots
        (existing and new) get none of their own."""
        self._delay = 0.0
        self.per_slot_settings = {
            key: {**conf, "delay": 0.0} for key, conf in self.per_slot_settings.items()
        }
        for slot in self.slots.values():
            slot.delay = 0.0
