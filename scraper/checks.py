"""Checks that fail a bad crawl: what Spidermon users add by hand, built in.

Scrapy ends a crawl whose every page failed with the reason ``finished`` and exit code 0,
so a scheduler (scrapyd, cron, CI) cannot tell it from a good one. At the end of a crawl
that ran to its end, this extension judges the crawl's own stats against a few limits:

=========================  ==============================================================
CHECK_MAX_FAILED_SHARE     children that ended failed (HTTP error, timeout, refused, ...)
CHECK_MAX_SPOOLED_SHARE    bodies, or records, that did not reach their store (spooled)
CHECK_MAX_DEAD_SHARE       distributed: requests moved to ``<spider>:dead``
CHECK_MIN_STORED           records written to META_STORE
=========================  ==============================================================

Each broken check is one ERROR line (the value measured, the limit, the setting); the
finish reason becomes ``checks_failed`` (in the stats, STATS_FILE and the final dump) and
``scrapy crawl`` exits 2 (scraper/commands/crawl.py).

Only the reason ``finished`` is judged. A crawl stopped before its end (``shutdown``,
``closespider_*``) keeps its reason: its shares say when it was stopped, not how well it
crawled. One that never started (``*_unusable``, ``no_url``) keeps its reason and exits 1.

Distributed mode: each node judges its own stats, its share of the crawl. CHECK_MIN_STORED
is not judged by a node (a node may rightly get no work): the crawl's total is in
``scrapy status``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured

from scraper.config import ConfigError, stop_crawl
from scraper.distributed.connection import distributed

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: The finish reason of a crawl that broke a check; `scrapy crawl` exits 2 with it.
CHECKS_FAILED = "checks_failed"
#: The only finish reason that is judged.
JUDGED = "finished"
#: ``listing/children_<freshness>``: children fetched and recorded (scraper/spiders/records.py).
FETCHED = ("new", "changed", "unchanged")


@dataclass(frozen=True)
class Limits:
    """The checks' settings: a share is broken above its maximum, a count below its minimum."""

    max_failed_share: float
    max_spooled_share: float
    max_dead_share: float
    min_stored: int

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        """Read and check the ``CHECK_*`` settings; ConfigError names the bad one."""
        shares = {}
        for name in ("CHECK_MAX_FAILED_SHARE", "CHECK_MAX_SPOOLED_SHARE", "CHECK_MAX_DEAD_SHARE"):
            try:
                value = settings.getfloat(name)
            except ValueError:
                value = -1.0
            if not 0 <= value <= 1:
                raise ConfigError(
                    name, f"{settings.get(name)!r} is not a share from 0 to 1 (1 turns it off)"
                )
            shares[name] = value
        try:
            min_stored = settings.getint("CHECK_MIN_STORED")
        except ValueError:
            min_stored = -1
        if min_stored < 0:
            raise ConfigError(
                "CHECK_MIN_STORED",
                f"{settings.get('CHECK_MIN_STORED')!r} is not a count of 0 or more (0 turns it "
                "off)",
            )
        return cls(
            shares["CHECK_MAX_FAILED_SHARE"],
            shares["CHECK_MAX_SPOOLED_SHARE"],
            shares["CHECK_MAX_DEAD_SHARE"],
            min_stored,
        )


@dataclass(frozen=True)
class Broken:
    """A check the crawl broke: what was measured, and the setting that limits it."""

    setting: str
    limit: float
    measured: str


