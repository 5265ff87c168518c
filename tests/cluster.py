"""A Redis Cluster of a few masters (no replicas) from Debian's redis-server, for tests
and benchmarks.

On 127.0.0.1 each master gets two free ports (clients, and the cluster bus given by
``--cluster-port``, so port + 10000 need not be free); on a test host (tests/netns.py)
the masters bind that host's address on fixed ports, announce it (``cluster-announce-ip``:
what CLUSTER SLOTS and MOVED tell clients), and require a password (``requirepass``, and
``masterauth`` for the cluster's own links), as Redis on a network address must.

``start()`` runs the masters, joins them with ``redis-cli --cluster create`` and returns
once every master says ``cluster_state:ok``: about a second. Each master is stopped by
its PID; ``stop_master(i)`` and ``start_master(i)`` take one down and bring it back on
the same ports, with its slots (its nodes-<port>.conf is kept), as after an outage. As a
script, for benchmarks::

    python -m tests.cluster            # 3 masters on 127.0.0.1; prints REDIS_URL, Ctrl-C stops
    python -m tests.cluster --masters 5 --dir /tmp/cluster
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.servers import stop
from scraper.testsite import free_port

if TYPE_CHECKING:
    from tests.netns import Host

#: Milliseconds without an answer before the other masters mark one failed
#: (``cluster-node-timeout``; Redis's default is 15 s).
NODE_TIMEOUT_MS = 1000
#: The first client port of the masters on a test host (then +1, +2...); the cluster bus
#: is each port + 10000. A test host is a namespace of its own: every port is free.
HOST_PORT = 7001
#: How often a master on 127.0.0.1 is started again on other ports if it exits before
#: listening (another process took a port between free_port() and the bind).
BIND_ATTEMPTS = 3
#: The number of hash slots of every Redis Cluster.
SLOTS = 16384


@dataclass
class Master:
    """One master: its ports and its process."""

    port: int
    bus_port: int
    proc: subprocess.Popen[bytes] | None = None


class Cluster:
    """``masters`` redis-server masters joined into one cluster; see the module docstring.

    ``host``: the test host to run on (its address), else 127.0.0.1; ``password``: what
    clients and masters must send (AUTH), none by default. ``full_coverage``: Redis's
    ``cluster-require-full-coverage``: yes (its default), every master refuses every key
    (CLUSTERDOWN) once one master is marked failed; no, only the failed master's keys are
    lost meanwhile.
    """

    def __init__(
        self,
        folder: Path,
        *,
        masters: int = 3,
        host: Host | None = None,
        password: str | None = None,
        full_coverage: bool = True,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
    ) -> None:
        self.folder = folder
        self.count = masters
        self.host = host
        self.addr = host.addr if host is not None else "127.0.0.1"
        self.password = password
        self.full_coverage = full_coverage
        self.node_timeout_ms = node_timeout_ms
        self.masters: list[Master] = []
        self.log = folder / "cluster.log"

    # --- what clients use -----------------------------------------------------------------

    @property
    def nodes(self) -> str:
        """``host:port,host:port,...``: REDIS_CLUSTER_NODES."""
        return ",".join(f"{self.addr}:{m.port}" for m in self.masters)

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]host:port,...``: REDIS_URL for a crawl."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis+cluster://{auth}{self.nodes}"

    @property
    def ports(self) -> list[int]:
        return [m.port for m in self.masters]

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> Cluster:
        """Start the masters, create the cluster, and wait until it serves every slot."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            for i in range(self.count):
                if self.host is not None:
                    self.masters.append(Master(HOST_PORT + i, HOST_PORT + i + 10000))
                    self._spawn(self.masters[-1], timeout, fresh=True)
                else:
                    self.masters.append(self._start_on_free_ports(timeout))
            created = self.cli(
                "--cluster",
                "create",
                *(f"{self.addr}:{m.port}" for m in self.masters),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
                timeout=timeout,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-500:]}")
            self.wait_ok(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every master (by its PID)."""
        for master in self.masters:
            if master.proc is not None:
                stop(master.proc)

    def stop_master(self, index: int) -> None:
        """Take one master down (SIGTERM, by its PID); its data is gone, its slots stay
        its own (in its nodes-<port>.conf) for ``start_master``."""
        proc = self.masters[index].proc
        if proc is not None:
            stop(proc)

    def start_master(self, index: int, timeout: float = 30) -> None:
        """Bring a stopped master back on its ports, then wait for ``cluster_state:ok``."""
        self._spawn(self.masters[index], timeout)
        self.wait_ok(timeout)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- inspection -----------------------------------------------------------------------

    def cli(
        self, *args: str, port: int | None = None, timeout: float = 10
    ) -> subprocess.CompletedProcess[str]:
        """redis-cli with ``args``, on the cluster's host, against the master at ``port``
        (the first one by default), authenticated if the cluster wants a password."""
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        command = [
            "redis-cli",
            "-h",
            self.addr,
            "-p",
            str(self.masters[0].port if port is None else port),
            *auth,
            *args,
        ]
        return subprocess.run(
            self.host.command(command) if self.host is not None else command,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of the master at ``port`` ({} if it does not answer)."""
        out = self.cli("CLUSTER", "INFO", port=port, timeout=5).stdout
        return dict(re.findall(r"^(\w+):(\S*)", out, re.MULTILINE))

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every running master says ``cluster_state:ok`` (and knows every slot)."""
        deadline = time.monotonic() + timeout
        running = [m for m in self.masters if m.proc is not None and m.proc.poll() is None]
        while True:
            infos = [self.info(m.port) for m in running]
            if all(
                i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == str(SLOTS)
                for i in infos
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok after {timeout} s: {infos}")
            time.sleep(0.05)

    def master_of(self, key: str) -> int:
        """The index of the master that holds ``key`` (the slot of its hash tag)."""
        slot = self.keyslot(key)
        for line in self.cli("CLUSTER", "NODES").stdout.splitlines():
            # <id> <ip:port@bus_port> <flags> <master> <ping> <pong> <epoch> <link> <slots...>
            fields = line.split()
            if any(_holds(slots, slot) for slots in fields[8:]):
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                return self.ports.index(port)
        raise LookupError(f"no master holds slot {slot} ({key!r})")

    def keyslot(self, key: str) -> int:
        return int(self.cli("CLUSTER", "KEYSLOT", key).stdout)

    def flush(self) -> None:
        """Empty every master (FLUSHALL) and its script cache (SCRIPT FLUSH)."""
        for master in self.masters:
            for command in (["FLUSHALL"], ["SCRIPT", "FLUSH"]):
                result = self.cli(*command, port=master.port)
                if result.returncode != 0 or "ERR" in result.stdout:
                    raise RuntimeError(f"{command} on {master.port}: {result.stdout.strip()}")

    # --- internals ------------------------------------------------------------------------

    def _command(self, master: Master) -> list[str]:
        command = [
            "redis-server",
            "--port",
            str(master.port),
            "--cluster-port",
            str(master.bus_port),
            "--bind",
            self.addr,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.folder / f"nodes-{master.port}.conf"),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-require-full-coverage",
            "yes" if self.full_coverage else "no",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        if self.host is not None:
            command += ["--cluster-announce-ip", self.addr]
        if self.password:
            command += ["--requirepass", self.password, "--masterauth", self.password]
        return command

    def _start_on_free_ports(self, timeout: float) -> Master:
        for attempt in range(1, BIND_ATTEMPTS + 1):
            master = Master(free_port(), free_port())
            try:
                self._spawn(master, timeout, fresh=True)
            except RuntimeError:
                # Exited before answering: most likely a port was taken meanwhile.
                if attempt == BIND_ATTEMPTS:
                    raise
                continue
            return master
        raise AssertionError("unreachable")

    def _spawn(self, master: Master, timeout: float, fresh: bool = False) -> None:
        """Run the master's redis-server; return once it answers PING. ``fresh``: a new
        node (a nodes-<port>.conf left by an earlier cluster in the folder is removed),
        else the node it was (its id, its slots, its peers)."""
        if fresh:
            (self.folder / f"nodes-{master.port}.conf").unlink(missing_ok=True)
        with self.log.open("ab") as log:
            command = self._command(master)
            master.proc = subprocess.Popen(
                self.host.command(command) if self.host is not None else command,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while self.cli("PING", port=master.port, timeout=5).stdout.strip() != "PONG":
            if master.proc.poll() is not None or time.monotonic() > deadline:
                stop(master.proc)
                raise RuntimeError(
                    f"redis-server on {self.addr}:{master.port} did not start (see {self.log})"
                )
            time.sleep(0.02)


def _holds(slots: str, slot: int) -> bool:
    """Whether a CLUSTER NODES slot field ("0-5460", "42", "[..." migrating) has ``slot``."""
    if slots.startswith("["):
        return False
    first, _, last = slots.partition("-")
    return int(first) <= slot <= int(last or first)


def main(argv: list[str] | None = None) -> None:
    """Start a cluster on 127.0.0.1, print its URL, and stop it on Ctrl-C (or SIGTERM)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="where nodes-*.conf and the log go")
    parser.add_argument("--password")
    args = parser.parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="redis-cluster-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    started = time.monotonic()
    with Cluster(folder, masters=args.masters, password=args.password) as cluster:
        print(f"REDIS_URL={cluster.url}", flush=True)
        print(
            f"# {args.masters} masters up in {time.monotonic() - started:.1f} s; "
            f"log {cluster.log}; Ctrl-C stops them",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
