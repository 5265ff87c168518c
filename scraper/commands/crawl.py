"""scrapy crawl, exiting 1 when the crawl could not start its work at all, 2 when it ran
to its end but broke a check (a bad crawl).

Scrapy's own command exits 0 whatever the finish reason, so a scheduler (scrapyd, cron,
CI) cannot tell a finished crawl from one stopped at once by an unusable store, an
unreachable Redis or a missing list page URL. The reasons for that end in ``_unusable``
(``body_store_unusable``, ``redis_unusable``, ...) or are ``no_url``; the one ERROR line
explaining it is already in the log. A crawl whose stats broke a check (every child
failed, nothing stored: scraper/checks.py) ends ``checks_failed``, with one ERROR line
per broken check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy.commands.crawl import Command as ScrapyCrawlCommand

from scraper.checks import CHECKS_FAILED

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
        reason = stats.get_value("finish_reason") if stats is not None else None
        if failed_to_start(reason):
            self.exitcode = 1
        elif reason == CHECKS_FAILED:
            self.exitcode = 2
