"""A page's canonical URL, and one body per canonical URL when the crawl asks for it.

Every child record gets ``canonical_url``: the page's ``<link rel="canonical">`` (or
``Link: <...>; rel="canonical"``), made absolute. A shop lists one product under
``/products/x``, ``/products/x?variant=1`` and ``/collections/all/products/x``; all three
pages say their canonical URL is ``/products/x``. With ``DEDUP_CANONICAL = True``, the
first child stored with a canonical URL keeps its body; every later one ends as a record
with ``duplicate_of`` (the first one's fingerprint) and no body of its own. Which one is
first is decided atomically: in memory on one node, in Redis (``<spider>:canonical``,
HSETNX) when the crawl is distributed, so nodes agree.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urldefrag, urljoin

from itemadapter import ItemAdapter
from scrapy.exceptions import NotConfigured

from scraper.distributed.connection import connect, redis_target
from scraper.distributed.keys import Keys
from scraper.spiders.pagination import link_header

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from scraper.distributed.connection import AnyRedis, RedisTarget

logger = logging.getLogger(__name__)

_LINK_TAG = re.compile(rb"<link\b[^>]*>|</head\s*>|<body\b", re.IGNORECASE)
_REL = re.compile(rb"""\brel\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)
_HREF = re.compile(rb"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.IGNORECASE)


def _attr(pattern: re.Pattern[bytes], tag: bytes) -> bytes | None:
    match = pattern.search(tag)
    return next((g for g in match.groups() if g is not None), None) if match else None


def canonical_url(response: Response) -> str | None:
    """The canonical URL a page declares, absolute, or None. Read with a regex over the
    head (at most 64 KiB): a full HTML parse of every child would cost more than the fetch."""
    href: bytes | str | None = None
    for match in _LINK_TAG.finditer(response.body, 0, 65536):
        tag = match.group()
        if not tag.lower().startswith(b"<link"):
            break  # the head has ended
        rel = _attr(_REL, tag)
        if rel and b"canonical" in rel.lower().split():
            href = _attr(_HREF, tag)
            break
    if href is None:
        found = link_header(response.headers.getlist(b"Link"), "canonical")
        href = found[0] if found else None
    if not href:
        return None
    text = href.decode("utf-8", "replace") if isinstance(href, bytes) else href
    url = urldefrag(urljoin(response.url, text.strip())).url
    return url if url.startswith(("http://", "https://")) else None


class Canonicals(Protocol):
    async def claim(self, canonical: str, fingerprint: str) -> str:
        """The fingerprint that holds ``canonical``: ``fingerprint`` if it is the first."""
        ...

    async def close(self) -> None: ...


class LocalCanonicals:
    """One node's claims, in memory."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    async def claim(self, canonical: str, fingerprint: str) -> str:
        return self.owners.setdefault(canonical, fingerprint)

    async def close(self) -> None:
        self.owners.clear()


class RedisCanonicals:
    """Claims shared by every node of a distributed crawl: ``<spider>:canonical``."""

    def __init__(self, redis: AnyRedis, key: str) -> None:
        self.redis = redis
        self.key = key

    async def claim(self, canonical: str, fingerprint: str) -> str:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(self.key, canonical, fingerprint)
            pipe.hget(self.key, canonical)
            _, owner = await pipe.execute()
        return owner.decode() if isinstance(owner, bytes) else str(owner)

    async def close(self) -> None:
        await self.redis.aclose()


class CanonicalDedupPipeline:
    """With ``DEDUP_CANONICAL``: a child whose canonical URL is already stored keeps its
    record, marked ``duplicate_of``, but not its body. Runs before the body store."""

    def __init__(self, crawler: Crawler, target: RedisTarget | None) -> None:
        self.crawler = crawler
        self.target = target
        self.canonicals: Canonicals = LocalCanonicals()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        if not crawler.settings.getbool("DEDUP_CANONICAL"):
            raise NotConfigured  # off by default: no warning for what was not asked for
        return cls(crawler, redis_target(crawler.settings))

    async def open_spider(self) -> None:
        if self.target is not None:
            spider = self.crawler.spider
            assert spider is not None
            self.canonicals = RedisCanonicals(
                connect(self.target), Keys.of(spider.name, 0, self.target.cluster).canonical
            )

    async def close_spider(self) -> None:
        await self.canonicals.close()

    async def process_item(self, item: Any) -> Any:
        adapter = ItemAdapter(item)
        canonical, fingerprint = adapter.get("canonical_url"), adapter.get("fingerprint")
        if not canonical or not fingerprint or adapter.get("body") is None:
            return item  # no canonical URL, no body (LinkedRecords: neither)
        owner = await self.canonicals.claim(canonical, fingerprint)
        if owner != fingerprint:
            adapter["duplicate_of"] = owner
            adapter["body"] = None
            assert self.crawler.stats is not None
            self.crawler.stats.inc_value("listing/canonical_duplicates")
        return item
