"""Turns bench rows into the tables of bench/RESULTS.md and the plot bench/results.png.

The generated part of RESULTS.md sits between two marker lines; what is written by
hand around it (analysis, profile findings) is kept.
"""

from __future__ import annotations

import platform
import statistics
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ORDER = ("ours", "ours-impolite", "ours-no-storage", "celery-gevent", "bare")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratios(rows: list[dict[str, Any]], a: str, b: str) -> list[float]:
    """pages/s of ``a`` over ``b``, one ratio per repeat (both from the same minutes)."""
    by_repeat: dict[int, dict[str, float]] = defaultdict(dict)
    for row in rows:
        if row["ok"]:
            by_repeat[row["repeat"]][row["contender"]] = row["pages_per_second"]
    return [r[a] / r[b] for r in by_repeat.values() if a in r and b in r]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (profile, n, c, contender): medians and spreads over the repeats."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["profile"], row["n"], row["c"])].append(row)
    lines = []
    named = {row["contender"] for row in rows}
    order = [c for c in ORDER if c in named] + sorted(named - set(ORDER))  # then ours@REV
    for (profile, n, c), group in sorted(groups.items()):
        for contender in order:
            runs = [r for r in group if r["contender"] == contender]
            if not runs:
                continue
            ok = [r for r in runs if r["ok"]]
            rates = [r["pages_per_second"] for r in ok]
            lines.append(
                {
                    "profile": profile,
                    "n": n,
                    "c": c,
                    "contender": contender,
                    "runs": len(runs),
                    "failed": len(runs) - len(ok),
                    "pages_per_second": _median(rates),
                    "min": min(rates, default=float("nan")),
                    "max": max(rates, default=float("nan")),
                    "cpu_ms_per_page": _median([r["cpu_ms_per_page"] for r in ok]),
                    "peak_rss_mb": _median([r["peak_rss_mb"] for r in ok]),
                    "site_cpu_ms_per_page": _median([1000 * r["site_cpu_seconds"] / n for r in ok]),
                    "sink_cpu_ms_per_page": _median([1000 * r["sink_cpu_seconds"] / n for r in ok]),
                    "verified": all(r["verified"] is not False for r in runs),
                    "stores": "n/a" if all(r["verified"] is None for r in runs) else "yes",
                    "vs_celery": _median(_ratios(group, contender, "celery-gevent")),
                    "vs_no_storage": _median(_ratios(group, contender, "ours-no-storage")),
                    "vs_ours": _median(_ratios(group, contender, "ours")),
                    "s3_capacity": runs[0].get("s3_capacity_puts_per_second"),
                }
            )
    return lines


