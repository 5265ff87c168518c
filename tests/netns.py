"""Test hosts on this machine: network namespaces joined by veth pairs to one bridge.

Each host is a namespace with one interface and one address on 10.233.0.0/24; the bridge
lives in a namespace of its own (the "switch"), so the machine's own network is not
touched. ``cut(host)`` takes the host's cable out of the switch: its packets vanish,
as when a network partitions (no error comes back: connections hang, then resume on
``restore``; every host knows the others' MAC addresses for good, so no failed ARP
lookup turns the silence into "no route to host"). ``cut_port(host, addr, port)`` is
the narrower partition: only the host's TCP traffic with addr:port vanishes (one master
of a Redis Cluster, say), by a tc filter in the host (classic BPF, run by cls_bpf on a
clsact qdisc: iptables and nft are not needed, nor installed here); ``restore_ports``
takes every such filter out.

Needs root and iproute2 (``ip``). Names start with ``scr<pid>-``: namespaces left by a
process that died are removed by the next ``Network()``. As a script::

    python -m tests.netns up 3      # hosts scrhosts-h0 .. h3, addresses printed
    ip netns exec scrhosts-h1 bash  # a shell on host 1
    python -m tests.netns cut h1    # partition it; `restore h1` plugs it back
    python -m tests.netns down      # remove everything
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

SUBNET = "10.233.0"


class NetnsUnavailable(RuntimeError):
    """Namespaces cannot be made here (not root, no iproute2, a restricted sandbox)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Host:
    """One test host: a namespace with an address."""

    name: str
    ns: str
    addr: str
    iface: str  # inside the host
    port: str  # its cable's end in the switch
    mac: str = ""

    def command(self, args: list[str]) -> list[str]:
        """``args`` run inside this host."""
        return ["ip", "netns", "exec", self.ns, *args]

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start a process on this host (its PID is the command's: ``ip netns exec`` execs)."""
        return subprocess.Popen(self.command(args), **kwargs)

    def run(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def wait_for_port(self, addr: str, port: int, timeout: float = 30) -> None:
        """Until something at addr:port accepts a connection seen from this host."""
        script = (
            "import socket, sys, time\n"
            f"end = time.monotonic() + {timeout}\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            f"        socket.create_connection(({addr!r}, {port}), timeout=0.5).close()\n"
            "        sys.exit(0)\n"
            "    except OSError:\n"
            "        time.sleep(0.05)\n"
            "sys.exit(1)\n"
        )
        result = self.run([sys.executable, "-c", script], timeout=timeout + 10)
        if result.returncode != 0:
            raise RuntimeError(f"nothing listens on {addr}:{port} as seen from {self.name}")


@dataclass
class Network:
    """A switch and the hosts plugged into it; ``close()`` removes them all."""

    prefix: str = field(default_factory=lambda: f"scr{os.getpid()}")
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("iproute2's `ip` is not installed")
        remove_stale()
        self.switch = f"{self.prefix}-sw"
        try:
            ip("netns", "add", self.switch)
        except subprocess.CalledProcessError as exc:
            raise NetnsUnavailable(f"`ip netns add` failed: {exc.stderr.strip()}") from None
        try:
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except subprocess.CalledProcessError as exc:
            self.close()
            raise NetnsUnavailable(f"cannot make a bridge: {exc.stderr.strip()}") from None

    def add(self, name: str) -> Host:
        """A new host plugged into the switch, with the next address."""
        index = len(self.hosts) + 1
        host = Host(name, f"{self.prefix}-{name}", f"{SUBNET}.{index}", "eth0", f"p{index}")
        # The pair is made in the host's namespace (names are per namespace); one end
        # moves to the switch.
        ip("netns", "add", host.ns)
        ip("-n", host.ns, "link", "add", host.iface, "type", "veth", "peer", "name", host.port)
        ip("-n", host.ns, "link", "set", host.port, "netns", self.switch)
        ip("-n", host.ns, "addr", "add", f"{host.addr}/24", "dev", host.iface)
        ip("-n", host.ns, "link", "set", host.iface, "up")
        ip("-n", host.ns, "link", "set", "lo", "up")
        ip("-n", self.switch, "link", "set", host.port, "master", "br0")
        ip("-n", self.switch, "link", "set", host.port, "up")
        link = ip("-n", host.ns, "link", "show", host.iface).stdout
        host.mac = re.search(r"link/ether (\S+)", link).group(1)  # type: ignore[union-attr]
        for other in self.hosts.values():
            _know(host, other)
            _know(other, host)
        self.hosts[name] = host
        return host

    def cut(self, host: Host) -> None:
        """Unplug the host: everything it sends or is sent vanishes, silently."""
        ip("-n", self.switch, "link", "set", host.port, "nomaster")

    def restore(self, host: Host) -> None:
        ip("-n", self.switch, "link", "set", host.port, "master", "br0")

    def cut_port(self, host: Host, addr: str, port: int) -> None:
        """Drop, silently, every TCP packet between ``host`` and ``addr:port`` (both ways),
        the rest of its traffic untouched; ``restore_ports`` undoes it."""
        _tc(host, "qdisc", "replace", "dev", host.iface, "clsact")
        for hook, outgoing in (("egress", True), ("ingress", False)):
            program = _drop(addr, port, outgoing)
            _tc(host, "filter", "add", "dev", host.iface, hook, "bpf", "da", "bytecode", program)

    def restore_ports(self, host: Host) -> None:
        """Remove every ``cut_port`` of ``host`` (its clsact qdisc, filters and all)."""
        host.run(["tc", "qdisc", "del", "dev", host.iface, "clsact"])

    def close(self) -> None:
        """Remove every namespace of this network (their interfaces and bridge go with them)."""
        for host in self.hosts.values():
            ip("netns", "del", host.ns, check=False)
        ip("netns", "del", self.switch, check=False)
        self.hosts.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _tc(host: Host, *args: str) -> None:
    result = host.run(["tc", *args])
    if result.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} on {host.name}: {result.stderr.strip()}")


def _drop(addr: str, port: int, outgoing: bool) -> str:
    """A classic BPF program, in tc's ``bytecode`` form, for cls_bpf in direct-action mode
    on a clsact hook (where a packet starts at its Ethernet header): TC_ACT_SHOT (2) for
    a TCP packet to ``addr:port`` (``outgoing``) or from it, else TC_ACT_UNSPEC (-1: on
    to the next filter, then out or in as usual)."""
    ip_at, port_at = (30, 16) if outgoing else (26, 14)  # daddr/dport, else saddr/sport
    # (opcode, jump if true, jump if false, constant); jumps name a label, taken below.
    program: list[tuple[int, int | str, int | str, int]] = [
        (0x28, 0, "pass", 12),  # ldh [12]: the EtherType
        (0x15, 0, "pass", 0x0800),  # IPv4?
        (0x20, 0, 0, ip_at),  # ld [ip_at]: the address
        (0x15, 0, "pass", int(ipaddress.IPv4Address(addr))),
        (0x30, 0, 0, 23),  # ldb [23]: the protocol
        (0x15, 0, "pass", 6),  # TCP?
        (0x28, 0, 0, 20),  # ldh [20]: flags and fragment offset
        (0x45, "pass", 0, 0x1FFF),  # a later fragment: no TCP header in it
        (0xB1, 0, 0, 14),  # ldxb 4*([14]&0xf): the IP header's length
        (0x48, 0, 0, port_at),  # ldh [x+port_at]: the port
        (0x15, 0, "pass", port),
        (0x06, 0, 0, 2),  # ret TC_ACT_SHOT
        (0x06, 0, 0, 0xFFFFFFFF),  # pass: ret TC_ACT_UNSPEC
    ]
    end = len(program) - 1

    def jump(target: int | str, at: int) -> int:
        return end - at - 1 if target == "pass" else int(target)

    code = [f"{op} {jump(jt, i)} {jump(jf, i)} {k}" for i, (op, jt, jf, k) in enumerate(program)]
    return f"{len(code)}," + ",".join(code)


def _know(host: Host, other: Host) -> None:
    """A permanent neighbour entry: ``host`` never asks who ``other`` is (see the docstring)."""
    ip(
        "-n",
        host.ns,
        "neigh",
        "replace",
        other.addr,
        "lladdr",
        other.mac,
        "dev",
        host.iface,
        "nud",
        "permanent",
    )


def remove_stale() -> list[str]:
    """Remove namespaces ``scr<pid>-*`` whose process is gone; return their names."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(r"scr(\d+)-\w+", name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def main(argv: list[str] | None = None) -> None:
    """``up N`` / ``cut NAME`` / ``restore NAME`` / ``down`` for hosts named scrhosts-*."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "cut", "restore", "down"])
    parser.add_argument("arg", nargs="?", help="up: how many hosts after h0; cut/restore: host")
    args = parser.parse_args(argv)
    prefix = "scrhosts"
    if args.action == "down":
        for line in ip("netns", "list").stdout.splitlines():
            if line.startswith(f"{prefix}-"):
                ip("netns", "del", line.split()[0], check=False)
        return
    if args.action in ("cut", "restore"):
        verb = "nomaster" if args.action == "cut" else "master br0"
        port = ip("-n", f"{prefix}-sw", "-o", "link", "show").stdout
        index = int(
            ip("-n", f"{prefix}-{args.arg}", "-4", "-o", "addr", "show", "eth0")
            .stdout.split()[3]
            .split("/")[0]
            .rsplit(".", 1)[1]
        )
        assert f"p{index}@" in port, f"no host {args.arg}"
        ip("-n", f"{prefix}-sw", "link", "set", f"p{index}", *verb.split())
        return
    network = Network(prefix=prefix)
    for i in range(int(args.arg or 3) + 1):
        host = network.add(f"h{i}")
        print(f"{host.ns}\t{host.addr}")


if __name__ == "__main__":
    main()
