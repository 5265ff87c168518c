"""Deployed to a real scrapyd: scrapyd-deploy, schedule.json, listjobs.json, cancel.json, auth.

Each scrapyd runs in its own process and folder (eggs, logs, dbs) on a free 127.0.0.1
port. The project is deployed from a copy of its files (scrapyd-deploy writes build
folders next to setup.py), with the scrapy.cfg it ships; only the local target's port
is changed to the test scrapyd's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.helpers import (
    ROOT,
    Server,
    Site,
    assert_children_recorded,
    assert_stored_once,
    records,
    running_site,
    store_settings,
    wait_for_lines,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

PROJECT_FILES = ("scraper", "setup.py", "pyproject.toml", "scrapy.cfg", "README.md")
SCRAPYD_DEPLOY = Path(sys.executable).with_name("scrapyd-deploy")


class Scrapyd:
    """A scrapyd of its own: config, eggs, logs and job database under ``root``."""

    def __init__(self, root: Path, username: str = "", password: str = "") -> None:
        root.mkdir(parents=True)
        self.root, self.username, self.password = root, username, password
        self.auth = (username, password) if username else None
        # Started from its own folder: it reads ./scrapyd.conf, and its jobs cannot import
        # the project from the working directory, only from the deployed egg.
        self.server = Server(self.command, root / "scrapyd.log", cwd=root)

    def command(self, port: int) -> list[str]:
        """scrapyd's command line to serve on ``port``, which it reads from its config."""
        root = self.root
        (root / "scrapyd.conf").write_text(
            "[scrapyd]\n"
            f"bind_address = 127.0.0.1\nhttp_port = {port}\n"
            f"eggs_dir = {root / 'eggs'}\nlogs_dir = {root / 'logs'}\ndbs_dir = {root / 'dbs'}\n"
            "items_dir =\npoll_interval = 0.2\nmax_proc = 4\n"
            f"username = {self.username}\npassword = {self.password}\n"
        )
        return [sys.executable, "-m", "scrapyd"]

    @property
    def url(self) -> str:
        return f"{self.server.url}/"

    def call(
        self,
        endpoint: str,
        data: dict[str, Any] | list[tuple[str, str]] | None = None,
        auth: bool = True,
    ) -> dict[str, Any]:
        """GET (or POST with ``data``) a JSON endpoint."""
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(self.url + endpoint, data=body)
        if auth and self.auth:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            answer: dict[str, Any] = json.loads(response.read())
        assert answer["status"] == "ok", answer
        return answer

    def schedule(self, *settings: str, **spider_args: str) -> str:
        data = [
            ("project", "scraper"),
            ("spider", "listing"),
            *(("setting", s) for s in settings),
            *spider_args.items(),
        ]
        return str(self.call("schedule.json", data)["jobid"])

    def job(self, job_id: str) -> dict[str, Any] | None:
        jobs = self.call("listjobs.json?project=scraper")
        for state in ("pending", "running", "finished"):
            for job in jobs[state]:
                if job["id"] == job_id:
                    return {**job, "state": state}
        return None

    def wait_until(self, job_id: str, state: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job and job["state"] == state:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not {state} after {timeout} s:\n{self.log(job_id)}")

    def log(self, job_id: str) -> str:
        path = self.root / "logs" / "scraper" / "listing" / f"{job_id}.log"
        return path.read_text() if path.exists() else "(no log)"


@pytest.fixture
def scrapyds(tmp_path: Path) -> Iterator[list[Scrapyd]]:
    """Scrapyd instances a test makes; each stopped by its PID at the end."""
    made: list[Scrapyd] = []
    yield made
    for scrapyd in made:
        scrapyd.server.stop()


def start_scrapyd(
    made: list[Scrapyd], root: Path, username: str = "", password: str = ""
) -> Scrapyd:
    scrapyd = Scrapyd(root, username, password)
    made.append(scrapyd)
    scrapyd.server.start()
    return scrapyd


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project as a user has it: what scrapyd-deploy packs."""
    copy = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def deploy(
    project: Path, target: str, url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`scrapyd-deploy <target>` from the project copy; the local target aimed at ``url``."""
    if url is not None:
        cfg = (ROOT / "scrapy.cfg").read_text()
        assert "url = http://127.0.0.1:6800/" in cfg
        (project / "scrapy.cfg").write_text(cfg.replace("http://127.0.0.1:6800/", url))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCRAPYD_")}
    return subprocess.run(
        [str(SCRAPYD_DEPLOY), target],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**clean, **(env or {})},
    )


