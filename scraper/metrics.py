"""Prometheus metrics of one node: ``/metrics`` on ``METRICS_PORT`` while it crawls.

What it costs a page: nothing but the two store-latency observations. Every counter is
one of the crawl's own stats, read by one Collector when Prometheus scrapes (``STATS``
says which metric is which stat); the gauges are read from the engine, the scheduler and
the politeness middleware at the same moment. Only the store latencies are measured per
call, by the pipelines, into two histograms they get from ``store_latency`` (a no-op
when metrics are off).

Served on the crawl's own event loop (aiohttp, with prometheus_client's handler and
exposition): a scrape reads the stats and the engine on the thread that changes them, so
each scrape is one consistent moment, and no thread is added. A node whose loop is stuck
does not answer, which Prometheus shows as ``up == 0``. Each crawler has its own
CollectorRegistry (never the global one): two crawls in one process do not mix.

A crawl that ends also ends its ``/metrics``, often before Prometheus has read the last
figures: ``METRICS_LINGER`` keeps it up after the end until one scrape has read them (at
most that many seconds). Labels are bounded: store (body, meta), failure reason, status
class, queue state; never a URL or a host. docs/operations.md lists every metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from scrapy import signals
from scrapy.exceptions import NotConfigured

from scraper.config import stop_crawl
from scraper.politeness import RetryAfterMiddleware
from scraper.spiders.records import Freshness
from scraper.work import requests_waiting

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping
    from typing import Self

    from aiohttp import web
    from scrapy.crawler import Crawler

    from scraper.distributed.counts import CrawlStatus

logger = logging.getLogger(__name__)

Store = Literal["body", "meta"]

#: Seconds: a local folder takes ~0.1 ms, S3 tens of ms, a meta batch of 500 up to seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def status_class(code: str) -> str:
    """``"404"`` -> ``"4xx"``: one series per class, whatever codes a site invents."""
    return f"{code[:1]}xx" if len(code) == 3 and code.isdigit() else "other"


@dataclass(frozen=True)
class Counted:
    """A counter that is the crawl's stats: one series per stats key, or one per label value
    of the keys under ``prefix`` (the rest of the key, through ``group``)."""

    name: str  # without "_total": prometheus_client adds it
    documentation: str
    keys: Mapping[str, str] = field(default_factory=dict)  # label value -> stats key
    label: str = ""
    prefix: str = ""
    group: Callable[[str], str] = str

    def values(self, stats: Mapping[str, Any]) -> dict[str, float]:
        """Label value ("" when unlabelled) -> the counter's value in these stats."""
        if not self.prefix:
            return {value: stats.get(key, 0) for value, key in self.keys.items()}
        values: dict[str, float] = {}
        for key, count in stats.items():
            if key.startswith(self.prefix):
                value = self.group(key[len(self.prefix) :])
                values[value] = values.get(value, 0) + count
        return values


def one(name: str, documentation: str, key: str) -> Counted:
    return Counted(name, documentation, {"": key})


def per_store(name: str, documentation: str, event: str) -> Counted:
    stores = {"body": f"body_store/{event}", "meta": f"meta_store/{event}"}
    return Counted(name, documentation, stores, label="store")


