"""Prometheus metrics (scraper/metrics.py): what a Prometheus scraping a node reads.

Each crawl runs as a user runs it (`scrapy crawl`, nodes as processes) with METRICS_PORT=0
(the port it picked is read from its log) and METRICS_LINGER, so that /metrics still
answers once the crawl has ended: the test scrapes it during the crawl, then once the
crawl has ended (``scraper_crawl_end_time_seconds`` appears), and compares that last
scrape, parsed by prometheus_client's own parser, with the stats the crawl wrote
(STATS_FILE) and the records it stored.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from scrapy.exceptions import (
    DownloadCancelledError,
    DownloadConnectionRefusedError,
    DownloadTimeoutError,
    IgnoreRequest,
    ResponseDataLossError,
)
from scrapy.http import HtmlResponse, Request
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from scraper.metrics import STATS
from scraper.spiders.records import failure_reason
from scraper.ssrf import AddressRefused
from tests.helpers import (
    ENV,
    ROOT,
    Node,
    Site,
    records,
    running_site,
    seed,
    setting_args,
    store_settings,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

Samples = dict[str, float]

CRAWL = [sys.executable, "-m", "scrapy", "crawl", "listing"]
QUEUED = 'scraper_shared_queue_requests{state="queued"}'
#: Long enough for the test's last scrape; the crawl exits as soon as that scrape is done.
LINGER = "METRICS_LINGER=60"


@pytest.fixture(scope="module")
def slow_site(logs: Path) -> Iterator[Site]:
    """The test site answering after 100 ms: a crawl lasts long enough to be scraped."""
    with running_site(
        logs / "metrics-site.log", "--latency-ms", "100", "--slow-ms", "1500", "--huge-mb", "3"
    ) as site:
        yield site


def test_a_crawls_metrics_at_its_end_equal_its_stats(slow_site: Site, tmp_path: Path) -> None:
    log = tmp_path / "crawl.log"
    stats_file = tmp_path / "stats.json"
    settings = store_settings(
        tmp_path,
        METRICS_PORT=0,
        METRICS_LINGER=60,
        LOG_FILE=log,
        STATS_FILE=stats_file,
        CONCURRENT_REQUESTS=10,
        RETRY_TIMES=1,
        DOWNLOAD_TIMEOUT=1,
        DOWNLOAD_MAXSIZE=2**20,
    )
    url = slow_site.listing_url(100, faults=True)
    crawl = subprocess.Popen(
        [*CRAWL, "-a", f"url={url}", *setting_args(settings)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        metrics = metrics_url(log, crawl)
        assert metrics.startswith("http://127.0.0.1:")  # METRICS_HOST's default
        during = scrape_until(metrics, lambda s: s["scraper_requests_in_flight"] > 0)
        final = scrape_until(metrics, ended)
        assert crawl.wait(30) == 0
    finally:
        if crawl.poll() is None:
            crawl.kill()
            crawl.wait(10)

    stats = json.loads(stats_file.read_text())
    assert_counters_equal(final, stats)
    stored = len(records(tmp_path))
    assert final["scraper_pages_stored_total"] == stats["meta_store/written"] == stored == 111
    assert during["scraper_pages_stored_total"] <= final["scraper_pages_stored_total"]
    # The fault pages (tests/test_crawl.py), each counted under its reason.
    assert {k: v for k, v in final.items() if k.startswith("scraper_children_failed")} == {
        'scraper_children_failed_total{reason="http_4xx"}': 1,
        'scraper_children_failed_total{reason="http_5xx"}': 1,
        'scraper_children_failed_total{reason="timeout"}': 2,
        'scraper_children_failed_total{reason="too_large"}': 1,
        'scraper_children_failed_total{reason="connection"}': 1,
        'scraper_children_failed_total{reason="ignored"}': 1,  # the redirect loop
    }
    # A first crawl: every child fetched is new (the faults are failures, not fetched).
    assert final['scraper_children_freshness_total{freshness="new"}'] == 111 - 7
    assert final['scraper_children_freshness_total{freshness="recent"}'] == 0
    assert sum(v for k, v in final.items() if k.startswith("scraper_responses_total")) == stats.get(
        "downloader/response_count"
    )
    # Store latencies: one observation per body stored, per meta batch written.
    assert final["scraper_body_store_put_seconds_count"] == stats["body_store/stored"]
    assert final["scraper_meta_store_write_seconds_count"] == stats["meta_store/batches"]
    assert final['scraper_crawl_end_time_seconds{reason="finished"}'] > 0
    assert final["scraper_requests_in_flight"] == final["scraper_local_queue_requests"] == 0
    assert "scraper_leases_held" not in final  # distributed only
    assert log.read_text().count("Metrics for Prometheus: http://") == 1
    assert_documented(during)
    assert_documented(final)


def test_two_nodes_metrics_sum_to_the_records_stored(
    slow_site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    seed(slow_site, redis_url, tmp_path, 400)
    nodes += [
        Node(name, redis_url, tmp_path, "METRICS_PORT=0", LINGER, "CONCURRENT_REQUESTS=20")
        for name in ("a", "b")
    ]
    urls = [metrics_url(node.log, node.proc) for node in nodes]
    during = [scrape_until(url, lambda s: QUEUED in s) for url in urls]
    finals = [scrape_until(url, ended) for url in urls]
    assert [node.wait(30) for node in nodes] == [0, 0]

    stored = len(records(tmp_path))
    assert stored == 400
    assert sum(final["scraper_pages_stored_total"] for final in finals) == stored
    for node, final in zip(nodes, finals, strict=True):
        assert_counters_equal(final, node.stats())
        assert final[QUEUED] == 0
        assert final["scraper_leases_held"] == 0
    assert not any(ended(s) for s in during)  # scraped while the nodes crawled
    assert_documented(finals[0])


@pytest.mark.parametrize("port", ["94x0", "taken"])
def test_a_metrics_port_that_cannot_be_had_stops_the_crawl_with_one_line(
    tmp_path: Path, port: str
) -> None:
    log = tmp_path / "crawl.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if port == "taken":
            port = str(taken.getsockname()[1])
        settings = store_settings(tmp_path, METRICS_PORT=port, LOG_FILE=log)
        result = subprocess.run(
            [*CRAWL, "-a", "url=http://127.0.0.1:9/", *setting_args(settings)],
            cwd=tmp_path,
            env=ENV,
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    why = (
        "'94x0' is not a port number"
        if port == "94x0"
        else f"cannot serve on 127.0.0.1:{port}: [Errno 98]"
    )
    assert f"METRICS_PORT unusable, crawl stopped: {why}" in log.read_text()


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (DownloadTimeoutError("took 1 s"), "timeout"),
        (DownloadConnectionRefusedError(), "refused"),
        (DownloadCancelledError(), "too_large"),
        (ResponseDataLossError(), "connection"),
        (IgnoreRequest("Forbidden by robots.txt"), "robots"),
        (AddressRefused("loopback"), "address_refused"),
        (IgnoreRequest("max redirections"), "ignored"),
        (ValueError("a bug"), "other"),
    ],
)
def test_each_failure_has_one_of_a_few_reasons(exc: Exception, reason: str) -> None:
    assert failure_reason(Failure(exc)) == reason


def test_an_http_error_is_its_status_class() -> None:
    request = Request("https://example.com/a")
    response = HtmlResponse(request.url, status=503, request=request)
    assert failure_reason(Failure(HttpError(response))) == "http_5xx"


# -- the kit: where a crawl serves its metrics, and what they say ----------------------------


def metrics_url(log: Path, proc: subprocess.Popen[Any], timeout: float = 60) -> str:
    """The /metrics URL a crawl logged (METRICS_PORT=0 picks a free port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"Metrics for Prometheus: (\S+)", log.read_text() if log.exists() else "")
        if found:
            return found.group(1)
        assert proc.poll() is None, f"the crawl ended ({proc.returncode}) without serving metrics"
        time.sleep(0.05)
    raise AssertionError(f"no metrics URL in {log}")


