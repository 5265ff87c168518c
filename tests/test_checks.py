"""Checks that fail a bad crawl (scraper/checks.py): `scrapy crawl` as a user runs it, its
exit code, its ERROR lines and its stats (STATS_FILE)."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import pytest
import redis

from scraper.checks import Limits, judge
from scraper.sites import site_of
from tests.helpers import Site, records, scrapy_crawl, seed, setting_args, store_settings

if TYPE_CHECKING:
    from pathlib import Path

    from tests.helpers import Crawled

#: What every crawl here leaves out: retries (a 500 is tried once) and progress lines.
QUICK = {"RETRY_TIMES": 0, "PROGRESS_INTERVAL": 0}


def links(site: Site, *hrefs: str) -> str:
    """A list page of the test site linking to each of ``hrefs``."""
    return f"{site.base}/links?{urlencode([('href', href) for href in hrefs])}"


def crawl(url: str, tmp_path: Path, **settings: object) -> Crawled:
    args = ["-a", f"url={url}", *setting_args(store_settings(tmp_path, **QUICK, **settings))]
    return scrapy_crawl(args, cwd=tmp_path, timeout=120)


def broken_checks(output: str) -> list[str]:
    """The ERROR lines of the checks a crawl broke."""
    return re.findall(r"\[scraper\.checks\] ERROR: (Check failed: .*)", output)


@pytest.mark.parametrize("mode", ["single", "distributed"])
def test_a_healthy_crawl_passes_its_checks_and_exits_0(
    site: Site, tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    if mode == "distributed":
        redis_url = request.getfixturevalue("redis_url")
        seed(site, redis_url, tmp_path, 20)
        args = setting_args(store_settings(tmp_path, **QUICK, REDIS_URL=redis_url))
        result = scrapy_crawl(args, cwd=tmp_path, timeout=120)
    else:
        result = crawl(site.listing_url(20), tmp_path)

    assert result.returncode == 0, result.output[-3000:]
    assert result.stats["finish_reason"] == "finished"
    assert result.stats["checks/failed"] == 0
    assert broken_checks(result.output) == []
    assert "Checks passed" in result.output
    assert len(records(tmp_path)) == 20


def test_children_that_all_fail_break_the_failed_share_and_exit_2(
    site: Site, tmp_path: Path
) -> None:
    """Every child answers 500: each still ends as a record, and the crawl says it failed."""
    result = crawl(links(site, *(f"/fault/500?n={i}" for i in range(10))), tmp_path)

    assert result.returncode == 2, result.output[-3000:]
    assert result.stats["finish_reason"] == "checks_failed"
    assert result.stats["checks/failed"] == 1
    [line] = broken_checks(result.output)
    assert line.startswith("Check failed: 10 of 10 children failed (100%); seen: ")
    assert re.search(r"seen: (http_5xx|HTTP 500) x10;", line), line
    assert line.endswith(
        "limit CHECK_MAX_FAILED_SHARE=0.9 (-s CHECK_MAX_FAILED_SHARE=... to change it)"
    )
    # Every ERROR line is counted, this one included (Scrapy's LogCount stops before it).
    assert result.stats["log_count/ERROR"] == result.output.count("] ERROR: ")
    docs = records(tmp_path)
    assert len(docs) == 10 and all(d["error"] == "HTTP 500" for d in docs)
    # The final stats dump (what scrapyd keeps in its log) says it too.
    assert "'finish_reason': 'checks_failed'" in result.output


@pytest.mark.parametrize(("limit", "exit_code"), [(0.5, 0), (0.4, 2)])
def test_the_failed_share_is_judged_against_its_setting(
    site: Site, tmp_path: Path, limit: float, exit_code: int
) -> None:
    """Two children of four fail: a share of 0.5, broken only above the limit."""
    url = links(site, "/page/1", "/page/2", "/fault/500?n=1", "/fault/404")
    result = crawl(url, tmp_path, CHECK_MAX_FAILED_SHARE=limit)

    assert result.returncode == exit_code, result.output[-3000:]
    lines = broken_checks(result.output)
    if exit_code:
        assert result.stats["finish_reason"] == "checks_failed"
        assert [line.split(";")[0] for line in lines] == [
            "Check failed: 2 of 4 children failed (50%)"
        ]
        assert f"limit CHECK_MAX_FAILED_SHARE={limit} " in lines[0]
    else:
        assert result.stats["finish_reason"] == "finished"
        assert lines == []


def test_an_all_500_site_stores_nothing_and_breaks_the_minimum_stored(
    site: Site, tmp_path: Path
) -> None:
    """The list page itself answers 500: no child, no record."""
    result = crawl(f"{site.base}/fault/500", tmp_path)

    assert result.returncode == 2, result.output[-3000:]
    assert result.stats["finish_reason"] == "checks_failed"
    assert broken_checks(result.output) == [
        "Check failed: 0 records stored in META_STORE (0 children found on 0 list page(s); "
        "1 list page(s) failed); limit CHECK_MIN_STORED=1 (-s CHECK_MIN_STORED=... to change "
        "it)"
    ]
    assert records(tmp_path) == []


def test_checks_switched_off_leave_the_crawl_finished(site: Site, tmp_path: Path) -> None:
    result = crawl(f"{site.base}/fault/500", tmp_path, CHECKS_ENABLED=False)

    assert result.returncode == 0, result.output[-3000:]
    assert result.stats["finish_reason"] == "finished"
    assert "checks/failed" not in result.stats
    assert broken_checks(result.output) == []


def test_a_crawl_stopped_before_its_end_is_not_judged(site: Site, tmp_path: Path) -> None:
    """Stopped by CLOSESPIDER_ITEMCOUNT after one failed child: it keeps its reason."""
    url = links(site, *(f"/fault/500?n={i}" for i in range(10)))
    result = crawl(url, tmp_path, CLOSESPIDER_ITEMCOUNT=1, CONCURRENT_REQUESTS=1)

    assert result.returncode == 0, result.output[-3000:]
    assert result.stats["finish_reason"] == "closespider_itemcount"
    assert result.stats["listing/child_failed"] >= 1
    assert "checks/failed" not in result.stats
    assert broken_checks(result.output) == []


def test_bodies_that_all_spool_break_the_spooled_share(site: Site, tmp_path: Path) -> None:
    """BODY_STORE opens, then refuses every body (each key's folder is a file): every body
    goes to the spool, every record says body_pending."""
    bodies = tmp_path / "bodies"
    bodies.mkdir()
    for prefix in range(256):
        (bodies / f"{prefix:02x}").write_text("")  # where the store's folder would be
    result = crawl(site.listing_url(10), tmp_path, BODY_STORE_RETRY_TIMEOUT=0)

    assert result.returncode == 2, result.output[-3000:]
    assert result.stats["finish_reason"] == "checks_failed"
    assert result.stats["body_store/spooled"] == 10
    assert broken_checks(result.output) == [
        "Check failed: 10 of 10 bodies (100%) did not reach BODY_STORE (spooled: `scrapy "
        "replay`); limit CHECK_MAX_SPOOLED_SHARE=0.9 (-s CHECK_MAX_SPOOLED_SHARE=... to change "
        "it)"
    ]
    docs = records(tmp_path)
    assert len(docs) == 10 and all(d["body_pending"] for d in docs)


def test_a_request_moved_to_dead_breaks_the_dead_share(
    site: Site, tmp_path: Path, redis_url: str
) -> None:
    """Distributed: a request whose lease expired for the REDIS_MAX_ATTEMPTS+1-th time is
    moved to listing:dead by the node that reclaims it; it will never have a record."""
    seed(site, redis_url, tmp_path, 10)
    client = redis.Redis.from_url(redis_url)
    entry = "4242 " + json.dumps({"url": f"{site.base}/page/9999"})
    client.zadd("listing:leases", {"gone-node:1": 0})  # expired long ago
    # Lease data: "<score> <site> <queue entry>" (scraper/distributed/codec.py).
    client.hset("listing:leased", "gone-node:1", f"0 {site_of(site.base)} {entry}")
    client.hset("listing:attempts", "4242", 5)  # REDIS_MAX_ATTEMPTS (5) leases lost already
    args = setting_args(store_settings(tmp_path, **QUICK, REDIS_URL=redis_url))
    result = scrapy_crawl(args, cwd=tmp_path, timeout=120)

    assert result.returncode == 2, result.output[-3000:]
    assert result.stats["finish_reason"] == "checks_failed"
    assert result.stats["distributed/dead"] == 1
    [line] = broken_checks(result.output)
    assert line.startswith(
        "Check failed: 1 request(s) moved to :dead after losing their lease REDIS_MAX_ATTEMPTS "
        "times"
    )
    assert line.endswith(
        "limit CHECK_MAX_DEAD_SHARE=0.0 (-s CHECK_MAX_DEAD_SHARE=... to change it)"
    )
    assert client.lrange("listing:dead", 0, -1) == [entry.encode()]
    assert len(records(tmp_path)) == 10  # the crawl's own pages are all stored
    client.close()


@pytest.mark.parametrize(
    ("setting", "value", "why"),
    [
        ("CHECK_MAX_FAILED_SHARE", "2", "'2' is not a share from 0 to 1 (1 turns it off)"),
        ("CHECK_MIN_STORED", "some", "'some' is not a count of 0 or more (0 turns it off)"),
    ],
)
def test_a_limit_that_cannot_be_stops_the_crawl_at_start(
    site: Site, tmp_path: Path, setting: str, value: str, why: str
) -> None:
    result = crawl(site.listing_url(5), tmp_path, **{setting: value})

    assert result.returncode == 1, result.output[-3000:]
    assert result.stats["finish_reason"] == f"{setting.lower()}_unusable"
    assert f"{setting} unusable, crawl stopped: {why}" in result.output
    assert records(tmp_path) == []


def test_spooled_records_count_and_a_node_is_not_judged_on_the_minimum() -> None:
    """In-process, on stats alone: records META_STORE refused count like bodies; a node of
    a distributed crawl that stored nothing is not judged on CHECK_MIN_STORED."""
    limits = Limits(0.9, 0.9, 0.0, 1)
    stats = {"meta_store/written": 1, "meta_store/failed": 19, "meta_store/spooled": 18}
    [broken] = judge(stats, limits, distributed=True)
    assert broken.setting == "CHECK_MAX_SPOOLED_SHARE"
    assert broken.measured == (
        "19 of 20 records (95%) did not reach META_STORE (1 lost: the spool failed too)"
    )
    assert judge({}, limits, distributed=True) == []
    assert [b.setting for b in judge({}, limits, distributed=False)] == ["CHECK_MIN_STORED"]