def stores(tmp_path: Path) -> tuple[str, ...]:
    """A job's stores under ``tmp_path``, as scrapyd's ``setting=NAME=VALUE`` values."""
    settings = store_settings(tmp_path, PROGRESS_INTERVAL=1)
    return tuple(f"{name}={value}" for name, value in settings.items())


@pytest.fixture(scope="module")
def site_50ms_latency(logs: Path) -> Iterator[Site]:
    """A test site with 50 ms latency: a crawl of a few thousand pages lasts seconds."""
    with running_site(logs / "scrapyd-site.log", "--latency-ms", "50") as site:
        yield site


def test_the_egg_holds_every_module_and_the_settings_entry_point(
    project: Path, tmp_path: Path
) -> None:
    egg = tmp_path / "scraper.egg"
    result = subprocess.run(
        [str(SCRAPYD_DEPLOY), "--build-egg", str(egg)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    names = set(zipfile.ZipFile(egg).namelist())
    modules = {
        str(p.relative_to(ROOT))
        for pattern in ("*.py", "*.lua")
        for p in (ROOT / "scraper").rglob(pattern)
    }
    assert any(m.endswith(".lua") for m in modules)
    assert modules <= names, sorted(modules - names)
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    entry_points = zipfile.ZipFile(egg).read("EGG-INFO/entry_points.txt").decode()
    assert "[scrapy]" in entry_points and "settings = scraper.settings" in entry_points


def test_deploy_schedule_and_crawl_with_the_embedded_stores(
    project: Path, site: Site, tmp_path: Path, scrapyds: list[Scrapyd]
) -> None:
    scrapyd = start_scrapyd(scrapyds, tmp_path / "scrapyd")
    result = deploy(project, "default", url=scrapyd.url)
    assert result.returncode == 0, result.stderr
    assert '"status": "ok"' in result.stdout and '"spiders": 1' in result.stdout

    stats_file = tmp_path / "stats.json"
    job = scrapyd.schedule(
        *stores(tmp_path), f"STATS_FILE={stats_file}", url=site.listing_url(500, per_page=100)
    )
    scrapyd.wait_until(job, "finished")

    assert_stored_once(site, tmp_path, 500)
    stats = json.loads(stats_file.read_text())  # what the job's log dumps, as JSON
    assert stats["finish_reason"] == "finished"
    assert stats["meta_store/written"] == stats["body_store/stored"] == 500
    assert_children_recorded(stats, len(records(tmp_path)))


def test_two_scrapyds_share_one_crawl_from_one_redis(
    project: Path, site_50ms_latency: Site, redis_url: str, tmp_path: Path, scrapyds: list[Scrapyd]
) -> None:
    nodes = [start_scrapyd(scrapyds, tmp_path / f"scrapyd{i}") for i in range(2)]
    for node in nodes:
        assert deploy(project, "default", url=node.url).returncode == 0
    settings = (*stores(tmp_path), f"REDIS_URL={redis_url}", "CONCURRENT_REQUESTS=50")
    stats_files = [tmp_path / f"stats{i}.json" for i in range(2)]
    jobs = [
        node.schedule(*settings, f"STATS_FILE={f}")
        for node, f in zip(nodes, stats_files, strict=True)
    ]
    for node, job in zip(nodes, jobs, strict=True):
        node.wait_until(job, "running")
    seed = subprocess.run(
        [
            sys.executable,
            "-m",
            "scrapy",
            "seed",
            "listing",
            site_50ms_latency.listing_url(2000),
            "-s",
            f"REDIS_URL={redis_url}",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert seed.returncode == 0, seed.stderr

    for node, job in zip(nodes, jobs, strict=True):
        node.wait_until(job, "finished")
    assert_stored_once(site_50ms_latency, tmp_path, 2000)
    stats = [json.loads(f.read_text()) for f in stats_files]
    assert [s["finish_reason"] for s in stats] == ["finished", "finished"]
    assert all(s["meta_store/written"] > 0 for s in stats)  # both took part
    assert sum(s["meta_store/written"] for s in stats) == 2000
    assert_children_recorded(stats, len(records(tmp_path)))


def test_a_cancelled_job_hands_back_its_work_and_another_job_finishes_it(
    project: Path, site_50ms_latency: Site, redis_url: str, tmp_path: Path, scrapyds: list[Scrapyd]
) -> None:
    scrapyd = start_scrapyd(scrapyds, tmp_path / "scrapyd")
    assert deploy(project, "default", url=scrapyd.url).returncode == 0
    settings = (*stores(tmp_path), f"REDIS_URL={redis_url}", "CONCURRENT_REQUESTS=50")
    first = scrapyd.schedule(
        *settings, f"STATS_FILE={tmp_path / 'first.json'}", url=site_50ms_latency.listing_url(3000)
    )
    wait_for_lines(tmp_path / "meta.jsonl", 300)
    assert (
        scrapyd.call("cancel.json", {"project": "scraper", "job": first})["prevstate"] == "running"
    )
    scrapyd.wait_until(first, "finished", timeout=60)
    cancelled = json.loads((tmp_path / "first.json").read_text())
    assert cancelled["finish_reason"] == "shutdown"
    stored_first = cancelled["meta_store/written"]
    assert 300 <= stored_first < 3000

    # No URL: it takes the crawl's queue from Redis.
    second = scrapyd.schedule(*settings, f"STATS_FILE={tmp_path / 'second.json'}")
    scrapyd.wait_until(second, "finished")

    assert_stored_once(site_50ms_latency, tmp_path, 3000)
    finished = json.loads((tmp_path / "second.json").read_text())
    assert finished["finish_reason"] == "finished"
    # What the first job had leased and not started went back when it closed; what it
    # had in flight finished there. Nothing waited for a lease to expire.
    assert finished.get("distributed/reclaimed", 0) == 0
    assert stored_first + finished["meta_store/written"] == 3000
    # Two jobs into one store: what each counted, summed, is what the store holds.
    assert_children_recorded([cancelled, finished], len(records(tmp_path)))


def test_scrapyd_with_auth_refuses_a_deploy_without_credentials(
    project: Path, tmp_path: Path, scrapyds: list[Scrapyd]
) -> None:
    scrapyd = start_scrapyd(scrapyds, tmp_path / "scrapyd", "crawler", "s3cret-pass")
    env = {"SCRAPYD_URL": scrapyd.url}

    refused = deploy(project, "remote", env=env)
    assert refused.returncode == 1
    assert "Deploy failed (401)" in refused.stderr
    with pytest.raises(urllib.error.HTTPError, match="401"):
        scrapyd.call("listprojects.json", auth=False)

    accepted = deploy(
        project,
        "remote",
        env={**env, "SCRAPYD_USERNAME": "crawler", "SCRAPYD_PASSWORD": "s3cret-pass"},
    )
    assert accepted.returncode == 0, accepted.stderr
    assert scrapyd.call("listprojects.json")["projects"] == ["scraper"]
    assert "s3cret-pass" not in accepted.stdout + accepted.stderr
