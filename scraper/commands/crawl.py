"""scrapy crawl, exiting 1 when the crawl could not start its work at all.

Scrapy's own command exits 0 whatever the finish reason, so a scheduler (scrapyd, cron,
CI) cannot tell a finished crawl from one stopped at once by an unusable store, an
unreachable Redis or a missing list page URL. The reasons for that end in ``_unusable``
(``body_store_unusable``, ``redis_unusable``, ...) or are ``no_url``; the one ERROR line
explaining it is already in the log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand

if TYPE_CHECKING:
    import argparse

    from scrapy import Spider
    from scrapy.crawler import Crawler


def failed_to_start(reason: object) -> bool:
    """Whether a finish reason says the crawl never could do its job."""
    return isinstance(reason, str) and (reason.endswith("_unusable") or reason == "no_url")


class Command(ScrapyCrawlCommand):
    crawler: Crawler | None = None

    def _create_crawler(self, spidercls: type[Spider] | str) -> Crawler:
        self.crawler = super()._create_crawler(spidercls)
        return self.crawler

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        super().run(args, opts)
        stats = self.crawler.stats if self.crawler is not None else None
        if stats is not None and failed_to_start(stats.get_value("finish_reason")):
            self.exitcode = 1
