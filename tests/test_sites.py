"""Many sites in one crawl (scraper/sites.py): per-site concurrency and a fair scheduler
queue when the list pages span sites; one site keeps CONCURRENT_REQUESTS on it.

The crawls run against the many_sites fixture (tests/conftest.py): the test site on 20
loopback addresses, one of them slow (2 s an answer), one answering 429 beyond 10
requests a second. What each host saw is measured at the site (``/_hosts``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import signals
from scrapy.core.downloader import Slot
from scrapy.crawler import Crawler
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.politeness import RetryAfterMiddleware
from scraper.sites import SiteMode, apply_to_downloader, fair_queue, site_of
from scraper.spiders.advice import say_concurrency
from scraper.spiders.listing import ListingSpider
from tests.helpers import (
    LIMITED_HOST,
    MANY_SITES,
    SLOW_HOST,
    Node,
    Site,
    assert_children_recorded,
    crawl,
    project_settings,
    records,
    scrapy,
    store_settings,
)

if TYPE_CHECKING:
    from pathlib import Path

#: Scrapy's and the project's default of CONCURRENT_REQUESTS_PER_SITE.
PER_SITE = 8


def settings(**values: Any) -> Settings:
    """The project's settings with ``values`` set on the command line."""
    return project_settings(**values)


def expected_urls(site: Site, hosts: list[str], n: int) -> set[str]:
    return {f"{site.host_base(host)}/page/{i}" for host in hosts for i in range(n)}


# -- the mode, from list pages and settings -------------------------------------------------


def test_a_site_is_the_hostname_lowercased_as_scrapy_keys_its_slots() -> None:
    assert site_of("https://Shop.Example:8443/list?page=2") == "shop.example"
    assert site_of("http://user:pw@127.0.0.5:80/") == "127.0.0.5"
    assert site_of("https://bücher.example/") == "xn--bcher-kva.example"
    assert site_of("not a url") == ""


def test_list_pages_on_one_site_follow_concurrent_requests() -> None:
    urls = [f"https://shop.example/list?page={i}" for i in range(50)]
    mode = SiteMode.decide(urls, settings(CONCURRENT_REQUESTS=1000))
    assert (mode.sites, mode.per_site, mode.many) == (("shop.example",), 1000, False)
    assert mode.start_line == (
        "Sites: 1 (shop.example): per-site concurrency follows CONCURRENT_REQUESTS=1000"
    )


def test_list_pages_on_many_sites_get_a_limit_per_site() -> None:
    urls = ["https://a.example/list", "https://B.example/list", "https://a.example/list?p=2"]
    mode = SiteMode.decide(urls, settings(CONCURRENT_REQUESTS=1000))
    assert (mode.sites, mode.per_site, mode.many) == (("a.example", "b.example"), PER_SITE, True)
    assert mode.start_line == (
        "Sites: 2 list-page hosts: at most CONCURRENT_REQUESTS_PER_SITE=8 requests at once "
        "per site, 1000 in all"
    )
    mode = SiteMode.decide(urls, settings(CONCURRENT_REQUESTS_PER_SITE=2))
    assert mode.per_site == 2


@pytest.mark.parametrize("priority", ["project", "spider", "cmdline"])
def test_a_per_domain_limit_of_the_users_wins_in_both_modes(priority: str) -> None:
    values = settings(CONCURRENT_REQUESTS=1000)
    values.set("CONCURRENT_REQUESTS_PER_DOMAIN", 3, priority=priority)
    many = SiteMode.decide(["https://a.example/", "https://b.example/"], values)
    one = SiteMode.decide(["https://a.example/"], values)
    assert (many.per_site, one.per_site) == (3, 3)
    assert many.start_line == (
        "Sites: 2 list-page hosts: at most CONCURRENT_REQUESTS_PER_DOMAIN=3 requests at once "
        "per site (your setting), 1000 in all"
    )


def crawler_for(values: Settings, **spider_args: str) -> Crawler:
    """A crawler whose settings are applied as at the start of a crawl: the spider built
    with its arguments, then the add-ons, then frozen (Crawler.crawl_async's order)."""
    crawler = Crawler(ListingSpider, values)
    crawler.spider = crawler._create_spider(**spider_args)
    crawler._apply_settings()
    return crawler


def test_the_addon_sets_the_mode_before_settings_freeze(tmp_path: Path) -> None:
    lists = tmp_path / "lists.txt"
    lists.write_text("# shops\nhttps://a.example/list\n\nhttps://b.example/list\nftp://x/\n")
    many = crawler_for(settings(CONCURRENT_REQUESTS=1000), urls_file=str(lists))
    assert many.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == PER_SITE
    assert fair_queue(many.settings)  # Scrapy's default queue: fair across sites
    one = crawler_for(settings(CONCURRENT_REQUESTS=1000), url="https://a.example/l?p={1..9}")
    assert one.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == 1000
    # Decided again after the settings froze (what the distributed scheduler does): the same.
    assert SiteMode.decide(["https://a.example/", "https://b.example/"], many.settings) == (
        SiteMode(("a.example", "b.example"), PER_SITE, 1000, user_set=False)
    )


