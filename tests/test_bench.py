"""The benchmark harness at N=50, every contender and every profile: so it cannot rot.

This is not a measurement (bench/RESULTS.md is); it checks that each contender runs,
stores what it should, and that the harness verifies and reports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

from tests.helpers import ROOT

if TYPE_CHECKING:
    from pathlib import Path


def bench(module: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m bench.<module> ARGS`` from the project's root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_harness_runs_every_contender_and_verifies_the_stores(tmp_path: Path) -> None:
    rows_path, results = tmp_path / "rows.jsonl", tmp_path / "RESULTS.md"
    result = bench(
        "run",
        "--n",
        "50",
        "--concurrency",
        "10",
        "--repeats",
        "1",
        "--latency-ms",
        "10",
        "--sink-seconds",
        "0.5",
        "--timeout",
        "120",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--rows",
        str(rows_path),
        "--results",
        str(results),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert {(r["profile"], r["contender"]) for r in rows} == {
        (p, c)
        for p in ("local", "s3", "services")
        for c in ("ours", "ours-no-storage", "celery-gevent", "bare")
    }
    for row in rows:
        assert row["ok"] and row["stored"] == 50, row
        assert row["cpu_seconds"] > 0 and row["peak_rss_mb"] > 10
        storing = row["contender"] in ("ours", "celery-gevent")
        assert row["verified"] is (True if storing else None), row
    text = results.read_text()
    for profile in ("local", "s3", "services"):
        assert text.count(f"| {profile} | 50 | 10 |") == 4, profile
    assert "the sink alone takes" in text and "measure moto's capacity" in text
    assert "FAILED" not in text
    assert (tmp_path / "results.png").stat().st_size > 10_000
    # No children invariant: the harness deletes a successful run's stores and log, and its
    # report.json has no listing/children.


def test_verification_catches_a_wrong_body_and_a_missing_record(tmp_path: Path) -> None:
    from scrapy import Request
    from scrapy.utils.request import RequestFingerprinter

    from bench.run import Bench
    from scraper.testsite import render_child

    site = "http://127.0.0.1:1"
    bench = Bench(None, site, {}, tmp_path, 1, [], tmp_path)  # type: ignore[arg-type]
    n = 30
    lines = []
    for i in range(n):
        fp = RequestFingerprinter().fingerprint(Request(f"{site}/page/{i}")).hex()
        path = tmp_path / "bodies" / fp[:2] / fp
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(render_child(i))
        lines.append(json.dumps({"url": f"{site}/page/{i}", "fingerprint": fp}))
    (tmp_path / "meta.jsonl").write_text("\n".join(lines) + "\n")
    report = {"stored": n}
    assert bench.verify("ours", "local", n, tmp_path, report, None, None, "") is True

    for fp_path in (tmp_path / "bodies").rglob("*"):
        if fp_path.is_file():
            fp_path.write_bytes(b"not what the site served")
    assert bench.verify("ours", "local", n, tmp_path, report, None, None, "") is False

    (tmp_path / "meta.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert bench.verify("ours", "local", n, tmp_path, report, None, None, "") is False


def test_soak_samples_memory_checks_the_bound_and_the_stores(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    args = [
        "--n",
        "300",
        "--concurrency",
        "5",
        "--latency-ms",
        "20",
        "--per-page",
        "50",
        "--timeout",
        "120",
        "--results",
        str(results),
    ]

    def soak(*extra: str) -> subprocess.CompletedProcess[str]:
        return bench("soak", *args, *extra, timeout=300)

    ok = soak("--bound", "10", "--redis")  # one distributed node, its queue in Redis
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    text = results.read_text()
    assert "<!-- soak:begin -->" in text and "within the bound" in text
    assert "300 records, every child once, 50 bodies byte-equal" in text
    assert text.count("| 300 | 100% |") == 1 and "one distributed node (REDIS_URL)" in text

    over = soak("--bound", "-1")  # no run can shrink by 100%: the check must say so
    assert over.returncode == 1
    assert "OVER THE BOUND" in results.read_text()
    # No children invariant: the soak deletes its crawl's stores and log when it ends.


def test_the_many_site_bench_runs_its_contenders_and_checks_every_record(
    tmp_path: Path,
) -> None:
    """bench/sites.py at 3 sites x 20 children: the per-site queue on one Redis and on the
    3-master cluster, in both worlds; every record once, the tables written."""
    rows_path, results = tmp_path / "rows.jsonl", tmp_path / "RESULTS.md"
    result = bench(
        "sites",
        *("--sites", "3", "--children", "20", "--per-page", "10", "--repeats", "1"),
        *("--latency-ms", "10", "--slow-ms", "200", "--concurrency", "50"),
        *("--contenders", "per-site-1", "cluster-1", "--timeout", "120"),
        *("--runs-dir", str(tmp_path / "runs"), "--rows", str(rows_path)),
        *("--results", str(results)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    assert sorted((r["contender"], r["world"]) for r in rows) == [
        ("cluster-1", "all sites"),
        ("cluster-1", "healthy alone"),
        ("per-site-1", "all sites"),
        ("per-site-1", "healthy alone"),
    ]
    for row in rows:
        assert row["stored"] == (60 if row["world"] == "all sites" else 20), row
        assert row["ok"] and row["verified"] and not row["failed_records"], row
        assert row["exit"] == [0] and row["redis_round_trips"] > 0, row
    text = results.read_text()
    assert "| per-site-1 | all sites | 1 |" in text and "| cluster-1 | healthy alone | 1 |" in text
    assert "FAILED" not in text


def test_the_recrawl_bench_gives_each_phase_its_own_settings() -> None:
    """Each crawl of bench/recrawl.py runs with its phase's settings (Scrapy merges the
    process's settings into a Crawler it is given: a phase once ran with the project's)."""
    result = bench(
        "recrawl",
        *("--n", "300", "--concurrency", "50", "--per-page", "100"),
        *("--profiles", "local", "--repeats", "1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = next(json.loads(line) for line in result.stdout.splitlines() if line.startswith("["))
    crawls = {row["phase"]: row for row in rows}
    assert [row["finish_reason"] for row in rows] == ["finished"] * 5
    assert crawls["first"]["stored"] == crawls["first"]["records"] == 300
    assert crawls["unchanged"]["not_modified"] == 300 and crawls["unchanged"]["stored"] == 0
    assert 0 < crawls["changed-5%"]["stored"] < 300
    assert crawls["unchanged-no-pipelines"]["records"] == 0  # ITEM_PIPELINES = {}
    assert crawls["unchanged-no-pipelines"]["not_modified"] == 300
    assert crawls["min-age-1h"]["recent"] == crawls["min-age-1h"]["records"] == 300
    assert crawls["min-age-1h"]["not_modified"] == 0  # RECRAWL_MIN_AGE: no child asked
