"""The local test site: list pages with pagination, child pages, and fault pages.

It serves the demo, the tests and the benchmarks, on 127.0.0.1 by default::

    python -m scraper.testsite --pages 2000 --per-page 100 --latency-ms 100 --port 8347

Every page is a pure function of its URL, so a test can re-render what the site
served (``render_child``) and compare it byte for byte with what was stored.

A list URL carries the shape of the listing in its query, so one running site
serves crawls of any size: ``/list?n=500&per_page=50&faults=1&page=1``.
Parameters left out take the server's defaults (``--pages``, ``--per-page``).

With ``faults=1`` the first list page also links to every fault page (see
``FAULTS``) and to links that a crawler must skip (fragment, ``javascript:``,
``mailto:``, off-site, duplicate), and the last list page is malformed HTML.
With ``endless=1`` every list page has a next page: pagination never ends (the ``n``
children are on the first pages, the rest have none).

Two endpoints serve the SSRF guard's tests: ``/links?href=A&href=B`` is a list page
linking to each ``href``, ``/redirect?to=URL`` answers 302 to any URL.

Politeness (tests/test_politeness.py):

- Push-back: any URL with ``push_back=STATUS`` in its query (``/page/3?push_back=429&
  retry_after=2&times=1``) answers STATUS, with ``Retry-After: <retry_after>`` verbatim
  when given, to its first ``times`` hits (default 1); then it answers as without them.
- ``featured=K``: every list page also links to child pages 0..K-1 ("popular pages"), so
  one child is linked from many list pages.

Re-crawls (conditional GET):

- A child page (``/page/N``) carries ``ETag`` and ``Last-Modified`` and answers ``304``
  with no body to an ``If-None-Match`` naming its ETag, or an ``If-Modified-Since`` not
  before its Last-Modified.
- ``/_change?percent=P&seed=S`` changes a fixed P% of all child pages (those for which
  ``in_change(name, P, S)`` holds): their content gets a revision line, their ETag and
  Last-Modified move on. ``/_change?reset=1`` undoes every change.
- ``/_listing?drop=P&seed=S&add=K`` takes a fixed P% of the children out of every
  listing (``in_change(name, P, S)`` again) and links K more after the last one, under
  the same list page URLs; ``/_listing?reset=1`` undoes it.
- ``/_validators?on=0`` serves child pages without ETag and Last-Modified (and never
  304), ``on=1`` with them again.

Many sites (tests/test_sites.py): ``--hosts N`` answers on 127.0.0.2 .. 127.0.0.<N+1> too,
the same port, each address bound apart (127.0.0.1 as without it). Every host serves the
same listing (its links are relative: children stay on their host) and robots.txt.
``--slow-host ADDR`` (repeatable) answers after ``--slow-host-ms`` instead of
``--latency-ms``; ``--limited-host ADDR`` answers ``429`` with ``Retry-After: 1`` to a
request beyond ``--limit-rps`` in the last second (a sliding window), at once, as a
rate-limited site does. ``/_hosts`` (on any address) reports per host, robots.txt apart:
``hits``, ``refused`` (429s answered), ``max_in_flight``, ``first`` and ``last`` arrival
(``time.time()``), ``max_per_second`` (most arrivals in any 1-second window, 429s
included: the rate the site saw); ``?reset=1`` zeroes them after reading.

- ``/robots.txt`` disallows ``/private/``; with ``private=K`` the first list page also
  links to ``/private/0`` .. ``/private/K-1`` (child pages otherwise).
- ``/_stats`` counts requests: ``hits`` (robots.txt apart: ``robots_hits``),
  ``private_hits``, and ``/_hits?path=P`` (or ``?prefix=P``) lists the arrival times
  (``time.time()``) of the last 100,000 requests, robots.txt included, for a test to
  check from the server's side when a retry came.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import html
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING

from aiohttp import web

from scraper import testsite_shapes

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

DEFAULT_PORT = 8347

#: Fault pages, linked from the first list page when ``faults=1``.
#: The value says what a crawler should record for it.
FAULTS: dict[str, str] = {
    "500": "HTTP 500 on every try",
    "404": "HTTP 404",
    "slow": "answers after --slow-ms (default 3 s)",
    "drip": "sends its body one byte a second (hits DOWNLOAD_TIMEOUT)",
    "binary": "200, application/octet-stream, 64 KiB of random bytes",
    "huge": "200, text/html, --huge-mb MiB (over a small DOWNLOAD_MAXSIZE)",
    "latin1": "200, text/html; charset=iso-8859-1, non-UTF-8 bytes",
    "redirect-loop": "302 to itself, forever",
    "redirect": "302 to child page 1 of a separate numbering (/page/r1)",
    "empty": "200 with an empty body",
    "reset": "closes the connection without an answer",
}

#: Links on the faults list page that a crawler must skip, with the reason.
SKIPPED_LINKS: dict[str, str] = {
    "#top": "fragment",
    "javascript:void(0)": "scheme",
    "mailto:someone@example.com": "scheme",
    "http://elsewhere.invalid/page/1": "offsite",
    "http://[::1:bad/": "unparsable",
    "": "empty",
}

_WORDS = (
    "crawl listing page link body store meta bucket object index shard lease queue "
    "node redis mongo latency request response parse yield item pipeline batch flush "
    "upload worker thread reactor asyncio twisted scrapy spider engine scheduler "
    "download slot concurrency throughput fingerprint idempotent replay ack retry"
).split()


def _paragraph_pool(count: int = 256, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pool = []
    for i in range(count):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(60, 110)))
        pool.append(f'<p class="p{i % 7}">{words.capitalize()}.</p>\n')
    return pool


_POOL = _paragraph_pool()
_PARAGRAPH_BYTES = sum(map(len, _POOL)) // len(_POOL)


@dataclass(frozen=True)
class Listing:
    """The shape of one listing: how many children, how many per list page."""

    n: int
    per_page: int
    faults: bool = False
    endless: bool = False
    private: int = 0  # links to /private/0.. on the first page (robots.txt disallows them)
    featured: int = 0  # every list page links to children 0..featured-1 too
    added: int = 0  # /_listing?add=K: children linked after the n-th, the URLs unchanged

    @property
    def children(self) -> int:
        return self.n + self.added

    @property
    def last_page(self) -> int:
        return max(1, -(-self.children // self.per_page))

    def query(self, page: int) -> str:
        faults = "&faults=1" if self.faults else ""
        endless = "&endless=1" if self.endless else ""
        private = f"&private={self.private}" if self.private else ""
        private += f"&featured={self.featured}" if self.featured else ""
        return f"/list?n={self.n}&per_page={self.per_page}{faults}{endless}{private}&page={page}"


def render_child(
    name: int | str, canonical: str | None = None, revision: int = 0, padding_kb: int = 0
) -> bytes:
    """The exact bytes served for ``/page/<name>``: 20 to 50 KB of HTML, and about
    ``padding_kb`` KB more (``--child-padding-kb``: pages the size of a shop's), with a
    ``<link rel="canonical">`` when given one, and a revision line once it has changed."""
    seed = int.from_bytes(hashlib.blake2b(str(name).encode(), digest_size=4).digest())
    count = 30 + seed % 45 + padding_kb * 1024 // _PARAGRAPH_BYTES
    paras = "".join(_POOL[(seed + k * 31) % len(_POOL)] for k in range(count))
    link = f'<link rel="canonical" href="{html.escape(canonical)}">' if canonical else ""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Child page {name}</title>{link}</head>\n<body>\n"
        '<nav><a href="/list">Back to the list</a> <a href="/">Home</a></nav>\n'
        f"<h1>Child page {name}</h1>\n<article>\n{paras}</article>\n"
        + (f'<p class="revision">Revision {revision}</p>\n' if revision else "")
        + '<footer><a href="/list?page=1">All pages</a></footer>\n</body></html>\n'
    ).encode()


def in_change(name: int | str, percent: float, seed: int) -> bool:
    """Whether ``/_change?percent=P&seed=S`` changes child page ``name``: a fixed share
    of the pages, the same for every run of the site."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=4).digest()
    return int.from_bytes(digest) % 10_000 < percent * 100


#: Last-Modified of a child page never changed; each change moves it one day on.
FIRST_MODIFIED = 1_767_225_600  # 2026-01-01 00:00:00 UTC


def render_list(listing: Listing, page: int, dropped: tuple[float, int] | None = None) -> bytes:
    """A list page: its children's links, prev/next links, and (faults) the odd ones; the
    children ``in_change(i, *dropped)`` are not linked."""
    first = (page - 1) * listing.per_page
    last = min(listing.children, first + listing.per_page)
    items = [
        f'<li><a class="child" href="/page/{i}">Child page {i}</a></li>'
        for i in range(first, last)
        if dropped is None or not in_change(i, *dropped)
    ]
    if listing.faults and page == 1:
        items += [
            f'<li><a class="child fault" href="/fault/{name}">Fault: {html.escape(what)}</a></li>'
            for name, what in FAULTS.items()
        ]
        items += [
            f'<li><a class="skip" href="{html.escape(href)}">odd</a></li>' for href in SKIPPED_LINKS
        ]
        if first < last:  # the same child twice: the crawler must count and skip it
            items.append(f'<li><a class="child" href="/page/{first}#again">again</a></li>')
    items += [
        f'<li class="popular"><a href="/page/{i}">Popular: page {i}</a></li>'
        for i in range(min(listing.featured, listing.n))
    ]
    if listing.private and page == 1:
        items += [
            f'<li><a class="child" href="/private/{i}">Private page {i}</a></li>'
            for i in range(listing.private)
        ]
    nav = []
    if page > 1:
        nav.append(f'<a rel="prev" href="{html.escape(listing.query(page - 1))}">Previous</a>')
    if page < listing.last_page or listing.endless:
        nav.append(f'<a rel="next" href="{html.escape(listing.query(page + 1))}">Next</a>')
    body = "\n".join(items)
    if listing.faults and page == listing.last_page and page > 1:
        # Malformed on purpose: no </head>, unclosed tags, a stray </table>, unquoted
        # attributes, a stray NUL and invalid UTF-8; its links must still be found.
        return (
            f"<html><head><title>List {page}</title><body><ul>\n{body}\n</table><li><a href="
            f"/page/{last - 1} class=child>dup<div><p>\x00\n{''.join(nav)}"
        ).encode() + b"\xff\xfe<b>"
    return (
        f"<!DOCTYPE html>\n<html><head><title>List page {page}</title></head>\n"
        f"<body><h1>List page {page} of {listing.last_page}</h1>\n<ul>\n{body}\n</ul>\n"
        f"<nav>{' '.join(nav)}</nav>\n</body></html>\n"
    ).encode()


class Host:
    """What one address of the site saw, and how it answers (``/_hosts``)."""

    __slots__ = (
        "accepted",
        "arrivals",
        "first",
        "hits",
        "in_flight",
        "last",
        "latency",
        "limit",
        "max_in_flight",
        "max_per_second",
        "refused",
    )

    def __init__(self, latency: float, limit: int = 0) -> None:
        self.latency = latency
        self.limit = limit  # requests answered per sliding second; 0: no limit
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero the counts (requests in flight stay counted)."""
        self.hits = self.refused = self.max_per_second = 0
        self.max_in_flight = self.in_flight
        self.first = self.last = 0.0
        self.arrivals: collections.deque[float] = collections.deque()  # the last second's
        self.accepted: collections.deque[float] = collections.deque()  # the last second's 2xx..

    def arrive(self, now: float) -> bool:
        """Count a request arriving at ``now``; False when it is over the limit."""
        self.hits += 1
        if not self.first:
            self.first = now
        self.last = now
        arrivals = self.arrivals
        arrivals.append(now)
        while arrivals[0] <= now - 1:
            arrivals.popleft()
        self.max_per_second = max(self.max_per_second, len(arrivals))
        if not self.limit:
            return True
        accepted = self.accepted
        while accepted and accepted[0] <= now - 1:
            accepted.popleft()
        if len(accepted) >= self.limit:
            self.refused += 1
            return False
        accepted.append(now)
        return True

    def report(self) -> dict[str, float]:
        """``hits`` counts every request (429s included), robots.txt apart."""
        return {
            "hits": self.hits,
            "refused": self.refused,
            "max_in_flight": self.max_in_flight,
            "first": self.first,
            "last": self.last,
            "max_per_second": self.max_per_second,
        }


#: The first address of ``--hosts``; 127.0.0.1 is the site as without it.
FIRST_HOST = 2


def host_addresses(count: int) -> list[str]:
    """The loopback addresses of ``--hosts count``: 127.0.0.2 onwards."""
    if not 0 <= count <= 250:
        raise ValueError("--hosts takes 0 to 250 (127.0.0.2 .. 127.0.0.251)")
    return [f"127.0.0.{FIRST_HOST + i}" for i in range(count)]


class TestSite:
    """The aiohttp application with its settings."""

    __test__ = False  # not a pytest class

    def __init__(
        self,
        pages: int = 1000,
        per_page: int = 100,
        latency_ms: float = 0,
        slow_ms: float = 3000,
        huge_mb: float = 40,
        padding_kb: int = 0,
        slow_hosts: dict[str, float] | None = None,
        limited_hosts: dict[str, int] | None = None,
    ) -> None:
        """``slow_hosts``: address -> latency (ms) instead of ``latency_ms``;
        ``limited_hosts``: address -> requests per second (more are answered 429)."""
        self.default = Listing(pages, per_page)
        self.padding_kb = padding_kb
        self.latency = latency_ms / 1000
        self.slow = slow_ms / 1000
        self.huge_mb = huge_mb
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0  # most requests being answered at once: what a crawler really ran
        self.robots_hits = 0
        self.private_hits = 0  # requests for /private/ (robots.txt disallows it)
        self.arrivals: collections.deque[tuple[float, str]] = collections.deque(maxlen=100_000)
        self.pushed_back: collections.Counter[str] = collections.Counter()  # per path and query
        self.changes: list[tuple[float, int]] = []  # /_change: (percent, seed), in order
        self.validators = True  # /_validators: ETag and Last-Modified on child pages
        self.dropped: tuple[float, int] | None = None  # /_listing: children not linked
        self.added = 0  # /_listing: children linked after the last one
        self.not_modified = 0  # 304s answered
        self.child_bytes = 0  # body bytes of child pages sent
        self.slow_hosts = {addr: ms / 1000 for addr, ms in (slow_hosts or {}).items()}
        self.limited_hosts = dict(limited_hosts or {})
        self.hosts: dict[str, Host] = {}  # by the local address a request arrived on

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._latency])
        app.router.add_get("/", self.home)
        app.router.add_get("/list", self.listing)
        app.router.add_get("/page/{i}", self.child)
        app.router.add_get("/private/{i}", self.private)
        app.router.add_get("/fault/{name}", self.fault)
        app.router.add_get("/links", self.links)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/robots.txt", self.robots)
        app.router.add_get("/_stats", self.stats)
        app.router.add_get("/_hits", self.arrival_times)
        app.router.add_get("/_hosts", self.host_stats)
        app.router.add_get("/_change", self.change)
        app.router.add_get("/_validators", self.set_validators)
        app.router.add_get("/_listing", self.change_listing)
        app.router.add_get("/shapes/{shape}/{size}/{rest:.*}", self.shaped)
        return app

    @web.middleware
    async def _latency(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        path = request.path
        if path in ("/_stats", "/_hits", "/_hosts"):
            return await handler(request)
        now = time.time()
        self.arrivals.append((now, request.path_qs))
        if path == "/robots.txt":  # answered at once, as a static file, and counted apart
            self.robots_hits += 1
            return await handler(request)
        host = self._host(request)
        if not host.arrive(now):
            return web.Response(status=429, text="slow down\n", headers={"Retry-After": "1"})
        self.hits += 1
        if path.startswith("/private/"):
            self.private_hits += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        host.in_flight += 1
        host.max_in_flight = max(host.max_in_flight, host.in_flight)
        try:
            if host.latency:
                await asyncio.sleep(host.latency)
            if "push_back=" in request.query_string:
                pushed = self._push_back(request)
                if pushed is not None:
                    return pushed
            return await handler(request)
        finally:
            self.in_flight -= 1
            host.in_flight -= 1

    def _host(self, request: web.Request) -> Host:
        """The host a request came to: the local address it arrived on (not its Host
        header, which a client chooses)."""
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        addr = sockname[0] if sockname else ""
        host = self.hosts.get(addr)
        if host is None:
            host = self.hosts[addr] = Host(
                self.slow_hosts.get(addr, self.latency), self.limited_hosts.get(addr, 0)
            )
        return host

    def _push_back(self, request: web.Request) -> web.Response | None:
        """``push_back=STATUS&retry_after=N&times=K``: STATUS to the first K hits of this URL."""
        q = request.query
        try:
            status, times = int(q["push_back"]), int(q.get("times", "1"))
        except ValueError:
            raise web.HTTPBadRequest(text="push_back and times must be integers") from None
        self.pushed_back[request.path_qs] += 1
        if self.pushed_back[request.path_qs] > times:
            return None
        headers = {"Retry-After": q["retry_after"]} if "retry_after" in q else {}
        return web.Response(status=status, text="slow down\n", headers=headers)

    async def home(self, request: web.Request) -> web.Response:
        return web.Response(
            text=f'<html><body><a href="{self.default.query(1)}">The listing</a></body></html>',
            content_type="text/html",
        )

    async def stats(self, request: web.Request) -> web.Response:
        """Counters for tests and benchmarks; ``?reset=1`` zeroes them after reading."""
        data = {
            "hits": self.hits,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "robots_hits": self.robots_hits,
            "private_hits": self.private_hits,
            "not_modified": self.not_modified,
            "child_bytes": self.child_bytes,
        }
        if request.query.get("reset") == "1":
            self.hits = self.max_in_flight = self.robots_hits = self.private_hits = 0
            self.not_modified = self.child_bytes = 0
            self.arrivals.clear()
            self.pushed_back.clear()
        return web.json_response(data)

    async def host_stats(self, request: web.Request) -> web.Response:
        """Per host (local address): hits, 429s, most in flight and per second, first and
        last arrival; ``?reset=1`` zeroes them after reading."""
        data = {addr: host.report() for addr, host in sorted(self.hosts.items())}
        if request.query.get("reset") == "1":
            for host in self.hosts.values():
                host.reset()
        return web.json_response(data)

    async def arrival_times(self, request: web.Request) -> web.Response:
        """When requests arrived: ``?path=P`` (path and query, exact) or ``?prefix=P``."""
        path, prefix = request.query.get("path"), request.query.get("prefix", "")
        hits = [
            {"t": t, "path": p}
            for t, p in self.arrivals
            if (p == path if path is not None else p.startswith(prefix))
        ]
        return web.json_response({"hits": hits})

    async def robots(self, request: web.Request) -> web.Response:
        return web.Response(text="User-agent: *\nDisallow: /private/\n")

    async def listing(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            listing = Listing(
                int(q.get("n", self.default.n)),
                max(1, int(q.get("per_page", self.default.per_page))),
                q.get("faults") == "1",
                q.get("endless") == "1",
                int(q.get("private", "0")),
                int(q.get("featured", "0")),
                self.added,
            )
            page = int(q.get("page", "1"))
        except ValueError:
            raise web.HTTPBadRequest(
                text="n, per_page, private, featured and page must be integers"
            ) from None
        if page < 1 or (page > listing.last_page and not listing.endless):
            raise web.HTTPNotFound(text="no such list page")
        body = render_list(listing, page, self.dropped)
        return web.Response(body=body, content_type="text/html")

    async def shaped(self, request: web.Request) -> web.Response:
        """A listing shaped like a real site (scraper/testsite_shapes.py)."""
        return await testsite_shapes.handle(request, render_child)

    async def links(self, request: web.Request) -> web.Response:
        """A list page linking to each ``href`` of the query, without pagination."""
        items = "\n".join(
            f'<li><a class="child" href="{html.escape(href)}">link</a></li>'
            for href in request.query.getall("href", [])
        )
        return web.Response(
            text=f"<!DOCTYPE html>\n<html><head><title>Links</title></head>\n"
            f"<body><ul>\n{items}\n</ul></body></html>\n",
            content_type="text/html",
        )

    async def redirect(self, request: web.Request) -> web.Response:
        """302 to the URL in ``to``, whatever it is (private addresses included)."""
        to = request.query.get("to")
        if not to:
            raise web.HTTPBadRequest(text="to=URL is required")
        raise web.HTTPFound(to)

    async def child(self, request: web.Request) -> web.Response:
        name = request.match_info["i"]
        revision = sum(in_change(name, percent, seed) for percent, seed in self.changes)
        body = render_child(name, revision=revision, padding_kb=self.padding_kb)
        if not self.validators:
            self.child_bytes += len(body)
            return web.Response(body=body, content_type="text/html", charset="utf-8")
        etag = f'"{hashlib.blake2b(body, digest_size=8).hexdigest()}"'
        modified = FIRST_MODIFIED + revision * 86_400
        headers = {"ETag": etag, "Last-Modified": formatdate(modified, usegmt=True)}
        if_none_match, since = request.headers.get("If-None-Match"), request.if_modified_since
        if if_none_match is not None:  # it wins over If-Modified-Since (RFC 9110)
            fresh = etag in if_none_match.split(", ")
        else:
            fresh = since is not None and since.timestamp() >= modified
        if fresh:
            self.not_modified += 1
            return web.Response(status=304, headers=headers)
        self.child_bytes += len(body)
        return web.Response(body=body, content_type="text/html", charset="utf-8", headers=headers)

    async def change(self, request: web.Request) -> web.Response:
        """``?percent=P&seed=S``: change P% of the child pages; ``?reset=1``: undo all."""
        if request.query.get("reset") == "1":
            self.changes.clear()
        else:
            percent = float(request.query.get("percent", "5"))
            self.changes.append((percent, int(request.query.get("seed", "1"))))
        return web.json_response({"changes": self.changes})

    async def change_listing(self, request: web.Request) -> web.Response:
        """``?drop=P&seed=S&add=K``: unlink P% of the children, link K more;
        ``?reset=1``: undo."""
        q = request.query
        if q.get("reset") == "1":
            self.dropped, self.added = None, 0
        else:
            if "drop" in q:
                self.dropped = (float(q["drop"]), int(q.get("seed", "1")))
            self.added = int(q.get("add", self.added))
        return web.json_response({"dropped": self.dropped, "added": self.added})

    async def set_validators(self, request: web.Request) -> web.Response:
        """``?on=0``: child pages without ETag and Last-Modified; ``?on=1``: with them."""
        self.validators = request.query.get("on", "1") != "0"
        return web.json_response({"validators": self.validators})

    async def private(self, request: web.Request) -> web.Response:
        """A child page under /private/, which robots.txt disallows."""
        return web.Response(
            body=render_child(f"private-{request.match_info['i']}"),
            content_type="text/html",
            charset="utf-8",
        )

    async def fault(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        match name:
            case "500":
                raise web.HTTPInternalServerError(text="boom")
            case "404":
                raise web.HTTPNotFound(text="gone")
            case "slow":
                await asyncio.sleep(self.slow)
                return web.Response(body=render_child("slow"), content_type="text/html")
            case "drip":
                resp = web.StreamResponse(headers={"Content-Type": "text/html"})
                resp.content_length = 1000
                await resp.prepare(request)
                for _ in range(1000):
                    await resp.write(b".")
                    await asyncio.sleep(1)
                return resp
            case "binary":
                return web.Response(
                    body=random.Random(42).randbytes(64 * 1024),
                    content_type="application/octet-stream",
                )
            case "huge":
                chunk = render_child("huge")
                body = chunk * int(self.huge_mb * 2**20 // len(chunk) + 1)
                return web.Response(body=body, content_type="text/html")
            case "latin1":
                text = "<html><head><title>Caf\xe9 cr\xe8me \xe0 la fran\xe7aise</title></head>"
                body = (text + "<body>" + "\xe9t\xe9 " * 2000 + "</body></html>").encode("latin-1")
                return web.Response(
                    body=body, headers={"Content-Type": "text/html; charset=iso-8859-1"}
                )
            case "redirect-loop":
                raise web.HTTPFound("/fault/redirect-loop")
            case "redirect":
                raise web.HTTPFound("/page/r1")
            case "empty":
                return web.Response(body=b"", content_type="text/html")
            case "reset":
                if request.transport is not None:
                    request.transport.abort()
                return web.Response()
        raise web.HTTPNotFound(text="no such fault")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Return once something listens on 127.0.0.1:port; RuntimeError if ``proc`` exits
    first or nothing listens within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args!r} did not listen on port {port} within {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(site: TestSite, host: str, port: int, hosts: list[str] | None = None) -> None:
    """Serve on ``host``:``port``, then on each of ``hosts`` at the same port (each address
    bound apart, never a wildcard)."""
    runner = web.AppRunner(site.app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    # backlog: a crawl at c=1000 opens a thousand connections at once.
    await web.TCPSite(runner, host, port, backlog=4096, reuse_address=True).start()
    port = runner.addresses[0][1]  # the one bound, if ``port`` was 0
    for addr in hosts or []:
        await web.TCPSite(runner, addr, port, backlog=4096, reuse_address=True).start()
    # The first line is for whoever started us with --port 0 (bench/servers.py reads it).
    print(f"listening on {host}:{port}", flush=True)
    print(f"test site on http://{host}:{port}{site.default.query(1)}", flush=True)
    if hosts:
        print(f"and on {hosts[0]} .. {hosts[-1]} ({len(hosts)} hosts), port {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    """Run the test site until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=1000, help="child pages in the listing")
    parser.add_argument("--per-page", type=int, default=100, help="child links per list page")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay before every answer")
    parser.add_argument("--slow-ms", type=float, default=3000, help="delay of /fault/slow")
    parser.add_argument("--huge-mb", type=float, default=40, help="size of /fault/huge")
    parser.add_argument(
        "--child-padding-kb", type=int, default=0, help="KB added to every /page/<i>"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="0: any free port (printed)")
    parser.add_argument(
        "--hosts", type=int, default=0, help="also answer on 127.0.0.2 .. 127.0.0.<N+1>"
    )
    parser.add_argument(
        "--slow-host", action="append", default=[], metavar="ADDR", help="repeatable"
    )
    parser.add_argument("--slow-host-ms", type=float, default=2000, help="latency of a slow host")
    parser.add_argument(
        "--limited-host", action="append", default=[], metavar="ADDR", help="repeatable"
    )
    parser.add_argument(
        "--limit-rps", type=int, default=10, help="a limited host answers 429 beyond this"
    )
    args = parser.parse_args(argv)
    try:
        hosts = host_addresses(args.hosts)
    except ValueError as exc:
        parser.error(str(exc))
    site = TestSite(
        args.pages,
        args.per_page,
        args.latency_ms,
        args.slow_ms,
        args.huge_mb,
        args.child_padding_kb,
        slow_hosts=dict.fromkeys(args.slow_host, args.slow_host_ms),
        limited_hosts=dict.fromkeys(args.limited_host, args.limit_rps),
    )
    asyncio.run(serve(site, args.host, args.port, hosts))


if __name__ == "__main__":
    main()