def test_a_many_site_crawl_without_the_fair_queue_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    values = settings(SCHEDULER_PRIORITY_QUEUE="scrapy.pqueues.ScrapyPriorityQueue")
    say_concurrency(SiteMode.decide(["https://a.example/"], values), values)
    assert "SCHEDULER_PRIORITY_QUEUE" not in caplog.text  # one site: nothing to be fair to
    say_concurrency(SiteMode.decide(["https://a.example/", "https://b.example/"], values), values)
    assert "one slow site may hold the downloader while the others wait" in caplog.text


def test_a_project_per_domain_limit_wins_over_a_command_line_total() -> None:
    """Your settings.py says 3 per domain, the command line says 1000 in all: 3."""
    values = settings(CONCURRENT_REQUESTS=1000)
    values.set("CONCURRENT_REQUESTS_PER_DOMAIN", 3, priority="project")
    crawler = crawler_for(values, url="https://a.example/list")
    assert crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == 3


# -- crawls of the many_sites world -----------------------------------------------------------


@deferred_f_from_coro_f
async def test_twenty_sites_one_slow_one_rate_limited_every_page_stored_once(
    many_sites: Site,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    record_property: Any,
) -> None:
    caplog.set_level(logging.INFO)
    n = 40  # children per host, on two list pages
    lists = many_sites.write_urls_file(tmp_path / "lists.txt", n, per_page=20)
    many_sites.host_stats(reset=True)
    crawler = await crawl(
        None,
        {"urls_file": str(lists)},
        CONCURRENT_REQUESTS=1000,
        **MANY_SITES,
        **store_settings(tmp_path),
    )
    seen = many_sites.host_stats()
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    assert (
        "Sites: 20 list-page hosts: at most CONCURRENT_REQUESTS_PER_SITE=8 requests at once "
        "per site, 1000 in all" in caplog.text
    )

    docs = records(tmp_path)
    assert len(docs) == len({d["fingerprint"] for d in docs}) == 20 * n
    assert {d["url"] for d in docs} == expected_urls(many_sites, many_sites.hosts, n)
    failed = [(d["url"], d.get("status"), d.get("error")) for d in docs if d.get("error")]
    assert not failed  # the rate-limited site's pages too: Retry-After was honoured
    assert_children_recorded(stats, len(docs))

    # Measured at the site: no host ever had more than its limit in flight, and the slow
    # one (42 requests of 2 s) was held at the limit, not at CONCURRENT_REQUESTS.
    assert max(seen[h]["max_in_flight"] for h in many_sites.hosts) <= PER_SITE
    assert seen[SLOW_HOST]["max_in_flight"] == PER_SITE
    assert seen[LIMITED_HOST]["refused"] > 0, "the limited site never pushed back"
    assert stats["politeness/retry_after/received"] == seen[LIMITED_HOST]["refused"]

    # Recorded, not asserted (a timing): when the healthy sites were done, against the slow.
    start = min(seen[h]["first"] for h in many_sites.hosts)
    healthy = [h for h in many_sites.hosts if h not in (SLOW_HOST, LIMITED_HOST)]
    finished = {
        "healthy_sites_done_s": max(seen[h]["last"] for h in healthy) - start,
        "limited_site_done_s": seen[LIMITED_HOST]["last"] - start,
        "slow_site_done_s": seen[SLOW_HOST]["last"] - start,
    }
    for name, seconds in finished.items():
        record_property(name, round(seconds, 2))
    logging.getLogger(__name__).info("Finished after the first request: %s", finished)


