"""What the crawl tells its user beyond the counts: its sites and the concurrency it
really runs at, at the start; at the end, children left uncrawled, and signs that it
missed the listing's pages or its children, with the argument that would fix it."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scraper.sites import fair_queue

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from scraper.sites import SiteMode
    from scraper.spiders.listpage import ListPage

logger = logging.getLogger("scraper.spiders.listing")  # the spider's voice


def say_concurrency(mode: SiteMode, settings: BaseSettings) -> None:
    """The start line: one site or many, and the concurrency per site and in all; then
    every setting that caps it further (a WARNING)."""
    logger.info("%(line)s", {"line": mode.start_line})
    total = settings.getint("CONCURRENT_REQUESTS")
    caps = []
    if not mode.many and mode.per_site < total:
        caps.append(f"CONCURRENT_REQUESTS_PER_DOMAIN={mode.per_site}")
    if settings.getint("CONCURRENT_REQUESTS_PER_IP"):
        caps.append(f"CONCURRENT_REQUESTS_PER_IP={settings.getint('CONCURRENT_REQUESTS_PER_IP')}")
    if settings.getfloat("DOWNLOAD_DELAY"):
        caps.append(f"DOWNLOAD_DELAY={settings.getfloat('DOWNLOAD_DELAY')}")
    if settings.getbool("AUTOTHROTTLE_ENABLED"):
        caps.append("AUTOTHROTTLE_ENABLED")
    if mode.many and not settings.get("REDIS_URL") and not fair_queue(settings):
        logger.warning(
            "SCHEDULER_PRIORITY_QUEUE=%(queue)s is not Scrapy's default "
            "DownloaderAwarePriorityQueue, which takes the next request from the site "
            "with the fewest in flight: one slow site may hold the downloader while the "
            "others wait",
            {"queue": settings["SCHEDULER_PRIORITY_QUEUE"]},
        )
    if caps:
        logger.warning(
            "Concurrency: %(total)d requests, capped by %(caps)s",
            {"total": total, "caps": ", ".join(caps)},
        )


def say_children_left(
    stats: Any, found: int, done: int, reason: str, jobdir: str | None = None
) -> None:
    """Every child counted must have ended as a record: those that did not are counted
    (``listing/children_not_crawled``) and said."""
    missing = found - done
    if missing <= 0:
        return
    stats.set_value("listing/children_not_crawled", missing)
    if reason == "finished":
        logger.error(
            "%(n)d discovered children ended without a record although the crawl "
            "finished: a bug, please report it with this log",
            {"n": missing},
        )
    elif jobdir:
        logger.warning(
            "%(n)d discovered children were not crawled yet: the crawl stopped "
            "(%(reason)s) first, and saved them in JOBDIR %(jobdir)s. Run the same command "
            "again to resume",
            {"n": missing, "reason": reason, "jobdir": jobdir},
        )
    else:
        logger.warning(
            "%(n)d discovered children were not crawled: the crawl stopped (%(reason)s) "
            "first. Start it again (records are upserts: nothing is stored twice), or "
            "run with -s JOBDIR=<folder> to resume where it stopped",
            {"n": missing, "reason": reason},
        )


def say_what_was_missed(
    first_page: ListPage | None, list_pages: int, children_found: int, stats: Any
) -> None:
    """A finished crawl that took one list page whose pager gave nothing, or no child at
    all: say so, with the argument that would fix it."""
    page = first_page
    if page is not None and list_pages == 1 and page.suspects:
        say_pagination_missed(page, "Only one list page was crawled, but it has")
    if list_pages and not children_found:
        skipped = {
            k.rsplit("/", 1)[1]: v
            for k, v in stats.get_stats().items()
            if k.startswith("listing/links_skipped/")
        }
        logger.warning(
            "No child page found on %(n)d list page(s) (links skipped: %(skipped)s): "
            "is the list rendered by JavaScript, or are its links in the page's "
            "navigation (-s LISTING_CHILDREN=all takes them)?",
            {"n": list_pages, "skipped": skipped or "none"},
        )


def say_pagination_missed(page: ListPage, what: str) -> None:
    """A list page with links that look like pagination gave no next page: ``what``
    begins the sentence, the links and the arguments that would fix it end it."""
    logger.warning(
        "%(what)s links that look like pagination and gave no next page: %(links)s. If "
        "the listing has more pages, say where the next one is with -a next_css='<selector "
        "of the next link>' (or -a next_xpath=...), or list them with -a url='%(template)s'",
        {
            "what": what,
            "links": "; ".join(page.suspects[:5]),
            "template": template_hint(page.url),
        },
    )


def template_hint(url: str) -> str:
    """``url`` with a page-number range where its page number is (its last number after
    the host), or as a ``page`` parameter."""
    parts = urlsplit(url)
    after_host = url.index(parts.netloc) + len(parts.netloc)
    numbers = list(re.finditer(r"\d+", url[after_host:]))
    if numbers:
        last = numbers[-1]
        start, end = after_host + last.start(), after_host + last.end()
        return f"{url[:start]}{{{last.group()}..N}}{url[end:]}"
    return f"{url}{'&' if '?' in url else '?'}page={{1..N}}"