#: Every counter, from the stats its value is (tests/test_metrics.py compares them).
STATS: tuple[Counted, ...] = (
    one("scraper_pages_stored", "Records written to the meta store.", "meta_store/written"),
    one("scraper_bodies_stored", "Bodies written to the body store.", "body_store/stored"),
    one(
        "scraper_bodies_stored_bytes",
        "Bytes of the bodies written to the body store (before BODY_STORE_GZIP).",
        "body_store/bytes",
    ),
    one(
        "scraper_downloaded_bytes",
        "Bytes of the responses downloaded (headers included).",
        "downloader/response_bytes",
    ),
    one("scraper_requests", "Requests sent, retries included.", "downloader/request_count"),
    Counted(
        "scraper_responses",
        "Responses received, by status class.",
        label="status_class",
        prefix="downloader/response_status_count/",
        group=status_class,
    ),
    one("scraper_list_pages", "List pages parsed.", "listing/list_pages"),
    one(
        "scraper_list_pages_failed",
        "List pages that failed: their links are lost.",
        "listing/list_failed",
    ),
    one(
        "scraper_children_discovered",
        "Child pages found on list pages, after dedup (each ends as one record).",
        "listing/children",
    ),
    Counted(
        "scraper_children_freshness",
        "Children fetched or not asked, by what they are next to their stored record: new, "
        "changed, unchanged (a 304 or the same body), recent (not asked: RECRAWL_MIN_AGE).",
        {freshness: f"listing/children_{freshness}" for freshness in get_args(Freshness)},
        label="freshness",
    ),
    one(
        "scraper_children_gone",
        "Records marked gone_at at the crawl's end: their listing no longer links them.",
        "listing/children_gone",
    ),
    Counted(
        "scraper_children_failed",
        "Children that could not be fetched (each still a record, with the error), by reason.",
        label="reason",
        prefix="listing/child_failed/",
    ),
    one("scraper_download_retries", "Downloads retried by RetryMiddleware.", "retry/count"),
    per_store("scraper_store_retries", "Store calls retried after a transient error.", "retries"),
    per_store(
        "scraper_store_spooled",
        "Bodies (body) and records (meta) a store still refused after its retries: "
        "spooled to local disk for `scrapy replay`.",
        "spooled",
    ),
    per_store(
        "scraper_store_failed",
        "Bodies (body) and records (meta) a store refused after its retries.",
        "failed",
    ),
    one(
        "scraper_politeness_slowdowns",
        "Sites slowed down (or further) after a 429/503 with Retry-After.",
        "politeness/slowed",
    ),
    one(
        "scraper_politeness_recoveries",
        "Slowed sites back to their own delay and concurrency.",
        "politeness/recovered",
    ),
    one(
        "scraper_retry_after_retries",
        "Requests retried after the wait a Retry-After asked for.",
        "politeness/retry_after/retried",
    ),
    one(
        "scraper_retry_after_gave_up",
        "Requests given up on: still pushed back after RETRY_AFTER_TIMES, or asked to wait "
        "more than RETRY_AFTER_MAX.",
        "politeness/retry_after/gave_up",
    ),
    one(
        "scraper_leases_taken",
        "Requests this node leased from the shared queue.",
        "distributed/leased",
    ),
    one(
        "scraper_leases_reclaimed",
        "Expired leases (of dead or stalled nodes) this node put back in the shared queue.",
        "distributed/reclaimed",
    ),
    one(
        "scraper_leases_lost",
        "Leases of this node that expired and went to another node.",
        "distributed/leases_lost",
    ),
    one("scraper_acks", "Leases acknowledged: their requests are stored.", "distributed/acked"),
    one(
        "scraper_acks_refused",
        "Acknowledgements Redis refused: the lease had expired and was reclaimed.",
        "distributed/ack_refused",
    ),
    one(
        "scraper_requests_dead",
        "Requests this node sent to <spider>:dead after REDIS_MAX_ATTEMPTS lost leases.",
        "distributed/dead",
    ),
    one(
        "scraper_redis_calls",
        "Round trips to Redis (commands and script calls).",
        "distributed/redis_calls",
    ),
    one("scraper_redis_errors", "Redis calls that failed (outages).", "distributed/redis_errors"),
)


class Observer(Protocol):
    """What a pipeline observes a store call's seconds into."""

    def observe(self, amount: float) -> None: ...


class _Ignored:
    def observe(self, amount: float) -> None:
        """Metrics are off: nothing to keep."""


IGNORED: Observer = _Ignored()


def store_latency(crawler: Crawler, store: Store) -> Observer:
    """The histogram of ``store``'s call times for its pipeline, or IGNORED when metrics
    are off. Call it from ``open_spider`` (extensions exist by then)."""
    try:
        metrics = crawler.get_extension(Metrics)
    except RuntimeError:  # a component built without a crawl: no extensions at all
        return IGNORED
    return metrics.latency[store] if metrics is not None else IGNORED


class Metrics:
    """Extension: serves ``/metrics`` on ``METRICS_HOST:METRICS_PORT`` while the crawl runs."""

    def __init__(self, crawler: Crawler, host: str, port: int, linger: float) -> None:
        self.crawler = crawler
        self.host = host
        self.port = port
        self.linger = linger
        self.registry = CollectorRegistry(auto_describe=False)
        self.latency: dict[Store, Histogram] = {
            "body": Histogram(
                "scraper_body_store_put_seconds",
                "Seconds a body took to be stored (one PUT or file write that succeeded).",
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            ),
            "meta": Histogram(
                "scraper_meta_store_write_seconds",
                "Seconds a batch of records took to be written, from its hand-off to the "
                "writer thread (one bulk write that succeeded).",
                buckets=LATENCY_BUCKETS,
                registry=self.registry,
            ),
        }
        self.collector = CrawlCollector(crawler)
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)  # CPU seconds, memory, open files
        self.error = ""  # METRICS_PORT is not a port: the crawl stops at open
        self.runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        value = settings.get("METRICS_PORT")
        if value is None or value == "":
            raise NotConfigured  # off, as by default: no warning
        host = settings.get("METRICS_HOST") or "127.0.0.1"
        ext = cls(crawler, host, 0, settings.getfloat("METRICS_LINGER"))
        try:
            ext.port = int(value)
            if not 0 <= ext.port <= 65535:
                raise ValueError
        except (TypeError, ValueError):
            ext.error = f"{value!r} is not a port number (0: any free port)"
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(ext.engine_stopped, signal=signals.engine_stopped)
        return ext

    async def spider_opened(self) -> None:
        """Start serving; a port that cannot be had stops the crawl with one line (metrics
        asked for and missing would leave alerts blind)."""
        if self.error:
            raise stop_crawl(logger, "METRICS_PORT", self.error)
        # Only a crawl with metrics needs aiohttp's server side.
        from aiohttp import web
        from prometheus_client.aiohttp import make_aiohttp_handler

        self.collector.attach()
        app = web.Application()
        app.router.add_get("/metrics", make_aiohttp_handler(self.registry))
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            setting = "METRICS_HOST" if self.port == 0 else "METRICS_PORT"
            why = f"cannot serve on {self.host}:{self.port}: {exc}"
            raise stop_crawl(logger, setting, why) from None
        self.runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/metrics"
        logger.info("Metrics for Prometheus: %(url)s", {"url": self.url})

    async def engine_stopped(self) -> None:
        """The crawl is over (stats final, STATS_FILE written): linger for one last scrape,
        then stop serving."""
        self.collector.ended = True
        if self.runner is None:
            return
        if self.linger > 0:
            logger.info(
                "Metrics: %(url)s stays up until scraped once, at most %(linger).0f s",
                {"url": self.url, "linger": self.linger},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.collector.scraped_after_end.wait(), self.linger)
        runner, self.runner = self.runner, None
        await runner.cleanup()  # answers a scrape under way first


