"""What one list page holds: its children, the list pages it points to, its navigation.

``read_list_page`` walks the page's links once, in document order, and sorts each into:

- pagination (see pagination.py): a candidate next page of one idiom, or another pager
  link (previous, first, last, a page number); never a child;
- navigation: a link in the page's own ``<nav>``, ``role="navigation"``, or a
  ``<header>``/``<footer>`` that is not part of an ``<article>``, ``<section>`` or
  ``<main>`` (WordPress puts each post's link in ``<article><header>``); skipped unless
  the crawl takes every link (``LISTING_CHILDREN = "all"``);
- a child: any other link to the same site.

Links are resolved as a browser resolves them: against the page's ``<base href>``, with
the query percent-encoded in the charset the HTTP header gives.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urljoin, urlsplit

from w3lib.encoding import http_content_type_encoding

from scraper.spiders import pagination
from scraper.spiders.pagination import Position
from scraper.urls import resolve

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.http import TextResponse

#: The idioms in the order they are looked for; explicit selectors replace them all.
IDIOMS = ("rel_next", "link_header", "next_element", "numbered", "more_button")
_MORE_ATTRS = ("data-next", "data-url", "data-href")
_MORE_WORDS = ("more", "load", "next", "show")
_CONTENT_TAGS = frozenset({"article", "section", "main"})


class Region(NamedTuple):
    """What an element is part of."""

    content: bool = False  # an <article>, <section> or <main>
    nav: bool = False      # the page's own navigation
    pager: bool = False    # a pager block (class or id "pagination", "pager", ...)


@dataclass
class ListPage:
    """The links of one list page, sorted."""

    url: str
    here: Position
    idiom: str | None = None
    #: The winning idiom's candidate next pages, in order, with their pager positions.
    next_pages: list[tuple[str, Position]] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    #: Links that look like pagination but gave nothing to follow ("Next" -> "#", a
    #: "2" taken as a child): named in the warning of a crawl that found one list page.
    suspects: list[str] = field(default_factory=list)


def base_url(root: Any, page_url: str) -> str:
    """The URL a page's relative links resolve against: its first ``<base href>``."""
    for base in root.iter("base"):
        href = (base.get("href") or "").strip()
        if href and urlsplit(urljoin(page_url, href)).scheme in ("http", "https"):
            return urljoin(page_url, href)
    return page_url


def _region(el: Any, memo: dict[Any, Region]) -> Region:
    """The region of ``el`` (itself included), climbing to the nearest known ancestor."""
    chain = []
    node = el
    while node is not None and node not in memo:
        chain.append(node)
        node = node.getparent()
    region = memo[node] if node is not None else Region()
    for node in reversed(chain):
        tag = node.tag if isinstance(node.tag, str) else ""
        nav = region.nav or tag == "nav" or node.get("role") == "navigation" or (
            tag in ("header", "footer") and not region.content)
        pager = region.pager or pagination.is_pager_block(node.get("class")) or \
            pagination.is_pager_block(node.get("id"))
        region = Region(region.content or tag in _CONTENT_TAGS, nav, pager)
        memo[node] = region
    return region


def _hint(el: Any) -> tuple[str | None, str | None]:
    """(idiom, None) for a link that says "next"; (None, "rel") for one that says
    previous, first or last by its rel, class or id; (None, "pager") for one whose text
    is a page number or a pager word; (None, None) otherwise."""
    rels = set((el.get("rel") or "").lower().split())
    if "next" in rels:
        return "rel_next", None
    ancestors = [el]  # the link, its parent, its grandparent: li.next > a, .next > span > a
    while len(ancestors) < 3 and (parent := ancestors[-1].getparent()) is not None:
        ancestors.append(parent)
    if any(pagination.says_next(n.get("class")) or pagination.says_next(n.get("id"))
           for n in ancestors) or pagination.label_says_next(el.get("aria-label")) or \
            pagination.label_says_next(el.get("title")):
        return "next_element", None
    kind = pagination.link_text_kind(el.text_content())
    if kind == "next":  # before "previous" classes: WordPress's .nav-previous says "Older posts"
        return "next_element", None
    if {"prev", "previous", "first", "last"} & rels or any(
            pagination.says_prev(n.get("class")) or pagination.says_prev(n.get("id"))
            for n in ancestors):
        return None, "rel"
    return None, kind


def _describe(el: Any) -> str:
    text = " ".join(el.text_content().split())[:30] or el.get("aria-label") or el.tag
    return f"{text!r} ({el.get('href') or el.get('onclick') or 'no href'})"


