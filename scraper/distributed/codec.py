"""Requests as JSON for Redis: data, never code.

scrapy-redis pickles requests, so whoever can write to Redis can run code on every
node. Here a request is Scrapy's ``request_to_dict`` as JSON (callbacks by name,
bytes as base64); anything else found in Redis is rejected with a clear reason.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from scrapy.utils.request import request_from_dict

if TYPE_CHECKING:
    from scrapy import Request, Spider

MAX_ENTRY_BYTES = 1 << 20  # a request is a URL and a little meta; more is not ours
LOCAL_META = ("_lease", "download_slot", "download_latency", "depth")  # per node, not shared


class BadEntry(ValueError):
    """An entry in Redis that is not a request or URL this crawl wrote or accepts."""


def encode(request: Request, spider: Spider) -> str:
    """The request as one line of JSON."""
    d = request.to_dict(spider=spider)
    d["meta"] = {k: v for k, v in (d.get("meta") or {}).items() if k not in LOCAL_META}
    d["body"] = base64.b64encode(d.get("body") or b"").decode()
    d["headers"] = {_b64(k): [_b64(v) for v in vs] for k, vs in (d.get("headers") or {}).items()}
    return json.dumps(d, separators=(",", ":"), default=str)


def decode(text: str, spider: Spider) -> Request:
    """A request from its JSON; BadEntry with the reason for anything else."""
    if len(text) > MAX_ENTRY_BYTES:
        raise BadEntry(f"entry of {len(text)} bytes is over {MAX_ENTRY_BYTES}")
    try:
        d = json.loads(text)
    except ValueError:
        raise BadEntry(f"not JSON: {text[:60]!r}") from None
    if not isinstance(d, dict) or not isinstance(d.get("url"), str):
        raise BadEntry(f"not a request: {text[:60]!r}")
    try:
        d["body"] = base64.b64decode(d.get("body") or "", validate=True)
        d["headers"] = {_unb64(k): [_unb64(v) for v in vs]
                        for k, vs in (d.get("headers") or {}).items()}
        return request_from_dict(d, spider=spider)
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise BadEntry(f"unusable request for {d['url'][:200]!r}: {exc}") from None


def start_url(text: str) -> tuple[str, dict[str, Any]]:
    """A ``<spider>:start_urls`` entry: a URL, or JSON ``{"url": ..., "meta": {...}}``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            d = json.loads(text)
        except ValueError:
            raise BadEntry(f"start URL entry is not JSON: {text[:60]!r}") from None
        url, meta = d.get("url") if isinstance(d, dict) else None, d.get("meta") or {}
        if not isinstance(url, str) or not isinstance(meta, dict):
            raise BadEntry(f"start URL entry needs a string url: {text[:60]!r}")
    else:
        url, meta = text, {}
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadEntry(f"start URL is not an http(s) URL: {url[:100]!r}")
    return url, meta


def _b64(value: bytes | str) -> str:
    return base64.b64encode(value if isinstance(value, bytes) else value.encode()).decode()


def _unb64(value: str) -> bytes:
    return base64.b64decode(value, validate=True)
