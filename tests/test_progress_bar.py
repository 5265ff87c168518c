"""The live progress bar: drawn when stderr is a terminal, with the log lines above it;
absent in a pipe, where the progress line stays as it was.

The terminal is a real pseudo-terminal (``pty``): the test reads what the crawl drew on
it, bytes as a terminal emulator would receive them.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from typing import TYPE_CHECKING

import pytest

from tests.helpers import ENV, records, running_site, scrapy_crawl, setting_args, store_settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.helpers import Site

PAGES = 200
#: A log line as it shows: the progress line exactly as users read (and grep) it.
PROGRESS_LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[scraper\.progress\] INFO: Progress: \d+ pages stored "
    r"\(\d+/s\), \d+ in flight, \d+ queued, \d+ errors"
)
BAR = re.compile(r"stored (\d+)/(\d+) \|")


@pytest.fixture(scope="module")
def slow_site(logs: Path) -> Iterator[Site]:
    """Latency enough that a crawl of PAGES at 20 requests in flight lasts ~3 s."""
    with running_site(logs / "bar-site.log", "--latency-ms", "250") as site:
        yield site


def crawl_settings(site: Site, tmp_path: Path, **more: object) -> list[str]:
    settings = store_settings(tmp_path, CONCURRENT_REQUESTS=20, PROGRESS_INTERVAL=0.5, **more)
    return ["-a", f"url={site.listing_url(PAGES, per_page=50)}", *setting_args(settings)]


def crawl_on_a_terminal(args: list[str], cwd: Path, timeout: float = 90) -> tuple[int, str]:
    """Run `scrapy crawl listing` with stdout and stderr on a new pseudo-terminal of 160
    columns; its exit code and everything it drew there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "scrapy", "crawl", "listing", *args],
        cwd=cwd,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    screen = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the crawl has closed the terminal (it has ended)
                break
            if not chunk:
                break
            screen += chunk
        else:
            raise AssertionError(f"the crawl did not end in {timeout}s")
        code = proc.wait(10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The terminal turns each "\n" into "\r\n" (ONLCR): undo it, keep the bar's own "\r".
    return code, screen.decode("utf-8", "replace").replace("\r\n", "\n")


def shown(screen: str) -> list[str]:
    """The lines as they stay on the screen: what follows the last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in screen.split("\n")]


def test_a_terminal_shows_a_live_bar_with_the_log_lines_above_it(
    slow_site: Site, tmp_path: Path
) -> None:
    stats_file = tmp_path / "stats.json"
    code, screen = crawl_on_a_terminal(
        crawl_settings(slow_site, tmp_path, STATS_FILE=stats_file), tmp_path
    )

    assert code == 0, screen[-3000:]
    stored = json.loads(stats_file.read_text())["meta_store/written"]
    assert stored == len(records(tmp_path)) == PAGES
    drawings = BAR.findall(screen)
    # Live: redrawn as pages are stored, not once at the end.
    assert len({n for n, _ in drawings}) >= 3, screen[-3000:]
    assert all(int(n) <= int(total) for n, total in drawings)
    # Its last drawing stays, with the final count, the whole listing discovered.
    last = [line.rstrip() for line in shown(screen) if BAR.search(line)][-1]
    assert BAR.findall(last) == [(str(PAGES), str(PAGES))], last
    assert re.search(r"\| \d+ pages/s, 0 in flight, 0 errors, ETA 00:00$", last), last
    assert "discovering" in screen  # no ETA while list pages were still to be read
    # Log lines are whole lines above the bar, never mixed into it.
    lines = shown(screen)
    assert sum(bool(PROGRESS_LINE.fullmatch(line)) for line in lines) >= 2, screen[-3000:]
    for line in lines:
        if "] INFO: " in line or "] WARNING: " in line or "] ERROR: " in line:
            assert re.match(r"\d{4}-\d\d-\d\d ", line) and "pages/s," not in line, line
    assert f"Finished (finished): {PAGES} pages stored in" in screen


def test_a_pipe_gets_no_bar_and_the_progress_line_as_before(
    slow_site: Site, tmp_path: Path
) -> None:
    result = scrapy_crawl(crawl_settings(slow_site, tmp_path), cwd=tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert len(records(tmp_path)) == PAGES
    assert "\r" not in result.output and "\x1b" not in result.output  # nothing redrawn
    assert not BAR.search(result.output)
    progress = [line for line in result.stderr.splitlines() if PROGRESS_LINE.fullmatch(line)]
    assert len(progress) >= 2, result.stderr[-3000:]
    assert f"Finished (finished): {PAGES} pages stored in" in result.stderr


def test_progress_bar_false_turns_it_off_on_a_terminal(slow_site: Site, tmp_path: Path) -> None:
    code, screen = crawl_on_a_terminal(
        crawl_settings(slow_site, tmp_path, PROGRESS_BAR=False), tmp_path
    )

    assert code == 0, screen[-3000:]
    assert not BAR.search(screen)
    assert any(PROGRESS_LINE.fullmatch(line) for line in screen.split("\n"))