def table(lines: list[dict[str, Any]]) -> str:
    out = [
        "| profile | N | c | contender | pages/s median [min-max] | CPU ms/page | peak RSS MB "
        "| vs celery | vs no-storage | vs ours | stored & verified | site CPU ms/page "
        "| S3 server CPU ms/page |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in lines:
        verified = (
            "FAILED " + f"{x['failed']}/{x['runs']}"
            if x["failed"]
            else (
                "n/a (stores nothing)"
                if x["stores"] == "n/a"
                else f"{x['n']} in each of {x['runs']} runs, 20 bodies byte-equal"
            )
        )
        out.append(
            f"| {x['profile']} | {x['n']} | {x['c']} | {x['contender']} | "
            f"{x['pages_per_second']:.0f} [{x['min']:.0f}-{x['max']:.0f}] | "
            f"{x['cpu_ms_per_page']:.2f} | {x['peak_rss_mb']:.0f} | {x['vs_celery']:.2f} | "
            f"{x['vs_no_storage']:.2f} | {x['vs_ours']:.2f} | {verified} | "
            f"{x['site_cpu_ms_per_page']:.2f} | "
            f"{x['sink_cpu_ms_per_page']:.2f} |"
        )
    return "\n".join(out)


def across_profiles(
    rows: list[dict[str, Any]], contender: str = "ours", base: str = "local"
) -> list[str]:
    """Per other profile: ``contender`` there against ``contender`` in ``base``, pages/s and
    CPU per page, one ratio per repeat (the same minutes), then the median."""
    out = []
    for profile in sorted({r["profile"] for r in rows} - {base}):
        for n, c in sorted({(r["n"], r["c"]) for r in rows}):
            pairs: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
            for r in rows:
                if (
                    (r["contender"], r["n"], r["c"]) == (contender, n, c)
                    and r["ok"]
                    and r["profile"] in (profile, base)
                ):
                    pairs[r["repeat"]][r["profile"]] = r
            both = [p for p in pairs.values() if profile in p and base in p]
            if not both:
                continue
            speed = [p[profile]["pages_per_second"] / p[base]["pages_per_second"] for p in both]
            cpu = [p[profile]["cpu_ms_per_page"] / p[base]["cpu_ms_per_page"] for p in both]
            out.append(
                f"`{contender}` in `{profile}` against `{base}` (N={n}, c={c}), per "
                f"repeat: pages/s {', '.join(f'{x:.2f}' for x in speed)} (median "
                f"**{_median(speed):.2f}x**); CPU per page "
                f"{', '.join(f'{x:.2f}' for x in cpu)} (median **{_median(cpu):.2f}x**)."
            )
    return out


def plot(lines: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = sorted({x["profile"] for x in lines})
    fig, axes = plt.subplots(1, len(profiles), figsize=(7 * len(profiles), 4.8), squeeze=False)
    for ax, profile in zip(axes[0], profiles, strict=True):
        mine = [x for x in lines if x["profile"] == profile]
        points = sorted({(x["n"], x["c"]) for x in mine})
        named = [c for c in ORDER if any(x["contender"] == c for x in mine)] + sorted(
            {x["contender"] for x in mine} - set(ORDER)
        )
        width = 0.8 / len(named)
        for k, contender in enumerate(named):
            xs, ys, lo, hi = [], [], [], []
            for j, (n, c) in enumerate(points):
                for x in mine:
                    if (x["n"], x["c"], x["contender"]) == (n, c, contender) and not x["failed"]:
                        xs.append(j + (k - 1.5) * width)
                        ys.append(x["pages_per_second"])
                        lo.append(x["pages_per_second"] - x["min"])
                        hi.append(x["max"] - x["pages_per_second"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=contender)
        ax.set_xticks(range(len(points)), [f"N={n}\nc={c}" for n, c in points])
        ax.set_ylabel("pages/s (median of repeats, bars: min-max)")
        ax.set_title(f"profile: {profile}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    rows: list[dict[str, Any]], command: str, path: Path, section: str = "results"
) -> None:
    """Write the tables into ``path`` (between the markers) and the plot beside it."""
    lines = summarize(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_name(f"{section}.png")
    plot(lines, png)
    latency = rows[0].get("latency_ms") if rows else None
    capacity = {x["profile"]: x["s3_capacity"] for x in lines if x["s3_capacity"]}
    sink_cpu = rows[0].get("s3sink_cpu_ms_per_put") if rows else None
    generated = "\n".join(
        [
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
            f"({platform.processor() or platform.machine()}, 2 cores), test site latency "
            f"{latency} ms, {rows[0].get('per_page', 100) if rows else 100} links per list page, "
            "with:",
            "",
            f"    {command}",
            "",
            table(lines),
            "",
            *[line + "\n" for line in across_profiles(rows)],
            f"Profile `s3`: bodies to bench/s3sink.py (its own process), meta to a JSON Lines "
            f"file; the sink alone takes {capacity['s3']:.0f} PUTs/s of 35 KB from obstore (32 "
            f"in flight) at {sink_cpu:.2f} ms of its CPU per PUT."
            if "s3" in capacity
            else "",
            "",
            f"Profile `services`: S3 = moto's server (its own process), which alone takes "
            f"{capacity['services']:.0f} PUTs/s of 50 KB from 32 boto3 threads: these rows "
            "measure moto's capacity (and mongomock's, inside each contender), not the "
            "crawlers."
            if "services" in capacity
            else "",
            "",
            f"Local profile stores in `{rows[0]['runs_dir']}`: "
            f"{rows[0]['runs_dir_files_per_second']:.0f} files/s of 35 KB alone (one thread); "
            "the project's own disk: "
            f"{rows[0]['project_disk_files_per_second']:.0f} files/s."
            if rows
            else "",
            "",
            f"![pages/s by contender and concurrency]({png.name})",
        ]
    )
    write_section(path, section, generated)


def write_section(path: Path, name: str, text: str) -> None:
    """Put ``text`` between the ``name`` marker lines of ``path`` (added at the end if new)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(new)
