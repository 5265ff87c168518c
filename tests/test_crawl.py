"""The crawl end to end against the test site, with the embedded local stores."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scrapy.utils.defer import deferred_f_from_coro_f

from scraper.testsite import free_port, in_change, render_child
from tests.helpers import (
    ROOT,
    Site,
    assert_children_recorded,
    crawl,
    log_stats,
    read_jsonl,
    records,
    running_site,
    store_settings,
)

if TYPE_CHECKING:
    from collections.abc import Iterator


def by_url(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["url"]: doc for doc in docs}


@pytest.mark.parametrize("fs_threads", [0, 3])
@deferred_f_from_coro_f
async def test_every_child_of_every_list_page_is_stored_once(
    site: Site, tmp_path: Path, fs_threads: int
) -> None:
    stores = store_settings(tmp_path)
    crawler = await crawl(
        site.listing_url(450, per_page=50),
        CONCURRENT_REQUESTS=200,
        BODY_STORE_FS_THREADS=fs_threads,
        **stores,
    )

    docs = read_jsonl(tmp_path / "meta.jsonl")
    assert len(docs) == 450
    assert {d["url"] for d in docs} == {f"{site.base}/page/{i}" for i in range(450)}
    assert len({d["fingerprint"] for d in docs}) == 450
    for doc in docs:
        name = doc["url"].rsplit("/", 1)[1]
        body = (tmp_path / "bodies" / doc["body_key"]).read_bytes()
        assert body == render_child(name)
        assert doc["status"] == 200 and doc["length"] == len(body) and doc["error"] is None
        assert doc["title"] == f"Child page {name}"
        assert "body" not in doc
    assert len(list((tmp_path / "bodies").rglob("*"))) == 450 + len(
        list((tmp_path / "bodies").iterdir())
    )  # files + their fan-out folders, nothing else
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    assert stats["listing/list_pages"] == 9
    assert stats["body_store/stored"] == stats["meta_store/written"] == 450
    assert stats["body_store/bytes"] == sum(d["length"] for d in docs)
    assert_children_recorded(stats, len(docs))


BINARY = random.Random(42).randbytes(64 * 1024)


@deferred_f_from_coro_f
async def test_fault_pages_each_end_as_one_record(site: Site, tmp_path: Path) -> None:
    stores = store_settings(tmp_path)
    crawler = await crawl(
        site.listing_url(150, faults=True),
        RETRY_TIMES=1,
        DOWNLOAD_TIMEOUT=1,
        DOWNLOAD_MAXSIZE=2**20,
        **stores,
    )

    docs = by_url(read_jsonl(tmp_path / "meta.jsonl"))
    # 150 children on two list pages (the second one malformed) + 11 fault pages.
    assert len(docs) == 161
    assert all(docs[f"{site.base}/page/{i}"]["status"] == 200 for i in range(150))
    fault = {url.rsplit("/", 1)[1]: doc for url, doc in docs.items() if "/fault/" in url}

    def body(name: str) -> bytes:
        return (tmp_path / "bodies" / fault[name]["body_key"]).read_bytes()

    assert (fault["500"]["status"], fault["500"]["error"]) == (500, "HTTP 500")
    assert (fault["404"]["status"], fault["404"]["error"]) == (404, "HTTP 404")
    for name in ("500", "404", "slow", "drip", "huge", "redirect-loop", "reset"):
        assert fault[name]["body_key"] is None, name
        assert fault[name]["error"], name
    assert fault["slow"]["error"].startswith("DownloadTimeoutError")
    assert fault["drip"]["error"].startswith("DownloadTimeoutError")
    assert "larger than download max size" in fault["huge"]["error"]
    assert "max redirections" in fault["redirect-loop"]["error"]
    assert fault["reset"]["status"] is None
    assert body("binary") == BINARY and fault["binary"]["title"] is None
    assert fault["latin1"]["title"] == "Café crème à la française"
    assert body("latin1").startswith("<html><head><title>Caf\xe9".encode("latin-1"))
    assert fault["redirect"]["final_url"] == f"{site.base}/page/r1"
    assert body("redirect") == render_child("r1")
    assert body("empty") == b"" and fault["empty"]["length"] == 0
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    assert stats["listing/child_failed"] == 7
    assert stats["body_store/stored"] == 150 + 4
    assert_children_recorded(stats, len(read_jsonl(tmp_path / "meta.jsonl")))


@deferred_f_from_coro_f
async def test_recrawl_leaves_the_same_records(site: Site, tmp_path: Path) -> None:
    stores = store_settings(tmp_path)
    url = site.listing_url(120, per_page=40)
    first_crawler = await crawl(url, **stores)
    first = by_url(read_jsonl(tmp_path / "meta.jsonl"))
    assert_children_recorded(first_crawler.stats.get_stats(), len(records(tmp_path)))
    crawler = await crawl(url, **stores)
    second = by_url(read_jsonl(tmp_path / "meta.jsonl"))

    assert crawler.stats.get_value("meta_store/written") == 120  # written again...
    assert len(second) == len(read_jsonl(tmp_path / "meta.jsonl")) == 120  # ...not added
    assert {u: d["fingerprint"] for u, d in first.items()} == {
        u: d["fingerprint"] for u, d in second.items()
    }
    assert all(second[u]["fetched_at"] > first[u]["fetched_at"] for u in first)  # the newest
    # Every record now in the store is the second crawl's (each one newer, just above).
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))
    files = [p for p in (tmp_path / "bodies").rglob("*") if p.is_file()]
    assert len(files) == 120


@deferred_f_from_coro_f
async def test_without_url_the_spider_says_how_to_run_it(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    crawler = await crawl(None, **store_settings(tmp_path))
    assert crawler.stats.get_value("finish_reason") == "no_url"
    assert "scrapy crawl listing -a url=" in caplog.text
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


@pytest.fixture(scope="module")
def site_8s_latency(logs: Path) -> Iterator[Site]:
    """A test site whose every answer takes 8 s: requests pile up in flight, even on a
    machine slow to start a thousand of them (each goes through the downloader middlewares,
    the SSRF guard's included)."""
    with running_site(logs / "slow-site.log", "--latency-ms", "8000") as site:
        yield site


@deferred_f_from_coro_f
async def test_concurrent_requests_1000_puts_1000_in_flight_on_one_site(
    site_8s_latency: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    site_8s_latency.stats(reset=True)
    # One list page with 2,000 links: the crawl can put 1,000 in flight at once.
    crawler = await crawl(
        site_8s_latency.listing_url(2000, per_page=2000),
        CONCURRENT_REQUESTS=1000,
        **store_settings(tmp_path),
    )
    assert crawler.stats.get_value("meta_store/written") == 2000
    # Measured by the server: how many requests it was answering at once.
    assert site_8s_latency.stats()["max_in_flight"] >= 950
    assert "Sites: 1 (127.0.0.1): per-site concurrency follows CONCURRENT_REQUESTS=1000" in (
        caplog.text
    )
    assert_children_recorded(crawler.stats.get_stats(), len(records(tmp_path)))


def test_readme_main_command_crawls_and_checks_the_stores(tmp_path: Path) -> None:
    """`python -m scraper.demo`, which bin/demo runs after setting up the venv; run again,
    it re-crawls the same URLs and finds every page unchanged."""
    port = str(free_port())
    command = [sys.executable, "-m", "scraper.demo", "--pages", "1000", "--port", port]

    def demo() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "--latency-ms", "20"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    result = demo()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK: every child page stored once, every body byte-equal." in result.stdout
    assert "1000 lines in data/meta.jsonl, 1000 fingerprints" in result.stdout
    assert len(read_jsonl(tmp_path / "data" / "meta.jsonl")) == 1000
    assert len([p for p in (tmp_path / "data" / "bodies").rglob("*") if p.is_file()]) == 1000
    # The demo's `scrapy crawl` logs to the demo's stderr.
    assert_children_recorded(
        log_stats(result.stderr), len(read_jsonl(tmp_path / "data" / "meta.jsonl"))
    )

    again = demo()
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "1000 byte-equal to what the site served, 1000 unchanged since the last run" in (
        again.stdout
    )
    assert "Children: 0 new, 0 changed, 1000 unchanged, 0 failed" in again.stderr
    assert len(read_jsonl(tmp_path / "data" / "meta.jsonl")) == 1000


def test_demo_refuses_a_taken_port(tmp_path: Path, site: Site) -> None:
    port = site.server.port
    result = subprocess.run(
        [sys.executable, "-m", "scraper.demo", "--port", str(port)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert f"Port {port} is taken" in result.stderr


def test_testsite_runs_as_a_command(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scraper.testsite",
            "--port",
            "0",
            "--pages",
            "7",
            "--per-page",
            "5",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # With --port 0 it binds a free port and says which, on its first line.
        first = proc.stdout.readline().decode()
        assert first.startswith("listening on 127.0.0.1:"), first
        port = int(first.rsplit(":", 1)[1])
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/list") as r:
            page = r.read().decode()
        assert page.count('class="child"') == 5 and 'rel="next"' in page
        with urllib.request.urlopen(f"{base}/page/3") as r:
            assert r.read() == render_child(3)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_testsite_answers_conditional_gets_and_changes_pages_on_demand(logs: Path) -> None:
    """What a re-crawl meets (issue 16): validators, 304s, a chosen share of pages changed,
    and a site without validators."""

    def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as exc:  # urllib raises on 304
            return exc.code, exc.read(), exc.headers

    with running_site(logs / "conditional-site.log") as site:
        status, body, headers = get(f"{site.base}/page/3")
        assert status == 200 and body == render_child(3)
        etag, modified = headers["ETag"], headers["Last-Modified"]
        assert get(f"{site.base}/page/3", {"If-None-Match": etag})[:2] == (304, b"")
        assert get(f"{site.base}/page/3", {"If-Modified-Since": modified})[0] == 304
        assert get(f"{site.base}/page/3", {"If-None-Match": '"other"'})[0] == 200

        get(f"{site.base}/_change?percent=20&seed=4")
        changed = {i for i in range(200) if in_change(i, 20, 4)}
        assert 20 <= len(changed) <= 60  # about 20% of 200
        for i in (*sorted(changed)[:3], *sorted(set(range(200)) - changed)[:3]):
            status, body, headers = get(f"{site.base}/page/{i}", {"If-Modified-Since": modified})
            if i in changed:  # new content, new validators
                assert status == 200 and body == render_child(i, revision=1)
                assert headers["Last-Modified"] != modified
            else:
                assert status == 304
        get(f"{site.base}/_change?reset=1")

        get(f"{site.base}/_validators?on=0")
        status, body, headers = get(f"{site.base}/page/3", {"If-None-Match": etag})
        assert status == 200 and body == render_child(3) and "ETag" not in headers
        stats = site.stats()
        assert stats["not_modified"] == 2 + 3 and stats["child_bytes"] > 0