@deferred_f_from_coro_f
async def test_a_per_domain_limit_set_by_the_user_wins_at_the_site(
    many_sites: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hosts = [h for h in many_sites.hosts if h not in (SLOW_HOST, LIMITED_HOST)][:2]
    lists = many_sites.write_urls_file(tmp_path / "lists.txt", 40, per_page=40, hosts=hosts)
    many_sites.host_stats(reset=True)
    crawler = await crawl(
        None,
        {"urls_file": str(lists)},
        CONCURRENT_REQUESTS=1000,
        CONCURRENT_REQUESTS_PER_DOMAIN=3,
        **MANY_SITES,
        **store_settings(tmp_path),
    )
    assert crawler.stats.get_value("meta_store/written") == 80
    seen = many_sites.host_stats()
    # 40 children of 100 ms each per host: the limit is reached, and never passed.
    assert [seen[h]["max_in_flight"] for h in hosts] == [3, 3]
    assert "CONCURRENT_REQUESTS_PER_DOMAIN=3 requests at once per site (your setting)" in (
        caplog.text
    )


@deferred_f_from_coro_f
async def test_list_pages_of_one_site_in_a_urls_file_are_one_site(
    many_sites: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    host = many_sites.hosts[-1]
    lists = tmp_path / "lists.txt"
    lists.write_text(
        "".join(f"{many_sites.host_base(host)}/list?n=60&per_page=30&page={p}\n" for p in (1, 2))
    )
    many_sites.host_stats(reset=True)
    crawler = await crawl(
        None,
        {"urls_file": str(lists)},
        CONCURRENT_REQUESTS=100,
        **MANY_SITES,
        **store_settings(tmp_path),
    )
    assert crawler.stats.get_value("meta_store/written") == 60
    assert f"Sites: 1 ({host}): per-site concurrency follows CONCURRENT_REQUESTS=100" in (
        caplog.text
    )
    # Both list pages' 60 children at once on the one site: above any per-site limit.
    assert many_sites.host_stats()[host]["max_in_flight"] > PER_SITE


@deferred_f_from_coro_f
async def test_jobdir_resumes_a_many_site_crawl_with_its_fair_queue(
    many_sites: Site, tmp_path: Path
) -> None:
    """The fair queue keeps one queue per site in JOBDIR: a crawl stopped early resumes
    from it, and no page is fetched twice."""
    hosts = [h for h in many_sites.hosts if h not in (SLOW_HOST, LIMITED_HOST)][-3:]
    n = 100
    lists = many_sites.write_urls_file(tmp_path / "lists.txt", n, per_page=50, hosts=hosts)
    values = {"JOBDIR": str(tmp_path / "job"), **MANY_SITES, **store_settings(tmp_path)}
    many_sites.host_stats(reset=True)
    first = await crawl(
        None, {"urls_file": str(lists)}, CONCURRENT_REQUESTS=20, CLOSESPIDER_ITEMCOUNT=60, **values
    )
    assert fair_queue(first.settings)
    assert first.stats.get_value("finish_reason") == "closespider_itemcount"
    stored_first = len(records(tmp_path))
    assert stored_first < 3 * n

    resumed = await crawl(None, {"urls_file": str(lists)}, CONCURRENT_REQUESTS=20, **values)
    assert resumed.stats.get_value("finish_reason") == "finished"
    assert resumed.stats.get_value("meta_store/written") == 3 * n - stored_first
    docs = records(tmp_path)
    assert {d["url"] for d in docs} == expected_urls(many_sites, hosts, n)
    seen = many_sites.host_stats()
    # Each host's 100 children and 2 list pages, fetched once across both runs.
    assert [seen[h]["hits"] for h in hosts] == [n + 2] * 3


@deferred_f_from_coro_f
async def test_a_mode_decided_after_the_start_applies_to_the_running_downloader(
    many_sites: Site, tmp_path: Path
) -> None:
    """As the distributed scheduler does once Redis names the list pages: the crawl starts
    as one site (1000 at once on it), the mode of many is applied at spider_opened."""
    host = many_sites.hosts[-2]
    later = SiteMode((host, "b.example"), per_site=3, total=1000, user_set=False)
    values = project_settings(
        CONCURRENT_REQUESTS=1000,
        DOWNLOAD_SLOTS={"own.example": {"concurrency": 1}},
        **MANY_SITES,
        **store_settings(tmp_path),
    )
    crawler = Crawler(ListingSpider, values)

    def opened() -> None:
        apply_to_downloader(later, crawler)
        apply_to_downloader(later, crawler)  # idempotent

    crawler.signals.connect(opened, signal=signals.spider_opened)
    many_sites.host_stats(reset=True)
    await crawler.crawl_async(url=many_sites.listing_urls(40, per_page=40, hosts=[host])[0])
    assert crawler.stats.get_value("meta_store/written") == 40
    assert crawler.settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") == 1000  # one site at start
    assert many_sites.host_stats()[host]["max_in_flight"] == 3  # 40 children of 100 ms

    # Slots that exist take a new mode, but one with its own concurrency in DOWNLOAD_SLOTS.
    downloader = crawler.engine.downloader
    downloader.slots["own.example"] = Slot(1, 0, 0)
    apply_to_downloader(SiteMode((host,), 1000, 1000, user_set=False), crawler)
    assert (downloader.slots[host].concurrency, downloader.domain_concurrency) == (1000, 1000)
    assert downloader.slots["own.example"].concurrency == 1


def test_a_slowed_slot_keeps_its_slowed_concurrency_and_recovers_to_the_new_one() -> None:
    crawler = crawler_for(settings())
    polite = RetryAfterMiddleware(crawler)
    slot = Slot(1000, 0, 0)
    assert not polite.rebase_concurrency("a.example", slot, 8)  # not slowed: the caller sets it
    polite._slow("a.example", slot, None, stated=1, status=429)  # halved: 500
    assert polite.rebase_concurrency("a.example", slot, 8)
    assert slot.concurrency == 8 and polite.slowed["a.example"].concurrency == 8
    slot.concurrency = 2  # slowed further meanwhile
    assert polite.rebase_concurrency("a.example", slot, 8)
    assert slot.concurrency == 2  # stays slowed; recovers to 8, not to 1000


# -- many sites, many nodes (distributed: per-site queues in Redis) ------------------------

#: A node's environment for the many-site test world.
MANY_SITES_ENV = {"SCRAPER_ALLOWED_NETWORKS": "127.0.0.0/8"}


def seed_many(redis_url: str, tmp_path: Path, urls: list[str]) -> None:
    result = scrapy("seed", "listing", *urls, "-s", f"REDIS_URL={redis_url}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"listing:start_urls += {len(urls)} URL(s)" in result.stdout


def test_twenty_sites_on_two_nodes_every_page_stored_once_each_site_within_its_limit(
    many_sites: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """The 20-site world crawled by two nodes from per-site queues in Redis: every page
    once, the slow site and the rate-limited one included; no site ever had more in
    flight than the two nodes' limits together; the site's 429s paused it for both."""
    n = 40
    many_sites.host_stats(reset=True)
    # Nodes first, waiting for work: they learn that the crawl spans sites from Redis.
    nodes += [
        Node(f"node{i}", redis_url, tmp_path, "CONCURRENT_REQUESTS=1000", env=MANY_SITES_ENV)
        for i in range(2)
    ]
    for node in nodes:  # open, before any seed
        deadline = time.monotonic() + 60
        while "Distributed crawl: node" not in (node.log.read_text() if node.log.exists() else ""):
            assert time.monotonic() < deadline, "the node never opened"
            time.sleep(0.1)
    seed_many(redis_url, tmp_path, many_sites.listing_urls(n, per_page=20))
    assert [node.wait() for node in nodes] == [0, 0]
    seen = many_sites.host_stats()

    docs = records(tmp_path)
    assert len(docs) == len({d["fingerprint"] for d in docs}) == 20 * n
    assert {d["url"] for d in docs} == expected_urls(many_sites, many_sites.hosts, n)
    assert not [d["url"] for d in docs if d.get("error")]
    stats = [node.stats() for node in nodes]
    assert all(s["meta_store/written"] > 0 for s in stats)  # the work was shared
    assert_children_recorded(stats, len(docs))
    for node in nodes:  # each node learnt the crawl's sites from Redis
        assert "Sites: 20 list-page hosts: at most CONCURRENT_REQUESTS_PER_SITE=8" in (
            node.log.read_text()
        )
    assert max(seen[h]["max_in_flight"] for h in many_sites.hosts) <= 2 * PER_SITE
    assert seen[LIMITED_HOST]["refused"] > 0, "the limited site never pushed back"
    assert (
        sum(s.get("politeness/retry_after/received", 0) for s in stats)
        == (seen[LIMITED_HOST]["refused"])
    )
    assert sum(s.get("distributed/sites_paused", 0) for s in stats) > 0  # told to Redis


def test_a_delay_per_site_is_one_rate_shared_by_every_node(
    many_sites: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """DOWNLOAD_DELAY=0.1 is 10 requests a second to the site from the whole crawl, not
    from each node: measured at the site, three nodes together stay within 10% of it."""
    host, n, rate = many_sites.hosts[5], 60, 10.0
    many_sites.host_stats(reset=True)
    seed_many(redis_url, tmp_path, many_sites.listing_urls(n, per_page=100, hosts=[host]))
    nodes += [
        Node(
            f"node{i}",
            redis_url,
            tmp_path,
            f"DOWNLOAD_DELAY={1 / rate}",
            "ROBOTSTXT_OBEY=False",
            "REDIS_LEASE_SECONDS=30",
            env=MANY_SITES_ENV,
        )
        for i in range(3)
    ]
    assert [node.wait() for node in nodes] == [0, 0, 0]
    seen = many_sites.host_stats()[host]

    assert len(records(tmp_path)) == n
    assert seen["hits"] == n + 1  # the list page and its children, each once
    measured = (seen["hits"] - 1) / (seen["last"] - seen["first"])
    assert measured <= rate * 1.1, seen
    # And in any one second (spaced exactly, 10 fit in a second; 11 when one came late).
    assert seen["max_per_second"] <= rate * 1.1, seen
    # Each node alone keeps the delay too: without the shared pace, three would send ~3x.
    stats = [node.stats() for node in nodes]
    assert sum(s.get("meta_store/written", 0) > 0 for s in stats) >= 2, stats  # shared, not serial
