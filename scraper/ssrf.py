"""SSRF guard: no request (and no redirect) to an address the crawler's own network trusts.

A crawl follows URLs that someone else wrote: a list page, or a redirect from one of its
children, can point at ``http://169.254.169.254/`` (a cloud's metadata service), at
``http://10.0.0.5:9200/`` or at ``http://localhost:6379/``. The guard resolves each
request's host *before* the download and refuses the request when any address of the
host is loopback, private, link-local, multicast, reserved, unspecified or otherwise not
public (IPv4 and IPv6; an IPv4 address inside an IPv6 one, as in ``::ffff:10.0.0.5``, 6to4
or NAT64, counts as that IPv4 address), unless the address is in a network of
``ALLOWED_NETWORKS``. So a public name pointing at a private address is refused too.

A refused request fails with :class:`AddressRefused` (an ``IgnoreRequest``): a child ends
as one error record saying why, a list page is logged as failed. Redirect targets are new
requests that pass through the downloader middlewares again, so they are checked too.

Each host is resolved once per crawl (``getaddrinfo`` in a thread; concurrent requests to
a host share one lookup), so a crawl of one site pays for one lookup. A host that does
not resolve is not refused: its request fails with the ``DNSLookupError`` the download
would have raised (and is retried like one), so no request goes out for a host the guard
could not check.

Limit: the download resolves the host again. A name whose DNS answer changes between the
two lookups (DNS rebinding) is not caught here; for hostile sites, send the crawl through
an egress proxy or firewall that enforces the same rule.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from scrapy import signals
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.httpobj import urlparse_cached
from twisted.internet.error import DNSLookupError

from scraper.config import ConfigError, stop_crawl

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Self

    from scrapy import Request
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: The checks in order: the first that holds names the address (127.0.0.1 is private too,
#: but "loopback" says more).
_KINDS = (
    ("is_unspecified", "unspecified"),
    ("is_loopback", "loopback"),
    ("is_link_local", "link-local"),
    ("is_multicast", "multicast"),
    ("is_reserved", "reserved"),
    ("is_private", "private"),
)
#: Hosts whose verdict is kept; beyond it the oldest are forgotten (and looked up again).
CACHE_SIZE = 10_000


class AddressRefused(IgnoreRequest):
    """A request refused because its host resolves to a non-public address."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address ("loopback", "private", ...), or None if it is."""
    if isinstance(ip, ipaddress.IPv6Address) and (v4 := embedded_ipv4(ip)) is not None:
        kind = address_kind(v4)
        # IPv4-mapped and NAT64 addresses are their IPv4 address, nothing else (Python calls
        # 64:ff9b::/96 reserved, but DNS64 gives every public name such an address).
        if kind or ip.ipv4_mapped is not None or ip in _NAT64:
            return kind
    for attribute, kind in _KINDS:
        if getattr(ip, attribute):
            return kind
    if not ip.is_global:  # e.g. 100.64.0.0/10, carrier-grade NAT
        return "non-public"
    return None


def parse_networks(values: Iterable[str]) -> list[IPNetwork]:
    """``ALLOWED_NETWORKS`` as networks; ConfigError names the first entry that is not one."""
    networks = []
    for value in values:
        text = str(value).strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                "ALLOWED_NETWORKS", f"{text!r} is not a network (CIDR, e.g. 10.0.0.0/8 or fd00::/8)"
            ) from None
    return networks


class AddressPolicy:
    """Which addresses a crawl may connect to: public ones, and those in allowed networks."""

    def __init__(self, allowed: Iterable[IPNetwork] = ()) -> None:
        self.allowed = list(allowed)

    def refusal(self, ip: IPAddress) -> str | None:
        """Why a connection to ``ip`` is refused ("a private address"), or None if allowed."""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        kind = address_kind(ip)
        if kind is None:
            return None
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return None
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} address"

    def check(self, host: str, addresses: Iterable[IPAddress]) -> str | None:
        """The refusal message for ``host`` resolved to ``addresses``, or None if allowed."""
        for ip in addresses:
            why = self.refusal(ip)
            if why is None:
                continue
            if literal_address(host) is not None:
                return f"{host} is {why}, not in ALLOWED_NETWORKS"
            return f"{host} resolves to {ip}, {why} not in ALLOWED_NETWORKS"
        return None


def literal_address(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is written as one (brackets already removed)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve(host: str) -> list[IPAddress]:
    """Every address ``host`` resolves to (blocking: run it in a thread)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class SsrfGuard:
    """Downloader middleware: refuses requests to non-public addresses (see module doc)."""

    def __init__(
        self,
        crawler: Crawler,
        policy: AddressPolicy,
        config_error: str | None = None,
    ) -> None:
        self.crawler = crawler
        self.policy = policy
        self.config_error = config_error
        self._verdicts: dict[str, str | None] = {}  # host -> refusal message, None = allowed
        self._lookups: dict[str, asyncio.Task[str | None]] = {}

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        try:
            networks = parse_networks(crawler.settings.getlist("ALLOWED_NETWORKS"))
            error = None
        except ConfigError as exc:
            networks, error = [], str(exc)
        guard = cls(crawler, AddressPolicy(networks), error)
        crawler.signals.connect(guard.spider_opened, signal=signals.spider_opened)
        if networks:
            logger.info(
                "ALLOWED_NETWORKS: %(networks)s", {"networks": ", ".join(map(str, networks))}
            )
        return guard

    def spider_opened(self) -> None:
        """A bad ALLOWED_NETWORKS stops the crawl at start with one line (nothing is fetched
        meanwhile: every request is refused)."""
        if self.config_error:
            raise stop_crawl(logger, "ALLOWED_NETWORKS", self.config_error)

    async def process_request(self, request: Request) -> None:
        parts = urlparse_cached(request)
        if parts.scheme not in ("http", "https"):
            return  # only what the spider and redirects produce is checked
        host = parts.hostname or ""
        if self.config_error:
            self._refuse(f"ALLOWED_NETWORKS is unusable: {self.config_error}")
        try:
            why = self._verdicts[host]
        except KeyError:
            why = await self._verdict(host)
        if why is not None:
            self._refuse(why)

    async def _verdict(self, host: str) -> str | None:
        ip = literal_address(host)
        if ip is not None:
            why = self.policy.check(host, [ip])
        else:
            lookup = self._lookups.get(host)
            if lookup is None:
                lookup = self._lookups[host] = asyncio.ensure_future(self._look_up(host))
                lookup.add_done_callback(lambda _: self._lookups.pop(host, None))
            # Shielded: a cancelled request must not cancel the lookup others wait for.
            why = await asyncio.shield(lookup)
        if host not in self._verdicts:
            if len(self._verdicts) >= CACHE_SIZE:
                del self._verdicts[next(iter(self._verdicts))]
            self._verdicts[host] = why
            if why is not None:
                logger.warning("Refusing requests to %(host)s: %(why)s", {"host": host, "why": why})
        return why

    async def _look_up(self, host: str) -> str | None:
        try:
            addresses = await asyncio.to_thread(resolve, host)
        except (OSError, UnicodeError) as exc:
            # Not a refusal: the request fails as its download would have (and is retried
            # like it), and the host is looked up again next time.
            raise DNSLookupError(f"no results for hostname lookup: {host}") from exc
        self.crawler.stats.inc_value("ssrf/hosts_resolved")
        return self.policy.check(host, addresses)

    def _refuse(self, why: str) -> None:
        self.crawler.stats.inc_value("ssrf/refused")
        raise AddressRefused(why)
