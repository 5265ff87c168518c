"""Requests as JSON for Redis: data, never code.

scrapy-redis pickles requests, so whoever can write to Redis can run code on every
node. Here a request is Scrapy's ``request_to_dict`` as JSON (callbacks by name,
bytes as base64); anything else found in Redis is rejected with a clear reason.

Data still chooses what runs, so it is checked for that too: a callback must be one of
the spider's own methods (not ``start``, ``close`` or anything private), and a request
class (``_class``) must be a Request subclass already imported: ``request_from_dict``
would otherwise import whatever module an entry names.

The wire formats, all read here (the Lua scripts in ``lua/`` write the Redis side):

- a request: ``encode(request)``, JSON (``decode``);
- a queue entry (``<spider>:q:<site>``, one queue per site): ``"<seq> <request JSON>"``,
  the sequence number keeping equal requests distinct members (enqueue.lua;
  ``entry_request``);
- lease data (``<spider>:leased``): ``"<score> <site> <queue entry>"``, or
  ``"start <URL>"`` for a start URL (lease.lua, enqueue_leased.lua; read back by
  reclaim.lua and ack.lua);
- a start URL (``<spider>:start_urls``): a URL, or JSON ``{"url": ..., "meta": ...}``
  (``start_url``);
- a heartbeat (``<spider>:nodes``): ``"<ms> <JSON object>"``, Redis's clock when it was
  written (heartbeat.lua; ``heartbeat``).
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any
from urllib.parse import urlsplit

from scrapy import Request, Spider
from scrapy.utils.request import request_from_dict

from scraper.distributed.leases import FOUND_BY, LEASE, YIELDED_BY

MAX_ENTRY_BYTES = 1 << 20  # a request is a URL and a little meta; more is not ours
LOCAL_META = (LEASE, FOUND_BY, YIELDED_BY, "download_slot", "download_latency", "depth")


class BadEntry(ValueError):
    """An entry in Redis that is not a request or URL this crawl wrote or accepts."""


def _method_name(spider: Spider, fn: Any) -> str | None:
    """The name of ``fn`` if it is a method of ``spider`` (what to_dict finds, cheaply)."""
    name = getattr(fn, "__name__", None)
    if (
        getattr(fn, "__self__", None) is spider
        and name
        and getattr(type(spider), name, None) is getattr(fn, "__func__", None)
    ):
        return str(name)
    return None


def _to_dict(request: Request, spider: Spider) -> dict[str, Any]:
    """``request.to_dict(spider=spider)``, without its search of the spider's members
    (half the cost of a request's trip through Redis) when the callbacks are plain
    spider methods."""
    if type(request) is not Request:  # a subclass: to_dict records its class
        return request.to_dict(spider=spider)
    names = {}
    for attr in ("callback", "errback"):
        fn = getattr(request, attr)
        names[attr] = None if fn is None else _method_name(spider, fn)
        if fn is not None and names[attr] is None:
            return request.to_dict(spider=spider)
    d: dict[str, Any] = {"url": request.url, **names, "headers": dict(request.headers)}
    for attr in request.attributes:
        d.setdefault(attr, getattr(request, attr))
    return d


def encode(request: Request, spider: Spider) -> str:
    """The request as one line of JSON."""
    d = _to_dict(request, spider)
    d["meta"] = {k: v for k, v in (d.get("meta") or {}).items() if k not in LOCAL_META}
    d["body"] = base64.b64encode(d.get("body") or b"").decode()
    d["headers"] = {_b64(k): [_b64(v) for v in vs] for k, vs in (d.get("headers") or {}).items()}
    return json.dumps(d, separators=(",", ":"), default=str)


def decode(text: str, spider: Spider) -> Request:
    """A request from its JSON; BadEntry with the reason for anything else."""
    d = _load(text)
    if not isinstance(d, dict) or not isinstance(d.get("url"), str):
        raise BadEntry(f"not a request: {text[:60]!r}")
    for attr in ("callback", "errback"):
        name = d.get(attr)
        if name is not None and not _is_callback(spider, name):
            raise BadEntry(f"{attr} {str(name)[:60]!r} is not a callback of the spider")
    if d.get("callback") is None and not _is_callback(spider, "parse"):
        # Scrapy would call spider.parse, which this spider does not define.
        raise BadEntry(f"request with no callback, and the spider has no parse: {text[:60]!r}")
    if "_class" in d and _request_class(d["_class"]) is None:
        raise BadEntry(f"_class {str(d['_class'])[:100]!r} is not a request class of this crawl")
    try:
        d["body"] = base64.b64decode(d.get("body") or "", validate=True)
        d["headers"] = {
            _unb64(k): [_unb64(v) for v in vs] for k, vs in (d.get("headers") or {}).items()
        }
        return request_from_dict(d, spider=spider)
    except Exception as exc:  # whatever the data makes Request() raise: not a request of ours
        raise BadEntry(
            f"unusable request for {d['url'][:200]!r}: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


def _load(text: str) -> Any:
    """Parsed JSON of a Redis entry, within the size and nesting a request needs."""
    if len(text) > MAX_ENTRY_BYTES:
        raise BadEntry(f"entry of {len(text)} bytes is over {MAX_ENTRY_BYTES}")
    try:
        return json.loads(text)
    except RecursionError:
        raise BadEntry(f"JSON too deeply nested: {text[:60]!r}") from None
    except ValueError:
        raise BadEntry(f"not JSON: {text[:60]!r}") from None


def _is_callback(spider: Spider, name: Any) -> bool:
    """A public method of the spider's own class: not one of Spider's (``start``, ``close``,
    ``from_crawler``...), but ``parse`` where the spider defines it."""
    if not isinstance(name, str) or name.startswith("_"):
        return False
    method = getattr(type(spider), name, None)
    if not callable(method) or method is getattr(Spider, name, None):
        return False
    return name == "parse" or not hasattr(Spider, name)


def _request_class(path: Any) -> type[Request] | None:
    """The Request subclass ``path`` names, if its module is already imported (never
    import what Redis names: importing runs the module's code)."""
    if not isinstance(path, str):
        return None
    module, _, name = path.rpartition(".")
    cls = getattr(sys.modules.get(module), name, None)
    return cls if isinstance(cls, type) and issubclass(cls, Request) else None


def entry_request(entry: str) -> str:
    """The request JSON of a queue entry, ``"<seq> <request JSON>"``."""
    return entry.partition(" ")[2]


def heartbeat(value: bytes | str) -> tuple[int, dict[str, Any]]:
    """A heartbeat, ``"<ms> <JSON object>"``: (ms, info); ValueError saying why not."""
    if len(value) > MAX_ENTRY_BYTES:
        raise ValueError(f"not a heartbeat: {len(value)} bytes is over {MAX_ENTRY_BYTES}")
    try:
        text = value.decode("utf-8") if isinstance(value, bytes) else value
        seen_ms, _, info = text.partition(" ")
        parsed = int(seen_ms), json.loads(info)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise ValueError(f"not a heartbeat: {value[:60]!r}") from None
    if not isinstance(parsed[1], dict):
        raise ValueError(f"not a heartbeat: {value[:60]!r}")
    return parsed


def start_entry(url: str, meta: dict[str, Any]) -> str:
    """A ``<spider>:start_urls`` entry: the URL with the meta its list request gets."""
    return json.dumps({"url": url, "meta": meta}, separators=(",", ":"))


def start_url(text: str) -> tuple[str, dict[str, Any]]:
    """A ``<spider>:start_urls`` entry: a URL, or JSON ``{"url": ..., "meta": {...}}``."""
    text = text.strip()
    if text.startswith("{"):
        d = _load(text)
        if not isinstance(d, dict):
            raise BadEntry(f"start URL entry is not a JSON object: {text[:60]!r}")
        url, meta = d.get("url"), d.get("meta", {})
        if not isinstance(url, str) or not isinstance(meta, dict):
            raise BadEntry(f"start URL entry needs a string url: {text[:60]!r}")
        local = sorted(set(meta) & set(LOCAL_META))
        if local:
            # "_lease" would make the node take the request for one it leased (crawled
            # outside the queue and its dedup); the others are the node's own bookkeeping.
            raise BadEntry(f"start URL meta may not set {', '.join(local)} (a node's own)")
    else:
        if len(text) > MAX_ENTRY_BYTES:
            raise BadEntry(f"entry of {len(text)} bytes is over {MAX_ENTRY_BYTES}")
        url, meta = text, {}
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BadEntry(f"start URL is not an http(s) URL: {url[:100]!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadEntry(f"start URL is not an http(s) URL: {url[:100]!r}")
    return url, meta


def _b64(value: bytes | str) -> str:
    return base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()


def _unb64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)
