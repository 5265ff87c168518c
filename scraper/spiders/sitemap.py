"""Reading a sitemap source (``-a sitemap=``): a sitemap, a sitemap index, or a
robots.txt whose ``Sitemap:`` lines name them. What to follow and what is a child is the
spider's to decide; this only reads what the response holds, or says why it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from scrapy.utils.gz import gunzip, gzip_magic_number
from scrapy.utils.sitemap import Sitemap, sitemap_urls_from_robots

from scraper.retry import describe

if TYPE_CHECKING:
    from scrapy.http import Response


@dataclass
class SitemapPage:
    """``kind`` "robots" (``locs`` are sitemaps), "sitemapindex" (sitemaps) or "urlset"
    (children), or None with ``error`` saying why it is unreadable."""

    kind: Literal["robots", "sitemapindex", "urlset"] | None
    locs: list[str | None] = field(default_factory=list)  # None: an entry without <loc>
    error: str | None = None


def read_sitemap(response: Response, max_size: int) -> SitemapPage:
    if urlsplit(response.url).path.endswith("/robots.txt"):
        # bytes: Scrapy 2.19 deprecates str here
        found = sitemap_urls_from_robots(response.body, base_url=response.url)
        return SitemapPage("robots", list(found))
    body = response.body
    if gzip_magic_number(response):
        try:
            body = gunzip(body, max_size=max_size)
        except Exception as exc:
            return SitemapPage(None, error=f"not a readable gzip file: {describe(exc)}")
    try:
        sitemap = Sitemap(body)
        locs = [entry.get("loc") for entry in sitemap]
    except Exception:
        sitemap, locs = None, []
    if sitemap is None or sitemap.type not in ("urlset", "sitemapindex"):
        return SitemapPage(None, error="not a sitemap (no <urlset> or <sitemapindex>)")
    return SitemapPage("urlset" if sitemap.type == "urlset" else "sitemapindex", locs)
