"""What Redis did, from its own counters: INFO deltas around a stretch of work, and the
queue's size sampled while a crawl runs. Shared by bench/distributed.py (per page of a
crawl), bench/redis_idle.py (per idle node) and bench/redis_synthetic.py (the scripts alone).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

# Commands a client sends on its own, one round trip each (a MULTI block, sent with its
# EXEC in one write, is counted by its MULTI); every other command counted in
# commandstats ran inside a script or a MULTI block, except EXEC and the HDEL a node
# sends once as it closes (counted as inside: one per node and crawl). The probe's own
# commands (INFO, MEMORY USAGE, HLEN, its ZCARDs) are left out.
TOP_LEVEL = {"evalsha", "eval", "multi", "ping", "script|load", "client|setinfo", "select", "hello"}
PROBE_COMMANDS = {"info", "memory", "hlen", "config"}


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """The INFO counters a run's deltas are taken from."""
    info = client.info("all")
    return {
        "commands": {
            name.removeprefix("cmdstat_"): (v["calls"], v["usec"])
            for name, v in client.info("commandstats").items()
        },
        "cpu_seconds": info["used_cpu_sys"] + info["used_cpu_user"],
        "net_in": info["total_net_input_bytes"],
        "net_out": info["total_net_output_bytes"],
        "used_memory": info["used_memory"],
        "used_memory_peak": info["used_memory_peak"],
        "connected_clients": info["connected_clients"],
        "at": time.monotonic(),
    }


def deltas(
    before: dict[str, Any], after: dict[str, Any], probe_calls: dict[str, int] | None = None
) -> dict[str, Any]:
    """Counter deltas between two snapshots; the probe's own ZCARDs are subtracted."""
    commands = {}
    for name, (calls, usec) in after["commands"].items():
        calls0, usec0 = before["commands"].get(name, (0, 0))
        calls -= calls0 + (probe_calls or {}).get(name, 0)
        if calls > 0 and name.split("|")[0] not in PROBE_COMMANDS:
            commands[name] = {"calls": calls, "usec": usec - usec0}
    return {
        "seconds": after["at"] - before["at"],
        "commands": commands,
        "cpu_seconds": after["cpu_seconds"] - before["cpu_seconds"],
        "net_in": after["net_in"] - before["net_in"],
        "net_out": after["net_out"] - before["net_out"],
        "round_trips": sum(v["calls"] for c, v in commands.items() if c in TOP_LEVEL),
        "inside": sum(
            v["calls"] for c, v in commands.items() if c not in TOP_LEVEL and c != "exec"
        ),
        # Time in commands as clients see it: a script's or EXEC's usec covers the
        # commands run inside it, so only the top-level ones are summed.
        "command_usec": sum(
            v["usec"] for c, v in commands.items() if c in TOP_LEVEL or c == "exec"
        ),
    }


class RedisProbe:
    """INFO deltas around one crawl, and the queue's size sampled while it runs."""

    def __init__(self, client: redis.Redis, spider: str = "listing") -> None:
        self.client = client
        self.spider = spider
        self.samples: list[tuple[int, int, int, int]] = []
        self.zcards = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def start(self) -> None:
        self.before = snapshot(self.client)
        self.thread.start()

    def _sample(self) -> None:
        k = self.spider
        while not self.done.wait(0.5):
            # One site's queue (the bench crawls one site: the test site on 127.0.0.1).
            queued = self.client.zcard(f"{k}:q:127.0.0.1")
            self.zcards += 1
            self.samples.append(
                (
                    queued,
                    self.client.hlen(f"{k}:leased"),
                    self.client.memory_usage(f"{k}:q:127.0.0.1") or 0,
                    self.client.memory_usage(f"{k}:leased") or 0,
                )
            )

    def stop(self, baseline_memory: int) -> dict[str, Any]:
        self.done.set()
        self.thread.join()
        after = snapshot(self.client)
        d = deltas(self.before, after, {"zcard": self.zcards})
        k = self.spider
        seen = self.client.scard(f"{k}:dupefilter") + int(self.client.get(f"{k}:bloom_count") or 0)
        keys = {
            key.decode(): self.client.memory_usage(key, samples=0)
            for key in self.client.scan_iter(match=f"{k}:*")
        }
        queued = max(self.samples, default=(0, 0, 0, 0), key=lambda x: x[0])
        leased = max(self.samples, default=(0, 0, 0, 0), key=lambda x: x[1])
        d.update(
            {
                "seen": seen,
                "key_bytes": keys,
                "used_memory_after": after["used_memory"] - baseline_memory,
                "used_memory_peak": after["used_memory_peak"] - baseline_memory,
                "peak_queue": {
                    "queued": queued[0],
                    "queued_bytes": queued[2],
                    "leased": leased[1],
                    "leased_bytes": leased[3],
                },
            }
        )
        return d
