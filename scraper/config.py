"""Settings that cannot work: one error type, and the one line that stops a crawl for it.

A store that cannot be opened, a Redis that cannot be reached, ALLOWED_NETWORKS that are
not networks, a REDIS_DUPEFILTER or a Bloom filter size that cannot be: each ends the
crawl at start with one ERROR line, ``<SETTING> unusable, crawl stopped: <why>``, and the
finish reason ``<setting>_unusable``, which makes ``scrapy crawl`` exit 1
(scraper/commands/crawl.py) so that scrapyd, cron and CI see it.

Every such error is a ConfigError: the stores' StoreError is one (a store that cannot
work as configured), and so are the errors of ALLOWED_NETWORKS, REDIS_DUPEFILTER and the
Bloom filter's sizing. Each component turns it into the stop with ``stop_crawl``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.exceptions import CloseSpider

if TYPE_CHECKING:
    import logging


class ConfigError(ValueError):
    """``setting`` cannot work as it is set; the message says why, in one line."""

    def __init__(self, setting: str, why: str) -> None:
        super().__init__(why)
        self.setting = setting


def stop_crawl(
    logger: logging.Logger, setting: str, why: object, reason: str | None = None
) -> CloseSpider:
    """Log the one line for ``setting`` and return the CloseSpider to raise, its reason
    ``<setting>_unusable`` unless ``reason`` says otherwise. ``logger`` is the caller's:
    the line names the component."""
    logger.error(
        "%(setting)s unusable, crawl stopped: %(error)s", {"setting": setting, "error": why}
    )
    return CloseSpider(reason or f"{setting.lower()}_unusable")
