"""The live progress bar on a terminal (PROGRESS_BAR): tqdm on stderr, log lines above it.

    stored 1234/5000 |█████▌          | 310 pages/s, 812 in flight, 3 errors, ETA 00:12

Pages stored (records written or spooled) of children discovered so far, pages/s over
the last few seconds, requests in flight, errors, and an ETA once the listing is fully
discovered (Discovery): until then the total still grows, and an ETA would be a guess,
so the bar says "discovering". In distributed mode a node stores pages that every node's
list pages found, so its bar shows its own stored count with no total and no ETA
(`scrapy status` has the crawl's); with JOBDIR, list pages may wait on disk from the
previous run, unseen here, so there is no ETA either.

Scrapy's log handler writes to the same terminal: its stream is wrapped so that each
log line clears the bar, is written, and the bar is drawn again below it (tqdm's
``external_write_mode``), instead of the two overwriting each other.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, TextIO

from scrapy import signals
from tqdm import tqdm
from twisted.internet import task

from scraper.distributed.connection import distributed
from scraper.figures import Rate, read_figures
from scraper.fingerprint import LIST_PAGE
from scraper.signals import request_done

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler

#: Seconds between redraws, and over which the bar's pages/s is measured.
REFRESH, RATE_WINDOW = 0.25, 5.0


class Discovery:
    """Is the listing fully discovered? Yes once the spider has read all its start
    requests (``start_read``) and no list page is queued or being fetched: nothing is
    left that could link a new child.

    List pages are counted by their first URL (a retry has the same one, a redirect keeps
    it in ``redirect_urls``) from ``request_scheduled`` until their response reaches the
    spider, or they fail (``request_done`` with ``list_failed``); a list page that the
    dupefilter drops is taken back.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.pending: Counter[str] = Counter()
        crawler.signals.connect(self.scheduled, signal=signals.request_scheduled)
        crawler.signals.connect(self.dropped, signal=signals.request_dropped)
        crawler.signals.connect(self.received, signal=signals.response_received)
        crawler.signals.connect(self.done, signal=request_done)

    @staticmethod
    def _key(request: Request) -> str | None:
        if not request.meta.get(LIST_PAGE):
            return None
        return str(request.meta.get("redirect_urls", [request.url])[0])

    def scheduled(self, request: Request) -> None:
        if (key := self._key(request)) is not None:
            self.pending[key] += 1

    def dropped(self, request: Request) -> None:
        if (key := self._key(request)) is not None:
            self.pending[key] -= 1
            if self.pending[key] <= 0:
                del self.pending[key]

    def received(self, request: Request) -> None:
        if (key := self._key(request)) is not None:
            self.pending.pop(key, None)

    def done(self, request: Request, list_failed: bool = False) -> None:
        if list_failed and (key := self._key(request)) is not None:
            self.pending.pop(key, None)

    @property
    def complete(self) -> bool:
        return not self.pending and bool(getattr(self.crawler.spider, "start_read", True))


class AboveTheBar:
    """A log handler's stream: each write clears the bar, writes, and redraws the bar."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        with tqdm.external_write_mode(file=self.stream):
            return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


class LiveBar:
    """The bar: drawn from the node's figures every REFRESH seconds, closed with the
    final ones."""

    def __init__(self, crawler: Crawler, discovery: Discovery | None, eta: bool) -> None:
        self.crawler = crawler
        self.discovery = discovery  # None: no total (distributed mode)
        self.eta = eta
        self.rate = Rate(RATE_WINDOW)
        self.bar: Any = None
        self.loop: task.LoopingCall | None = None
        self.redirected: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> LiveBar:
        settings = crawler.settings
        many_nodes = distributed(settings)
        discovery = None if many_nodes else Discovery(crawler)
        return cls(crawler, discovery, eta=not many_nodes and not settings.get("JOBDIR"))

    def start(self) -> None:
        self.bar = tqdm(file=sys.stderr, dynamic_ncols=True, leave=True, bar_format="{desc}")
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.stream in (
                sys.stderr,
                sys.stdout,
            ):
                self.redirected.append((handler, handler.stream))
                handler.setStream(AboveTheBar(handler.stream))
        self.loop = task.LoopingCall(self.refresh)
        self.loop.start(REFRESH)

    def refresh(self) -> None:
        """Draw the bar with the figures of now."""
        figures = read_figures(self.crawler)
        stored = figures.stored
        rate = self.rate.add(time.monotonic(), stored)
        right = f"{rate:.0f} pages/s, {figures.in_flight} in flight, {figures.errors} errors"
        bar = self.bar
        if self.discovery is None or not figures.discovered:
            bar.total, bar.n = None, stored
            bar.bar_format = f"stored {stored} | {right}"
        else:
            total = figures.discovered
            bar.total, bar.n = total, min(stored, total)
            if self.eta:
                right += ", " + self._eta(total - stored, rate)
            bar.bar_format = f"stored {stored}/{total} |{{bar}}| {right}"
        bar.refresh()

    def _eta(self, remaining: int, rate: float) -> str:
        assert self.discovery is not None
        if not self.discovery.complete:
            return "discovering"
        if remaining <= 0:
            return "ETA 00:00"
        return f"ETA {tqdm.format_interval(math.ceil(remaining / rate))}" if rate > 0 else "ETA ?"

    def close(self) -> None:
        """The last drawing, with the final figures, stays on the terminal."""
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        if self.bar is None:
            return
        self.refresh()
        self.bar.close()
        self.bar = None
        for handler, stream in self.redirected:
            handler.setStream(stream)
        self.redirected.clear()
