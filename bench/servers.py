"""The servers a crawl is tested and measured against, started one way for tests and bench.

The test site, bench/s3sink.py, moto's S3 and redis-server, each its own process on
127.0.0.1, stopped by its PID; and mongomock, the in-process stand-in for MongoDB. It
lives in bench/ (not in tests/) so that the benchmark never imports the test suite:
tests import it from here, as they already run bench/s3sink.py. Not in scraper/ either:
nothing here ships with the crawler.

Ports: our own servers (the test site, the S3 sink) are started with ``--port 0`` and
print ``listening on 127.0.0.1:PORT`` once bound, so no port is picked here and bound
later by another process (a race another test's server can win). redis-server, moto and
scrapyd cannot say which port they bound: they get ``free_port()``, and are started
again on another one if they exit before listening (the port was taken meanwhile).
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scraper.testsite import free_port, wait_for_port

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

ROOT = Path(__file__).resolve().parent.parent
#: What our servers print on stdout once bound (scraper/testsite.py, bench/s3sink.py).
LISTENING = re.compile(rb"^listening on 127\.0\.0\.1:(\d+)$", re.MULTILINE)
#: How often a server that cannot report its port is started again on another one.
BIND_ATTEMPTS = 3
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """End a process we started, by its PID: SIGTERM, then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Server:
    """A server subprocess on 127.0.0.1, its output appended to ``log``.

    ``command(port)`` is its command line for a port; ``announces``: it binds port 0 and
    prints the port it bound (``LISTENING``). Once started it keeps its port: ``stop()``
    then ``start()`` brings it back on the same one, as after an outage.
    """

    def __init__(
        self,
        command: Callable[[int], list[str]],
        log: Path,
        *,
        announces: bool = False,
        cwd: Path = ROOT,
        port: int = 0,
    ) -> None:
        self.command, self.log, self.announces, self.cwd = command, log, announces, cwd
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        """Start it and return once it listens (RuntimeError if it cannot)."""
        if self.port:  # a restart, or a port fixed by the caller
            self._spawn(self.port, timeout)
        elif self.announces:
            self.port = self._spawn(0, timeout)
        else:
            for attempt in range(1, BIND_ATTEMPTS + 1):
                port = free_port()
                try:
                    self._spawn(port, timeout)
                except RuntimeError:
                    # Exited before listening: most likely another process took the port
                    # between free_port() and the server's bind. Another port, then.
                    if attempt == BIND_ATTEMPTS or self.proc is None or self.proc.poll() is None:
                        raise
                    continue
                self.port = port
                break
        return self

    def _spawn(self, port: int, timeout: float) -> int:
        """Run the command for ``port``; return the port it listens on."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(port), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        try:
            if port == 0:
                return self._announced(offset, timeout)
            wait_for_port(port, self.proc, timeout)
            return port
        except RuntimeError:
            self.stop()
            raise

    def _announced(self, offset: int, timeout: float) -> int:
        """The port the process printed in its log after ``offset``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.log.open("rb") as f:
                f.seek(offset)
                if found := LISTENING.search(f.read()):
                    return int(found.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.proc.args!r} exited with code {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.proc.args!r} did not say its port within {timeout} s")

    def cpu(self) -> float:
        """CPU seconds the server has used so far."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def site_server(log: Path, *args: str) -> Server:
    """The project's test site (scraper/testsite.py) with these options, started."""
    return Server(
        lambda port: [sys.executable, "-m", "scraper.testsite", "--port", str(port), *args],
        log,
        announces=True,
    ).start()


def s3sink_server(log: Path, *args: str) -> Server:
    """bench/s3sink.py, the fast in-memory S3-compatible server, started."""
    return Server(
        lambda port: [sys.executable, "-m", "bench.s3sink", "--port", str(port), *args],
        log,
        announces=True,
    ).start()


def moto_server(log: Path) -> Server:
    """moto's S3 server, started."""
    return Server(
        lambda port: [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        log,
    ).start()


def redis_server(log: Path, *extra: str) -> Server:
    """A redis-server (Debian's package) with no persistence, started; ``extra`` options
    come last (e.g. ``--appendonly yes`` to persist, ``--requirepass``)."""
    return Server(
        lambda port: [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            *extra,
        ],
        log,
    ).start()


def _without_sort(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(self: Any, *args: Any, sort: Any = None, **kw: Any) -> Any:
        assert sort is None
        return method(self, *args, **kw)

    return call


def use_mongomock(patch: Callable[[Any, str, Any], None] = setattr) -> Any:
    """Make MongoMetaStore write to mongomock (one in-memory server shared by every
    client) and return that client class. ``patch``: how the attributes are set, e.g.
    pytest's ``monkeypatch.setattr`` to undo them after a test; by default they stay."""
    import mongomock
    import mongomock.collection

    from scraper.stores.meta import MongoMetaStore

    # mongomock 4.3 predates pymongo 4.11, whose UpdateOne and ReplaceOne pass `sort` to
    # the bulk builder; accept it (we never set it) so the store's real bulk_write runs.
    builder = mongomock.collection.BulkOperationBuilder
    for name in ("add_update", "add_replace"):
        patch(builder, name, _without_sort(getattr(builder, name)))
    store = mongomock.store.ServerStore()
    client_class = functools.partial(mongomock.MongoClient, _store=store)
    patch(MongoMetaStore, "client_class", client_class)
    return client_class


def s3_client(endpoint: str, credentials: Mapping[str, str]) -> Any:
    """A boto3 client of the S3 server at ``endpoint`` (moto, the sink), to set up and
    read buckets; ``credentials`` in environment-variable form (AWS_ACCESS_KEY_ID...)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )
