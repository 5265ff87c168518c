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
    nav: bool = False  # the page's own navigation
    pager: bool = False  # a pager block (class or id "pagination", "pager", ...)


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
        href = str(base.get("href") or "").strip()
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
        nav = (
            region.nav
            or tag == "nav"
            or node.get("role") == "navigation"
            or (tag in ("header", "footer") and not region.content)
        )
        pager = (
            region.pager
            or pagination.is_pager_block(node.get("class"))
            or pagination.is_pager_block(node.get("id"))
        )
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
    if (
        any(
            pagination.says_next(n.get("class")) or pagination.says_next(n.get("id"))
            for n in ancestors
        )
        or pagination.label_says_next(el.get("aria-label"))
        or pagination.label_says_next(el.get("title"))
    ):
        return "next_element", None
    kind = pagination.link_text_kind(el.text_content())
    if kind == "next":  # before "previous" classes: WordPress's .nav-previous says "Older posts"
        return "next_element", None
    if {"prev", "previous", "first", "last"} & rels or any(
        pagination.says_prev(n.get("class")) or pagination.says_prev(n.get("id")) for n in ancestors
    ):
        return None, "rel"
    return None, kind


def _describe(el: Any) -> str:
    text = " ".join(el.text_content().split())[:30] or el.get("aria-label") or el.tag
    return f"{text!r} ({el.get('href') or el.get('onclick') or 'no href'})"


class _Reader:
    """One pass over one list page's links; see ``read_list_page``."""

    def __init__(
        self,
        response: TextResponse,
        strip: Callable[[str], str],
        nav_children: bool,
        take_children: bool,
    ) -> None:
        self.response = response
        self.strip = strip
        self.nav_children = nav_children
        self.take_children = take_children  # False: a link_css/link_xpath chooses them
        self.root = response.selector.root
        self.page = ListPage(response.url, pagination.position(response.url))
        # A link can be a page of this listing only if it starts like its key (the key is
        # the URL with the page number taken out): the others need no position.
        key = urlsplit(self.page.here.key)
        self.listing_prefix = f"{key.scheme}://{key.netloc}{key.path.rstrip('/')}"
        self.site = urlsplit(response.url).hostname
        self.encoding = (
            http_content_type_encoding(
                (response.headers.get(b"Content-Type") or b"").decode("latin-1")
            )
            or "utf-8"
        )
        self.base = base_url(self.root, response.url)
        self.candidates: dict[str, list[tuple[str, Position]]] = {i: [] for i in IDIOMS}
        self.pager_urls: set[str] = set()
        self.children: list[str] = []
        self.regions: dict[Any, Region] = {}

    def resolve(self, href: str | None, base: str | None = None) -> tuple[str | None, str]:
        url, reason = resolve(href, base or self.base, self.site, self.encoding)
        return (self.strip(url) if url else None), reason

    def pager(self, url: str, idiom: str | None = None, pos: Position | None = None) -> None:
        self.pager_urls.add(url)
        if idiom:
            self.candidates[idiom].append((url, pos or pagination.position(url)))

    def skip(self, reason: str) -> None:
        if self.take_children:
            self.page.skipped[reason] += 1

    def links(self) -> None:
        """Every <a> and <link>, in document order: pagination, navigation, or a child."""
        page = self.page
        for el in self.root.iter("a", "link"):
            if el.tag == "link":  # <link rel="next"> in the head; never a child
                if "next" in (el.get("rel") or "").lower().split():
                    url, _ = self.resolve(el.get("href"))
                    if url:
                        self.pager(url, "rel_next")
                continue
            url, reason = self.resolve(el.get("href"))
            idiom, other = _hint(el)
            region = _region(el, self.regions)
            if url is None:
                if idiom or region.pager:
                    page.suspects.append(_describe(el))
                self.skip(reason)
                continue
            pos = pagination.position(url) if url.startswith(self.listing_prefix) else None
            if url == page.url or pos == page.here:
                self.skip("self")
                continue
            same_listing = pos is not None and pos.key == page.here.key
            if idiom or other == "rel" or region.pager or (same_listing and other == "pager"):
                self.pager(url, idiom, pos)
                if same_listing and pos is not None:
                    self.candidates["numbered"].append((url, pos))
                elif not idiom:
                    page.suspects.append(_describe(el))  # in a pager, but no idiom we know
                self.skip("pager")
                continue
            if other == "pager":
                page.suspects.append(_describe(el))  # "2" or "Last" to somewhere else
            if region.nav and not self.nav_children:
                self.skip("nav")
            elif self.take_children:
                self.children.append(url)

    def more_buttons(self) -> None:
        """ "Load more" buttons and links with the next URL in a data attribute."""
        for el in self.root.xpath("//*[@data-next or @data-url or @data-href]"):
            value = next(v for v in (el.get(a) for a in _MORE_ATTRS) if v is not None)
            said = " ".join((el.get("class") or "", el.get("id") or "", el.text_content()[:60]))
            if el.get("data-next") is None and not any(w in said.lower() for w in _MORE_WORDS):
                continue
            url, _ = self.resolve(value)
            if url:
                self.pager(url, "more_button")
            else:
                self.page.suspects.append(_describe(el))

    def link_header(self) -> None:
        for href in pagination.link_header(self.response.headers.getlist(b"Link"), "next"):
            url, _ = self.resolve(href, base=self.response.url)  # relative to the request
            if url:
                self.pager(url, "link_header")

    def choose(self) -> None:
        """The next pages: those of the first idiom found."""
        for idiom in IDIOMS:
            if self.candidates[idiom]:
                self.page.idiom = idiom
                found = self.candidates[idiom]
                if idiom == "numbered":
                    found = sorted(found, key=lambda c: c[1].number)
                self.page.next_pages = found
                return

    def explicit(self, name: str, hrefs: list[str]) -> None:
        """The next pages a ``next_css``/``next_xpath`` chose."""
        self.page.idiom = name
        for href in hrefs:
            url, _ = self.resolve(href)
            if url:
                self.pager(url)
                self.page.next_pages.append((url, pagination.position(url)))

    def chosen_children(self, hrefs: list[str]) -> None:
        """The children a ``link_css``/``link_xpath`` chose."""
        for href in hrefs:
            url, reason = self.resolve(href)
            if url is None:
                self.page.skipped[reason] += 1
            elif url == self.page.url:
                self.page.skipped["self"] += 1
            else:
                self.children.append(url)


def read_list_page(
    response: TextResponse,
    *,
    strip: Callable[[str], str],
    detect: bool = True,
    explicit: tuple[str, list[str]] | None = None,
    child_hrefs: list[str] | None = None,
    nav_children: bool = False,
) -> ListPage:
    """Sort the links of a list page.

    ``strip``: what a discovered URL goes through (tracking parameters removed);
    ``detect``: look for the pagination idioms (off for the pages of a URL template);
    ``explicit``: ``("next_css", hrefs)``: the next pages an option chose instead;
    ``child_hrefs``: the children a ``link_css``/``link_xpath`` chose, instead of every
    other link; ``nav_children``: navigation links are children too.
    """
    reader = _Reader(response, strip, nav_children, take_children=child_hrefs is None)
    reader.links()
    reader.more_buttons()
    reader.link_header()
    if explicit is not None:
        reader.explicit(*explicit)
    elif detect:
        reader.choose()
    if child_hrefs is not None:
        reader.chosen_children(child_hrefs)
    page = reader.page
    # A URL that is pagination anywhere on the page is a list page, wherever else it is linked.
    page.children = [url for url in reader.children if url not in reader.pager_urls]
    if len(page.children) < len(reader.children):
        page.skipped["pager"] += len(reader.children) - len(page.children)
    return page