def scrape(url: str) -> Samples:
    """Every sample of ``url``, parsed by prometheus_client, keyed as Prometheus shows it:
    ``name{label="value",...}``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def scrape_until(url: str, condition: Callable[[Samples], bool], timeout: float = 60) -> Samples:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = scrape(url)
        if condition(samples):
            return samples
        time.sleep(0.05)
    raise AssertionError(f"{url} never showed what was expected")


def ended(samples: Samples) -> bool:
    return any(name.startswith("scraper_crawl_end_time_seconds") for name in samples)


def assert_counters_equal(samples: Samples, stats: dict[str, Any]) -> None:
    """Each counter of the scrape is the stat it stands for (scraper.metrics.STATS)."""
    for counted in STATS:
        scraped = {
            name: value
            for name, value in samples.items()
            if name == f"{counted.name}_total" or name.startswith(f"{counted.name}_total{{")
        }
        expected = {
            f'{counted.name}_total{{{counted.label}="{label}"}}'
            if counted.label
            else f"{counted.name}_total": value
            for label, value in counted.values(stats).items()
        }
        assert scraped == expected, counted.name


def assert_documented(samples: Samples) -> None:
    """Every scraper_* metric served is in docs/operations.md."""
    docs = (ROOT / "docs" / "operations.md").read_text()
    names = {re.sub(r"(_bucket|_count|_sum|_created)?(\{.*)?$", "", name) for name in samples}
    missing = {name for name in names if name.startswith("scraper_") and f"`{name}" not in docs}
    assert not missing, missing