class CrawlCollector(Collector):
    """Reads the crawl's stats and its live figures when Prometheus scrapes."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.politeness: RetryAfterMiddleware | None = None
        self.scheduler: object = None
        self.ended = False  # the engine has stopped: every figure is final
        self.scraped_after_end = asyncio.Event()

    def attach(self) -> None:
        """Find the components read at scrape time (they exist once the spider opens)."""
        self.politeness = self.crawler.get_downloader_middleware(RetryAfterMiddleware)
        # Kept: the engine lets go of it at close, and its last figures are still wanted.
        self.scheduler = self.crawler.engine.scheduler if self.crawler.engine else None

    def collect(self) -> Iterator[Metric]:
        stats = self.crawler.stats
        values: dict[str, Any] = stats.get_stats() if stats is not None else {}
        for counted in STATS:
            labels = [counted.label] if counted.label else []
            family = CounterMetricFamily(counted.name, counted.documentation, labels=labels)
            for value, count in sorted(counted.values(values).items()):
                family.add_metric([value] if counted.label else [], count)
            yield family
        yield from self._live()
        yield from self._times(values)
        if self.ended:
            self.scraped_after_end.set()

    def _live(self) -> Iterator[Metric]:
        engine = self.crawler.engine
        crawling = engine is not None and engine.scheduler is not None  # not yet closed
        in_flight = len(engine.downloader.active) if engine is not None and crawling else 0
        yield gauge("scraper_requests_in_flight", "Requests being downloaded.", in_flight)
        yield gauge(
            "scraper_local_queue_requests",
            "Requests waiting in this node's scheduler (distributed: its local buffer).",
            requests_waiting(self.crawler) if crawling else 0,
        )
        slowed = len(self.politeness.slowed) if self.politeness is not None else 0
        yield gauge(
            "scraper_politeness_slowed_sites", "Sites slowed down by Retry-After now.", slowed
        )
        leases = getattr(self.scheduler, "leases", None)  # DistributedScheduler's
        if leases is None:
            return
        yield gauge("scraper_leases_held", "Leases this node holds now.", len(leases))
        pump = getattr(self.scheduler, "pump", None)
        status: CrawlStatus | None = getattr(pump, "status", None)
        if status is not None:
            yield from crawl_status(status)

    def _times(self, values: Mapping[str, Any]) -> Iterator[Metric]:
        start = values.get("start_time")
        if start is not None:
            yield gauge(
                "scraper_crawl_start_time_seconds",
                "When this node's crawl started (Unix time).",
                start.timestamp(),
            )
        finish, reason = values.get("finish_time"), values.get("finish_reason")
        if self.ended and finish is not None and reason is not None:
            family = GaugeMetricFamily(
                "scraper_crawl_end_time_seconds",
                "When this node's crawl ended (Unix time), by finish reason; absent until "
                "it has (its figures are final then).",
                labels=["reason"],
            )
            family.add_metric([str(reason)], finish.timestamp())
            yield family


def crawl_status(status: CrawlStatus) -> Iterator[Metric]:
    """The shared queue as this node last read it (every node reports the same crawl:
    aggregate with max, not sum)."""
    family = GaugeMetricFamily(
        "scraper_shared_queue_requests",
        "Requests in the crawl's shared queue in Redis, by state.",
        labels=["state"],
    )
    family.add_metric(["queued"], status.queued)
    family.add_metric(["leased"], status.leased)
    family.add_metric(["start_urls"], status.start_urls)
    family.add_metric(["dead"], status.dead)
    yield family
    yield gauge(
        "scraper_shared_seen_requests", "Requests the crawl has seen (its dupefilter).", status.seen
    )


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
