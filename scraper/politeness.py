"""Sites that push back: 429 / 503 with ``Retry-After`` slow the crawl of that site.

A site that answers ``429 Too Many Requests`` (or ``503 Service Unavailable`` with a
``Retry-After`` header) says how long to wait. :class:`RetryAfterMiddleware` then:

- slows the site's downloader slot: its delay goes up to the stated time, its concurrency
  is halved (at least 1), its jitter is off (Scrapy's default ±50% would send after half
  the time), and its ``lastseen`` is now, so the slot sends nothing before the stated time
  has passed (the retry included). This happens on the ``response_downloaded`` signal,
  before the downloader takes the next request from the slot's queue, as AutoThrottle
  adjusts delays.
- retries the request (``get_retry_request``) with a budget of its own,
  ``RETRY_AFTER_TIMES``, apart from RetryMiddleware's ``RETRY_TIMES``. Out of budget, or
  told to wait more than ``RETRY_AFTER_MAX`` seconds, the request is not retried: it ends
  as a record with its status (``HTTP 429``), and ``dont_retry`` keeps RetryMiddleware
  from retrying it at once. The slot is still slowed, for at most ``RETRY_AFTER_MAX``.
- recovers: every ``RETRY_AFTER_RECOVER_STEP`` successful responses (after the wait) from
  a slowed slot halve its delay, then double its concurrency, until both are back to what
  they were before the first push-back (a second 429 does not make the slowed values the
  new normal).

In a distributed crawl the wait is shared: the site is paused in Redis (the
``site_paused`` signal, scraper/distributed/scheduler.py), so no node leases its requests
before the wait is over.

A 429 without ``Retry-After`` (or with one that cannot be read) waits
``RETRY_AFTER_DEFAULT`` seconds; a 503 without one is left to RetryMiddleware.

Stats: ``politeness/retry_after/received``, ``.../retried``, ``.../gave_up``,
``.../max_seconds`` (the longest wait a site asked for), ``politeness/slowed`` (slots
slowed, or slowed further), ``politeness/recovered`` (slots back to their own values).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import NotConfigured

from scraper.signals import site_paused

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request, Spider
    from scrapy.core.downloader import Slot
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)

#: request.meta key: the wait (seconds) the response to this request asked for.
_WAIT = "_retry_after_wait"
#: request.meta key: retries spent on push-back, apart from RetryMiddleware's retry_times.
TIMES = "retry_after_times"

_DELTA_SECONDS = re.compile(r"\d{1,12}")
#: Below this (and the slot's own delay) a recovering delay is back to the slot's own.
_DELAY_FLOOR = 0.1


def parse_retry_after(
    value: bytes | str | None, date: bytes | str | None = None, now: float | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header value, or None if it says nothing usable.

    The value is delta-seconds (``"120"``) or an HTTP-date (``"Fri, 27 Nov 2026 17:00:00
    GMT"``). A date is measured from the response's own ``Date`` header when it has one
    (so a server clock that differs from ours does not matter), else from ``now`` (our
    clock, ``time.time()`` by default). A date in the past means 0.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    start = _http_date(date.decode("latin-1") if isinstance(date, bytes) else date)
    if start is None:
        start = time.time() if now is None else now
    return max(0.0, when - start)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # RFC 9110: HTTP-dates are GMT
        return None
    return parsed.timestamp()


@dataclass
class _Slowed:
    """A slowed slot and the values it had before its first push-back."""

    slot: Slot
    delay: float
    concurrency: int
    jitter: float
    until: float  # monotonic time the stated wait ends
    successes: int = 0


class RetryAfterMiddleware:
    """Honours ``Retry-After`` on 429/503: slows the site's slot, retries after the wait."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        if not settings.getbool("RETRY_AFTER_ENABLED"):
            raise NotConfigured
        self.crawler = crawler
        self.stats = crawler.stats
        self.codes = {int(code) for code in settings.getlist("RETRY_AFTER_HTTP_CODES")}
        self.default = settings.getfloat("RETRY_AFTER_DEFAULT")
        self.max_wait = settings.getfloat("RETRY_AFTER_MAX")
        self.max_times = settings.getint("RETRY_AFTER_TIMES")
        self.recover_step = max(1, settings.getint("RETRY_AFTER_RECOVER_STEP"))
        self.slowed: dict[str, _Slowed] = {}
        crawler.signals.connect(self._response_downloaded, signal=signals.response_downloaded)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(crawler)

    def wait_for(self, response: Response) -> float | None:
        """The seconds ``response`` asks to wait, or None when it is not a push-back."""
        if response.status not in self.codes:
            return None
        seconds = parse_retry_after(
            response.headers.get(b"Retry-After"), response.headers.get(b"Date")
        )
        if seconds is None and response.status == 429:
            return self.default
        return seconds

    # -- on the response_downloaded signal: before the slot sends its next request -------

    def _response_downloaded(
        self, response: Response, request: Request, spider: Spider | None = None
    ) -> None:
        key = request.meta.get("download_slot")
        if key is None:
            return
        slot = self.crawler.engine.downloader.slots.get(key) if self.crawler.engine else None
        if slot is None:
            return
        state = self.slowed.get(key)
        if state is not None and state.slot is not slot:  # the slot was collected and renewed
            del self.slowed[key]
            state = None
        seconds = None if request.meta.get("dont_retry") else self.wait_for(response)
        if seconds is None:
            if state is not None and response.status < 500:  # the site answered: a success
                self._recover(key, state)
            return
        request.meta[_WAIT] = seconds
        self.stats.inc_value("politeness/retry_after/received")
        self.stats.max_value("politeness/retry_after/max_seconds", math.ceil(seconds))
        self._slow(key, slot, state, seconds, response.status)

    def _slow(
        self, key: str, slot: Slot, state: _Slowed | None, stated: float, status: int
    ) -> None:
        seconds = min(stated, self.max_wait)
        now = time.monotonic()
        waiting = state is not None and now < state.until
        if state is None:
            state = self.slowed[key] = _Slowed(
                slot, slot.delay, slot.concurrency, slot.jitter, until=0.0
            )
        state.successes = 0
        # Nothing leaves the slot before lastseen + delay: the stated time from now.
        state.until = max(state.until, now + seconds)
        slot.delay = max(slot.delay, seconds)
        slot.lastseen = now
        slot.jitter = 0.0
        if waiting:
            # Another answer of the same burst (sent before the slot slowed down): the wait
            # is extended if need be, concurrency is not halved again.
            return
        # Other nodes of a distributed crawl wait too (scraper/distributed/scheduler.py).
        self.crawler.signals.send_catch_log(site_paused, site=key, seconds=seconds)
        slot.concurrency = max(1, slot.concurrency // 2)
        self.stats.inc_value("politeness/slowed")
        logger.warning(
            "Politeness: %(site)s answered %(status)d, Retry-After %(stated).0f s: "
            "nothing sent to it for %(seconds).0f s, then delay %(delay).1f s and "
            "concurrency %(concurrency)d until it recovers",
            {
                "site": key,
                "status": status,
                "stated": stated,
                "seconds": seconds,
                "delay": slot.delay,
                "concurrency": slot.concurrency,
            },
        )

    def _recover(self, key: str, state: _Slowed) -> None:
        if time.monotonic() < state.until:
            return  # sent before the push-back: says nothing about the site now
        state.successes += 1
        if state.successes < self.recover_step:
            return
        state.successes = 0
        slot = state.slot
        if slot.delay > state.delay:
            slot.delay /= 2
            if slot.delay < max(state.delay, _DELAY_FLOOR):
                slot.delay = state.delay
                slot.jitter = state.jitter
        elif slot.concurrency < state.concurrency:
            slot.concurrency = min(state.concurrency, slot.concurrency * 2)
        if (slot.delay, slot.concurrency) == (state.delay, state.concurrency):
            slot.jitter = state.jitter
            del self.slowed[key]
            self.stats.inc_value("politeness/recovered")
            logger.info(
                "Politeness: %(site)s recovered: delay %(delay).1f s, "
                "concurrency %(concurrency)d again",
                {"site": key, "delay": slot.delay, "concurrency": slot.concurrency},
            )

    def rebase_concurrency(self, key: str, slot: Slot, concurrency: int) -> bool:
        """The slot ``key`` is to run ``concurrency`` requests at once from now on (a
        crawl's per-site limit set after it started, scraper/sites.py). If it is slowed
        down, that becomes the value it recovers to, and its slowed concurrency stays
        (if lower): True. False when it is not slowed (the caller sets it)."""
        state = self.slowed.get(key)
        if state is None or state.slot is not slot:
            return False
        state.concurrency = concurrency
        slot.concurrency = min(slot.concurrency, concurrency)
        return True

    # -- in the middleware chain: retry or give up ------------------------------------------

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        seconds = request.meta.pop(_WAIT, None)
        if seconds is None:
            return response
        done = request.meta.get(TIMES, 0)
        if seconds > self.max_wait or done >= self.max_times:
            request.meta["dont_retry"] = True  # RetryMiddleware must not retry it at once
            self.stats.inc_value("politeness/retry_after/gave_up")
            why = (
                f"asked to wait {seconds:.0f} s, over RETRY_AFTER_MAX={self.max_wait:.0f}"
                if seconds > self.max_wait
                else f"still {response.status} after RETRY_AFTER_TIMES={self.max_times}"
            )
            logger.warning(
                "Politeness: gave up on %(url)s: %(why)s", {"url": request.url, "why": why}
            )
            return response
        # get_retry_request counts in meta["retry_times"]: give it this budget's count, and
        # give RetryMiddleware's count back to the retry.
        retry_times = request.meta.get("retry_times")
        counted = request.replace(meta={**request.meta, "retry_times": done})
        assert self.crawler.spider is not None
        retry = get_retry_request(
            counted,
            spider=self.crawler.spider,
            reason=f"{response.status} with Retry-After",
            max_retry_times=self.max_times,
            stats_base_key="politeness/retry_after",
        )
        assert retry is not None  # within the budget, checked above
        retry.meta[TIMES] = done + 1
        if retry_times is None:
            del retry.meta["retry_times"]
        else:
            retry.meta["retry_times"] = retry_times
        self.stats.inc_value("politeness/retry_after/retried")
        return retry