def read_list_page(
    response: TextResponse,
    *,
    strip: Callable[[str], str],
    detect: bool = True,
    next_hrefs: list[str] | None = None,
    child_hrefs: list[str] | None = None,
    nav_children: bool = False,
) -> ListPage:
    """Sort the links of a list page.

    ``detect``: look for the pagination idioms (off for pages of a URL template);
    ``next_hrefs``: the next pages an explicit ``next_css``/``next_xpath`` chose instead;
    ``child_hrefs``: the children a ``link_css``/``link_xpath`` chose, instead of every
    other link; ``nav_children``: navigation links are children too.
    """
    root = response.selector.root
    page = ListPage(response.url, pagination.position(response.url))
    site = urlsplit(response.url).hostname
    encoding = http_content_type_encoding(
        (response.headers.get(b"Content-Type") or b"").decode("latin-1")) or "utf-8"
    base = base_url(root, response.url)
    candidates: dict[str, list[tuple[str, Position]]] = {idiom: [] for idiom in IDIOMS}
    pager_urls: set[str] = set()
    children: list[str] = []
    memo: dict[Any, Region] = {}

    for el in root.iter("a", "link"):
        href = el.get("href")
        if el.tag == "link":  # <link rel="next"> in the head; never a child
            if "next" in (el.get("rel") or "").lower().split():
                url, _ = resolve(href, base, site, encoding)
                if url:
                    candidates["rel_next"].append((strip(url), Position("", 0)))
                    pager_urls.add(strip(url))
            continue
        url, reason = resolve(href, base, site, encoding)
        idiom, other = _hint(el)
        region = _region(el, memo)
        if url is None:
            if idiom or region.pager:
                page.suspects.append(_describe(el))
            page.skipped[reason] += 1
            continue
        url = strip(url)
        pos = pagination.position(url)
        if url == page.url or pos == page.here:
            page.skipped["self"] += 1
            continue
        same_listing = pos.key == page.here.key
        if idiom or other == "rel" or region.pager or (same_listing and other == "pager"):
            pager_urls.add(url)
            if idiom:
                candidates[idiom].append((url, pos))
            if same_listing:
                candidates["numbered"].append((url, pos))
            elif not idiom:
                page.suspects.append(_describe(el))  # in a pager, but no idiom we know
            page.skipped["pager"] += 1
            continue
        if other == "pager":
            page.suspects.append(_describe(el))  # "2" or "Last" to somewhere else
        if region.nav and not nav_children:
            page.skipped["nav"] += 1
            continue
        children.append(url)

    for el in root.xpath("//*[@data-next or @data-url or @data-href]"):
        value = next(v for v in (el.get(a) for a in _MORE_ATTRS) if v is not None)
        said = " ".join((el.get("class") or "", el.get("id") or "", el.text_content()[:60]))
        if el.get("data-next") is None and not any(w in said.lower() for w in _MORE_WORDS):
            continue
        url, _ = resolve(value, base, site, encoding)
        if url:
            url = strip(url)
            candidates["more_button"].append((url, pagination.position(url)))
            pager_urls.add(url)
        else:
            page.suspects.append(_describe(el))

    for href in pagination.link_header(response.headers.getlist(b"Link"), "next"):
        url, _ = resolve(href, response.url, site, encoding)
        if url:
            candidates["link_header"].append((strip(url), Position("", 0)))
            pager_urls.add(strip(url))

    if next_hrefs is not None:
        page.idiom = "explicit"
        for href in next_hrefs:
            url, _ = resolve(href, base, site, encoding)
            if url:
                url = strip(url)
                page.next_pages.append((url, pagination.position(url)))
                pager_urls.add(url)
    elif detect:
        for idiom in IDIOMS:
            if candidates[idiom]:
                page.idiom = idiom
                found = candidates[idiom]
                if idiom == "numbered":
                    found = sorted(found, key=lambda c: c[1].number)
                page.next_pages = [(url, pagination.position(url) if not pos.key else pos)
                                   for url, pos in found]
                break

    if child_hrefs is not None:  # chosen by link_css / link_xpath
        children = []
        for href in child_hrefs:
            url, reason = resolve(href, base, site, encoding)
            if url is None:
                page.skipped[reason] += 1
            elif (url := strip(url)) == page.url:
                page.skipped["self"] += 1
            else:
                children.append(url)
    # A URL that is pagination anywhere on the page is a list page, wherever else it is linked.
    page.children = [url for url in children if url not in pager_urls]
    if len(page.children) < len(children):
        page.skipped["pager"] += len(children) - len(page.children)
    return page