class Counts:
    """Integer stats, 0 for those never counted."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        self.stats = stats

    def __call__(self, *keys: str) -> int:
        return sum(int(self.stats.get(key) or 0) for key in keys)


def over(part: int, whole: int, limit: float) -> bool:
    """Whether ``part`` is more than ``limit`` of ``whole`` (never, of nothing)."""
    return whole > 0 and part / whole > limit


def failed_share(count: Counts, limits: Limits) -> Broken | None:
    """Children that ended failed, of the children that ended on this node."""
    failed = count("listing/child_failed")
    children = failed + count(*(f"listing/children_{freshness}" for freshness in FETCHED))
    if not over(failed, children, limits.max_failed_share):
        return None
    measured = f"{failed} of {children} children failed ({failed / children:.0%})"
    seen = failures_seen(count.stats)
    return Broken(
        "CHECK_MAX_FAILED_SHARE",
        limits.max_failed_share,
        f"{measured}; seen: {seen}" if seen else measured,
    )


def spooled_share(count: Counts, limits: Limits) -> Broken | None:
    """Bodies, and records, that did not reach their store (spooled, or lost when the spool
    failed too): each is judged on its own (a body and a record are not the same unit)."""
    limit = limits.max_spooled_share
    spooled_records = count("meta_store/spooled")
    said = [
        line
        for line in (
            not_stored(
                "bodies",
                "BODY_STORE",
                count("body_store/stored"),
                count("body_store/spooled"),
                count("body_store/failed"),
                limit,
            ),
            not_stored(
                "records",
                "META_STORE",
                count("meta_store/written"),
                spooled_records,
                count("meta_store/failed") - spooled_records,  # failed: spooled or lost
                limit,
            ),
        )
        if line
    ]
    return Broken("CHECK_MAX_SPOOLED_SHARE", limit, "; ".join(said)) if said else None


def not_stored(
    what: str, store: str, stored: int, spooled: int, lost: int, limit: float
) -> str | None:
    """What did not reach ``store``, if more than ``limit`` of all."""
    out = spooled + lost
    whole = stored + out
    if not over(out, whole, limit):
        return None
    where = f"{lost} lost: the spool failed too" if lost else "spooled: `scrapy replay`"
    return f"{out} of {whole} {what} ({out / whole:.0%}) did not reach {store} ({where})"


def dead_share(count: Counts, limits: Limits) -> Broken | None:
    """Distributed: requests this node moved to ``:dead`` (whoever leased them last), of
    those it leased plus those."""
    dead = count("distributed/dead")
    requests = count("distributed/leased") + dead
    if not over(dead, requests, limits.max_dead_share):
        return None
    return Broken(
        "CHECK_MAX_DEAD_SHARE",
        limits.max_dead_share,
        f"{dead} request(s) moved to :dead after losing their lease REDIS_MAX_ATTEMPTS times "
        f"({dead / requests:.0%} of {requests} this node leased or moved there): never "
        "crawled, no record",
    )


def min_stored(count: Counts, limits: Limits) -> Broken | None:
    """Records written to META_STORE (failed children's included: the failed share judges
    those)."""
    stored = count("meta_store/written")
    if stored >= limits.min_stored:
        return None
    return Broken(
        "CHECK_MIN_STORED",
        limits.min_stored,
        f"{stored} records stored in META_STORE ({count('listing/children')} children found "
        f"on {count('listing/list_pages')} list page(s); {count('listing/list_failed')} list "
        "page(s) failed)",
    )


def judge(stats: Mapping[str, Any], limits: Limits, *, distributed: bool) -> list[Broken]:
    """The checks these final stats break (none: the crawl passes). A node of a distributed
    crawl is not judged on the minimum: its share of the work may rightly be nothing."""
    count = Counts(stats)
    checks = [failed_share, spooled_share, dead_share]
    if not distributed:
        checks.append(min_stored)
    return [broken for check in checks if (broken := check(count, limits)) is not None]


def failures_seen(stats: Mapping[str, Any], most: int = 3) -> str:
    """The commonest reasons children failed (``listing/child_failed/<reason>``), or else
    what the downloader saw (retries included): HTTP error statuses, exceptions."""
    by_reason = "listing/child_failed/"
    seen = {
        key.removeprefix(by_reason): int(value)
        for key, value in stats.items()
        if key.startswith(by_reason)
    }
    if not seen:
        for key, value in stats.items():
            if key.startswith("downloader/response_status_count/"):
                status = key.rsplit("/", 1)[1]
                if status.isdigit() and int(status) >= 400:
                    seen[f"HTTP {status}"] = int(value)
            elif key.startswith("downloader/exception_type_count/"):
                seen[key.rsplit(".", 1)[-1].rsplit("/", 1)[-1]] = int(value)
    top = sorted(seen.items(), key=lambda item: -item[1])[:most]
    return ", ".join(f"{what} x{n}" for what, n in top)


class Checks:
    """Extension: judges a finished crawl's stats at its close (see the module's doc)."""

    def __init__(
        self,
        crawler: Crawler,
        limits: Limits | None,
        distributed: bool,
        error: ConfigError | None,
    ) -> None:
        self.crawler = crawler
        self.limits = limits
        self.distributed = distributed
        self.error = error

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        settings = crawler.settings
        if not settings.getbool("CHECKS_ENABLED"):
            raise NotConfigured  # switched off on purpose: no warning
        try:
            limits: Limits | None = Limits.from_settings(settings)
            error = None
        except ConfigError as exc:
            limits, error = None, exc
        ext = cls(crawler, limits, distributed(settings), error)
        crawler.signals.connect(ext.spider_opened, signal=signals.spider_opened)
        # Connected after Scrapy's CoreStats (an extension built earlier, order 0), so this
        # runs after it has set finish_reason, and can change it.
        crawler.signals.connect(ext.spider_closed, signal=signals.spider_closed)
        return ext

    def spider_opened(self) -> None:
        """A limit that cannot be stops the crawl at start, not after hours of crawling."""
        if self.error is not None:
            raise stop_crawl(logger, self.error.setting, self.error)

    def spider_closed(self, reason: str) -> None:
        stats = self.crawler.stats
        if reason != JUDGED or self.limits is None or stats is None:
            return
        broken = judge(stats.get_stats(), self.limits, distributed=self.distributed)
        stats.set_value("checks/failed", len(broken))
        if not broken:
            logger.info("Checks passed (CHECK_* settings)")
            return
        for check in broken:
            logger.error(
                "Check failed: %(measured)s; limit %(setting)s=%(limit)s (-s %(setting)s=... "
                "to change it)",
                {"measured": check.measured, "setting": check.setting, "limit": check.limit},
            )
        # Scrapy's LogCount stopped counting at spider_closed, before this: count them here,
        # so that log_count/ERROR (what Spidermon's error monitor reads) includes them.
        stats.inc_value("log_count/ERROR", len(broken))
        stats.set_value("finish_reason", CHECKS_FAILED)
