"""What a node's heartbeat says about it: who it is, what it has done, what it holds.

Each node writes its heartbeat to ``<spider>:nodes`` about once a second, and every node
reads them all every few seconds (docs/scaling.md), so a heartbeat stays a few numbers
(~200 bytes). ``scrapy status`` reads them for its per-node table and totals.

A closing node writes a last one, ``state`` "closed", with its final figures: a finished
crawl's status still shows what each node did, and its totals equal the records stored.
Like any heartbeat it is forgotten 3 lease lengths after it was written (heartbeat.lua),
at the next heartbeat of a live node.

The JSON is read back by ``NodeReport.of``, which takes what it finds: a heartbeat of an
older version (fewer fields) or a stray field of the wrong type reads as zero, never as
an error in ``scrapy status``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

#: "running": the node crawls (or waits for work); "closed": its last heartbeat.
NodeState = Literal["running", "closed"]


@dataclass(frozen=True)
class NodeReport:
    """One node's heartbeat."""

    pid: int
    host: str
    state: NodeState
    stored: int  # meta records written by this node
    rate: float  # pages stored per second lately; a closed node's: over its whole run
    errors: int  # failed children and list pages, bodies not stored
    leased: int  # leases held
    in_flight: int  # requests being downloaded
    buffered: int  # leased requests not yet handed to the downloader
    up_seconds: float

    def info(self) -> dict[str, Any]:
        """The heartbeat's JSON object."""
        return asdict(self)

    @classmethod
    def of(cls, info: dict[str, Any]) -> NodeReport:
        """The report in a heartbeat's JSON object; what is missing or not a number is 0."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = info.get(f.name)
            if f.name in ("host", "state"):
                values[f.name] = value if isinstance(value, str) else ""
            elif isinstance(value, int | float) and not isinstance(value, bool):
                values[f.name] = value if f.type == "float" else int(value)
            else:
                values[f.name] = 0
        if values["state"] != "closed":
            values["state"] = "running"
        return cls(**values)
