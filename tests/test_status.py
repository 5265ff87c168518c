"""`scrapy status`: the crawl's queue, every node's figures from its heartbeat, and the
totals, as a table or as JSON."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest

from scraper.commands.status import SILENT_AFTER, render, view
from scraper.distributed.counts import CrawlStatus
from tests.helpers import ENV, Node, records, running_site, scrapy, seed

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.helpers import Site

PAGES = 3000  # 30 list pages, read one after the other: ~6 s at 200 ms each
SEEN = PAGES + PAGES // 100  # requests in the dedup set: children and list pages


@pytest.fixture(scope="module")
def slow_site(logs: Path) -> Iterator[Site]:
    with running_site(logs / "status-site.log", "--latency-ms", "200") as site:
        yield site


def status(redis_url: str, tmp_path: Path, *args: str) -> str:
    result = scrapy("status", "listing", *args, "-s", f"REDIS_URL={redis_url}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def status_json(redis_url: str, tmp_path: Path) -> dict[str, Any]:
    return json.loads(status(redis_url, tmp_path, "--json"))  # type: ignore[no-any-return]


def test_status_json_during_a_two_node_crawl_lists_both_and_totals_match_the_records(
    slow_site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    seed(slow_site, redis_url, tmp_path, PAGES)
    nodes += [Node(f"node{i}", redis_url, tmp_path) for i in range(2)]
    pids = {node.proc.pid for node in nodes}

    # During the crawl: both nodes running, each with its figures, the totals their sums.
    deadline = time.monotonic() + 60
    while True:
        during = status_json(redis_url, tmp_path)
        running = [n for n in during["nodes"] if n["state"] == "running"]
        if len(running) == 2 and all(n["stored"] > 0 for n in running):
            break
        assert time.monotonic() < deadline, during
        assert all(node.proc.poll() is None for node in nodes), "a node ended first"
        time.sleep(0.2)
    assert {n["pid"] for n in running} == pids
    totals = during["totals"]
    assert (totals["nodes"], totals["running"]) == (2, 2)
    for key in ("stored", "errors", "leased", "in_flight"):
        assert totals[key] == sum(n[key] for n in during["nodes"]), key
    assert totals["stored"] < PAGES
    assert totals["rate"] > 0 and all(n["last_heard_seconds"] < SILENT_AFTER for n in running)

    # At the end: each node's last heartbeat, with its final figures; totals = the records.
    assert [node.wait() for node in nodes] == [0, 0]
    after = status_json(redis_url, tmp_path)
    assert [n["state"] for n in after["nodes"]] == ["closed", "closed"]
    assert {n["pid"] for n in after["nodes"]} == pids
    written = {node.proc.pid: node.stats()["meta_store/written"] for node in nodes}
    assert {n["pid"]: n["stored"] for n in after["nodes"]} == written
    assert after["totals"]["stored"] == len(records(tmp_path)) == PAGES
    assert after["totals"] == {
        "nodes": 2,
        "running": 0,
        "silent": 0,
        "closed": 2,
        "stored": PAGES,
        "errors": 0,
        "leased": 0,
        "in_flight": 0,
        "buffered": 0,
        "rate": 0,  # no node is running
    }
    assert (after["queued"], after["leased"], after["start_urls"], after["seen"]) == (0, 0, 0, SEEN)

    # The same as a table.
    table = status(redis_url, tmp_path).splitlines()
    assert table[0] == f"listing on {redis_url}"
    assert table[1] == f"queued 0  leased 0  start_urls 0  seen (dedup) {SEEN}  dead 0  sites 0"
    assert table[3].split() == [
        "node",
        "state",
        "pages/s",
        "stored",
        "errors",
        "leases",
        "in",
        "flight",
        "last",
        "heard",
    ]
    rows = [line.split() for line in table[4:6]]
    assert [row[1] for row in rows] == ["closed", "closed"]
    assert sorted(int(row[3]) for row in rows) == sorted(written.values())
    total = table[6].split()
    assert total[:4] == ["total", "0", "of", "2"] and total[6:] == [str(PAGES), "0", "0", "0"]


def heartbeat(**info: Any) -> dict[str, Any]:
    return {"pid": 1, "host": "h", "state": "running", "rate": 10.0, **info}


def test_the_table_and_totals_from_heartbeats_of_every_kind() -> None:
    now = 1_000_000
    crawl = view(
        "listing",
        CrawlStatus(
            queued=5,
            leased=7,
            start_urls=0,
            seen=40,
            dead=1,
            nodes={
                "a": (now - 500, heartbeat(stored=10, errors=1, leased=4, in_flight=3)),
                "b": (now - 60_000, heartbeat(stored=20, leased=3, in_flight=2)),
                "c": (now - 2_000, heartbeat(state="closed", stored=30, rate=5.5)),
                # An older node's heartbeat, or a planted field: what is not a number is 0.
                "d": (now - 100, {"stored": "many", "errors": None, "leased": True}),
            },
            now_ms=now,
            sites=3,
            waiting=2,
            waits={"busy.test": 30.0},
        ),
    )
    states = {n["node"]: (n["state"], n["stored"], n["last_heard_seconds"]) for n in crawl["nodes"]}
    assert states == {
        "a": ("running", 10, 0.5),
        "b": ("silent", 20, 60.0),
        "c": ("closed", 30, 2.0),
        "d": ("running", 0, 0.1),
    }
    assert crawl["totals"] == {
        "nodes": 4,
        "running": 2,
        "silent": 1,
        "closed": 1,
        "stored": 60,
        "errors": 1,
        "leased": 7,
        "in_flight": 5,
        "buffered": 0,
        "rate": 10.0,  # running nodes only: a silent one's figure is old, a closed one's done
    }
    lines = render(crawl).splitlines()
    assert lines[0] == "queued 5  leased 7  start_urls 0  seen (dedup) 40  dead 1  sites 3"
    assert lines[1] == "slowed: 2 sites wait (Retry-After or pace): busy.test 30 s and 1 more"
    assert lines[4].split()[:3] == ["a", "running", "10"]
    assert lines[5].split()[:2] == ["b", "silent"] and lines[5].endswith("60.0s ago")
    assert lines[-1].split() == ["total", "2", "of", "4", "running", "10", "60", "1", "7", "5"]
    empty = CrawlStatus(0, 0, 0, 0, 0, {}, now)
    assert render(view("listing", empty)).splitlines()[1] == "no node has sent a heartbeat"


def test_watch_prints_again_until_interrupted(redis_url: str, tmp_path: Path) -> None:
    watch = subprocess.Popen(
        [sys.executable, "-m", "scrapy", "status", "listing", "--json", "--watch", "0.3"],
        cwd=tmp_path,
        env={**ENV, "SCRAPER_REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = watch.stdout.readline()  # type: ignore[union-attr]
        second = watch.stdout.readline()  # type: ignore[union-attr]
    finally:
        watch.send_signal(signal.SIGINT)  # Ctrl-C, as a person stops it
        _, errors = watch.communicate(timeout=30)
    for line in (first, second):
        assert json.loads(line)["totals"]["nodes"] == 0
    assert "Traceback" not in errors, errors
