"""Redis holds data, not code: entries planted in any key a node reads are rejected and logged.

Whoever can write to Redis must not be able to run code on the nodes, nor stop the crawl.
Keys a node parses: ``listing:start_urls``, ``listing:requests``, ``listing:leases`` /
``listing:leased`` (what expired leases put back), ``listing:attempts`` and
``listing:nodes``. (``:dupefilter`` and ``:dead`` are only added to and counted, never
parsed.) Each planted entry below would, if a node took it for code, create a marker file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from scraper.distributed.codec import MAX_ENTRY_BYTES, heartbeat
from tests.helpers import (
    ENV,
    assert_children_recorded,
    assert_stored_once,
    records,
    scrapy_crawl,
    seed,
    setting_args,
    store_settings,
)

if TYPE_CHECKING:
    from tests.helpers import Site


def pickle_payload(marker: Path) -> bytes:
    """A pickle (protocol 0, written by hand: nothing here unpickles it) that, if anyone
    unpickled it, would run ``touch marker``."""
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def plant(client: redis.Redis, site: Site, tmp_path: Path) -> None:
    """Crafted entries in every key a node parses."""
    boom = pickle_payload(tmp_path / "pwned")
    deep = "[" * 100_000 + "]" * 100_000  # nesting that would exhaust the parser's stack
    # start_urls: plain URLs or {"url": ..., "meta": {...}}
    client.rpush(
        "listing:start_urls",
        boom,
        b"{broken json",
        json.dumps({"url": 5}),
        '{"url":' * 50_000 + '"x"' + "}" * 50_000,
        "ftp://127.0.0.1/file",
        f"{site.base}/list?pad=" + "a" * MAX_ENTRY_BYTES,  # oversized
        f"{site.base}/list?n=3&page=1&q=".encode() + b"\xff\xfe",  # not UTF-8
    )
    # a site's queue: "<sequence> <request JSON>", as the enqueue script writes them
    page0 = f"{site.base}/page/0"
    client.zadd("listing:sites", {"127.0.0.1": 0})
    client.zadd(
        "listing:q:127.0.0.1",
        {
            b"1 " + boom: -5,
            "2 {not json": -5,
            "3 " + json.dumps({"url": page0, "callback": "nope"}): -5,
            "4 " + json.dumps({"url": page0, "callback": "start"}): -5,  # not a callback
            "5 " + json.dumps({"url": page0, "meta": {"pad": "y" * MAX_ENTRY_BYTES}}): -5,
            b'6 {"url": "' + page0.encode() + b'\xff"}': -5,  # not UTF-8
            "7 " + json.dumps({"url": page0, "_class": "planted.Request"}): -5,
            "8 " + json.dumps(["url", page0]): -5,
            "9 " + deep: -5,
            "10 " + json.dumps({"url": page0, "encoding": "no-such-codec"}): -5,
            "11 " + json.dumps({"url": page0}): -5,  # Scrapy would call parse: none here
            "12 " + json.dumps({"url": page0, "callback": "parse"}): -5,
            "nospace": -5,
        },
    )
    # Expired leases: what they hold goes back to a queue / start_urls, or to :dead.
    client.zadd("listing:leases", {f"planted:{i}": 0 for i in range(1, 6)})
    client.zadd("listing:leases", {"planted:6": 2**52})  # no lease data, never expiring
    client.hset(
        "listing:leased",
        mapping={
            "planted:1": "nospace",
            "planted:2": b"abc 9 " + boom,  # the score is not a number
            "planted:3": b"start " + boom,  # a start URL: back to start_urls, rejected there
            # back to its site's queue, rejected there
            "planted:4": b"-1000000000000 127.0.0.1 424242 " + boom,
            "planted:5": b"\xff\xfe 1 x",
            "planted:7": b"-1000000000000 127.0.0.1 424243 " + boom,  # data, no deadline
        },
    )
    client.hset("listing:attempts", "424242", "not a count")
    # nodes: "<ms> <heartbeat JSON object>"
    client.hset(
        "listing:nodes",
        mapping={
            "planted-a": boom,
            "planted-b": "garbage",
            "planted-c": "123 [1, 2]",
            "planted-d": "123 {" + "x" * MAX_ENTRY_BYTES,
            "planted-e": b'123 {"a": "\xff"}',
        },
    )


def test_planted_entries_are_rejected_logged_and_run_no_code(
    site: Site, redis_url: str, tmp_path: Path
) -> None:
    # A module that leaves a marker if anything imports it (a request's "_class" names it).
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "planted.py").write_text(
        f"open({str(tmp_path / 'imported')!r}, 'w').close()\nfrom scrapy import Request\n"
    )
    client = redis.Redis.from_url(redis_url)
    plant(client, site, tmp_path)
    seed(site, redis_url, tmp_path, 300)
    log = tmp_path / "node.log"
    settings = store_settings(tmp_path, REDIS_URL=redis_url, REDIS_LEASE_SECONDS=3, LOG_FILE=log)
    pythonpath = os.pathsep.join(p for p in (str(plugins), ENV.get("PYTHONPATH")) if p)
    result = scrapy_crawl(
        setting_args(settings), cwd=tmp_path, env={"PYTHONPATH": pythonpath}, timeout=240
    )

    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "pwned").exists()  # no pickle was loaded
    assert not (tmp_path / "imported").exists()  # no module named by Redis was imported
    text = log.read_text()
    assert "Traceback" not in text
    stats = result.stats
    assert stats["finish_reason"] == "finished"
    assert_stored_once(site, tmp_path, 300)
    assert_children_recorded(stats, len(records(tmp_path)))
    rejected = {
        key.rsplit("/", 1)[1]: n
        for key, n in stats.items()
        if key.startswith("distributed/rejected/")
    }
    assert rejected == {"start_urls": 8, "requests": 14, "leased": 4, "leases": 1, "nodes": 5}
    assert text.count("that is not ours") == sum(rejected.values())
    for reason in (
        "not JSON",
        "not UTF-8",
        "is over",
        "not a request",
        "not a callback",
        "not an http(s) URL",
        "too deeply nested",
        "no lease data",
        "no callback",
        "not a heartbeat",
    ):
        assert reason in text, reason
    # Nothing planted is left where a node would read it again.
    assert client.zcard("listing:leases") == client.hlen("listing:leased") == 0
    # The node's own last heartbeat (state "closed", scraper/distributed/heartbeat.py) is all
    # that is left of the nodes' entries.
    left = [heartbeat(v)[1] for v in client.hvals("listing:nodes")]
    assert [info["state"] for info in left] == ["closed"]
    assert client.llen("listing:dead") == 4  # unreadable lease data, kept for a look
    client.close()
