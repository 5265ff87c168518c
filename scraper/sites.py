"""Sites in a crawl: one site you own, or many sites that are not all yours.

A *site* is a URL's hostname, lowercased: the key of Scrapy's downloader slot
(``Downloader.get_slot_key``), so a per-site limit here is a slot's concurrency there.

- **One site** (every list page on one host, or none known yet): per-site concurrency
  follows ``CONCURRENT_REQUESTS``, as it always did: a listing crawl of a site you own
  runs a thousand requests at once on it.
- **Many sites**: each gets at most ``CONCURRENT_REQUESTS_PER_SITE`` requests at once,
  under ``CONCURRENT_REQUESTS`` in all. The in-memory scheduler takes each next request
  from the site with the fewest requests in the downloader, so one slow or throttled site
  does not hold the downloader while the others wait: ``DownloaderAwarePriorityQueue``,
  Scrapy 2.19's default ``SCHEDULER_PRIORITY_QUEUE`` (one site or many, JOBDIR included;
  :func:`fair_queue` says whether a crawl still has it).

A ``CONCURRENT_REQUESTS_PER_DOMAIN`` set by the user (command line, spider or project
settings: any priority above the add-on's) wins in both modes.

The mode is decided before the crawl's settings freeze (scraper/addon.py, from the list
pages of the spider's arguments); a crawl that learns its list pages later (distributed
mode, from Redis) decides it then with :meth:`SiteMode.decide` and applies it to the
running downloader with :func:`apply_to_downloader`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import urlsplit

from scrapy.pqueues import DownloaderAwarePriorityQueue
from scrapy.settings import SETTINGS_PRIORITIES
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.misc import load_object
from w3lib.url import safe_url_string

from scraper.politeness import RetryAfterMiddleware

if TYPE_CHECKING:
    from collections.abc import Iterable

    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings

#: The priority the add-on sets at: a setting of the user's is above it.
ADDON_PRIORITY = SETTINGS_PRIORITIES["addon"]


def site_of(url: str) -> str:
    """The site of ``url``: its hostname lowercased, as Scrapy keys its downloader slots
    (an IDN in its IDNA form, as a Request has it; ``""`` when there is none)."""
    if not url.isascii():
        url = safe_url_string(url)
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # e.g. an unparsable IPv6 literal
        return ""


def request_site(request: Request) -> str:
    """The site of a request, as site_of says it, from its parsed URL (Scrapy caches it:
    this is asked of every request a distributed node holds)."""
    return urlparse_cached(request).hostname or ""


@runtime_checkable
class ListPageSource(Protocol):
    """A spider that knows its list pages before the crawl starts (ListingSpider)."""

    def list_page_urls(self) -> list[str]: ...


@dataclass(frozen=True)
class SiteMode:
    """How many requests at once per site, and why."""

    sites: tuple[str, ...]  # the list pages' sites, in the order first seen
    per_site: int  # requests at once per site (a downloader slot's concurrency)
    total: int  # CONCURRENT_REQUESTS
    user_set: bool  # per_site is the user's CONCURRENT_REQUESTS_PER_DOMAIN

    @property
    def many(self) -> bool:
        return len(self.sites) > 1

    @classmethod
    def decide(cls, urls: Iterable[str], settings: BaseSettings) -> SiteMode:
        """The mode of a crawl of these list pages with these settings, frozen or not
        (before or after the add-on set CONCURRENT_REQUESTS_PER_DOMAIN: the same mode)."""
        sites = tuple(dict.fromkeys(site for site in map(site_of, urls) if site))
        total = settings.getint("CONCURRENT_REQUESTS")
        user_set = (settings.getpriority("CONCURRENT_REQUESTS_PER_DOMAIN") or 0) > ADDON_PRIORITY
        if user_set:
            per_site = settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN")
        elif len(sites) > 1:
            per_site = settings.getint("CONCURRENT_REQUESTS_PER_SITE")
        else:
            per_site = total
        return cls(sites, per_site, total, user_set)

    @property
    def start_line(self) -> str:
        """One line for the log at the start: which mode, and the limits it sets."""
        if self.many:
            what = f"Sites: {len(self.sites)} list-page hosts"
        elif self.sites:
            what = f"Sites: 1 ({self.sites[0]})"
        else:
            what = "Sites: none known at the start"
        if self.user_set:
            return (
                f"{what}: at most CONCURRENT_REQUESTS_PER_DOMAIN={self.per_site} requests "
                f"at once per site (your setting), {self.total} in all"
            )
        if self.many:
            return (
                f"{what}: at most CONCURRENT_REQUESTS_PER_SITE={self.per_site} requests at "
                f"once per site, {self.total} in all"
            )
        return f"{what}: per-site concurrency follows CONCURRENT_REQUESTS={self.total}"

    def configure(self, settings: BaseSettings) -> None:
        """Set the mode in settings not frozen yet: CONCURRENT_REQUESTS_PER_DOMAIN, at the
        add-on's priority (a value of the user's stays)."""
        settings.set("CONCURRENT_REQUESTS_PER_DOMAIN", self.per_site, priority=ADDON_PRIORITY)


def fair_queue(settings: BaseSettings) -> bool:
    """Whether the in-memory scheduler's queue is fair across sites (slots):
    SCHEDULER_PRIORITY_QUEUE is DownloaderAwarePriorityQueue or a subclass of it."""
    queue = load_object(settings["SCHEDULER_PRIORITY_QUEUE"])
    return isinstance(queue, type) and issubclass(queue, DownloaderAwarePriorityQueue)


def apply_to_downloader(mode: SiteMode, crawler: Crawler) -> None:
    """Give the running crawl's downloader the mode's per-site concurrency: slots created
    from now on, and those that exist. Idempotent; call it after the engine is built
    (from ``spider_opened`` on).

    Left alone: a slot with its own concurrency in DOWNLOAD_SLOTS, and every slot when
    CONCURRENT_REQUESTS_PER_IP keys slots by IP address (it then limits each). A slot
    the site has slowed down (Retry-After, scraper/politeness.py) keeps its slowed
    concurrency if lower, and recovers to the new one.
    """
    downloader = crawler.engine.downloader
    if downloader.ip_concurrency:
        return
    downloader.domain_concurrency = mode.per_site
    polite = crawler.get_downloader_middleware(RetryAfterMiddleware)
    for key, slot in downloader.slots.items():
        if "concurrency" in downloader.per_slot_settings.get(key, {}):
            continue
        if polite is None or not polite.rebase_concurrency(key, slot, mode.per_site):
            slot.concurrency = mode.per_site
