"""List pages shaped like the sites users point the crawler at, one per pagination idiom.

Served by the test site under ``/shapes/<shape>/<n>x<per_page>/``: a listing of ``n``
children, ``per_page`` to a list page. Each is as messy as its real model: navigation
bars, tag clouds, feeds, ``#respond`` and ``?print=1`` links, tracking parameters,
products under several URLs, duplicate item links, relative links under ``<base href>``.

=============  ============================================================  ==============
shape          modelled on                                                   idiom
=============  ============================================================  ==============
``bookshop``   books.toscrape.com: ``li.next a``, relative ``page-N.html``   next_element
``blog``       a WordPress archive: ``<link rel=next>``, numbered pager      rel_next
``shop``       a Shopify collection: ``?page=N``, an arrow "→" as next link  next_element
``numbered``   a forum or catalogue: page numbers only, ``?pg=N``            numbered
``offsets``    a search page: page numbers only, ``?start=N`` (offsets)      numbered
``api``        an HTTP ``Link: <...>; rel="next"`` header with a cursor      link_header
``catalog``    ``<base href>``, protocol-relative links, an icon-only        next_element
               ``aria-label="Next page"`` link
``feed``       a "Load more" button with ``data-next`` and a cursor          more_button
``custom``     a pager nothing recognizes (``list-N``, a "Continue" link)    (none)
``sitemap``    a sitemap index, two sitemaps (one gzipped), pages and tags   (sitemap)
=============  ============================================================  ==============

``expected(shape, n, per_page)`` gives what a crawl must store and follow: every child
path once, every list page path.
"""

from __future__ import annotations

import functools
import gzip
import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable

SHAPES = (
    "bookshop",
    "blog",
    "shop",
    "numbered",
    "offsets",
    "api",
    "catalog",
    "feed",
    "custom",
    "sitemap",
)
IDIOM = {
    "bookshop": "next_element",
    "blog": "rel_next",
    "shop": "next_element",
    "numbered": "numbered",
    "offsets": "numbered",
    "api": "link_header",
    "catalog": "next_element",
    "feed": "more_button",
    "custom": None,
    "sitemap": None,
}
TAGS = ("crawl", "redis", "scrapy", "asyncio", "s3")
BOOKMARK = ' rel="bookmark"'
FEATURED = 3  # products shown on every page of the shop ("You may also like")


@dataclass(frozen=True)
class Expected:
    """What a crawl of one shaped listing must do (paths, from the site's root)."""

    start: str  # the list page a user gives as -a url (or -a sitemap)
    list_pages: set[str]  # every list page (sitemaps for the sitemap shape)
    children: set[str]  # every child, once


def root(shape: str, n: int, per_page: int) -> str:
    return f"/shapes/{shape}/{n}x{per_page}"


def _pages(n: int, per_page: int) -> int:
    return max(1, -(-n // per_page))


def _items(n: int, per_page: int, page: int) -> range:
    return range((page - 1) * per_page, min(n, page * per_page))


def expected(shape: str, n: int, per_page: int) -> Expected:
    r, last = root(shape, n, per_page), _pages(n, per_page)
    pages = range(1, last + 1)
    match shape:
        case "bookshop":
            return Expected(
                f"{r}/catalogue/page-1.html",
                {f"{r}/catalogue/page-{p}.html" for p in pages},
                {f"{r}/catalogue/book_{i}/index.html" for i in range(n)}
                | {f"{r}/catalogue/category/{t}_{k}/index.html" for k, t in enumerate(TAGS)}
                | {f"{r}/catalogue/category/books_1/index.html", f"{r}/index.html"},
            )
        case "blog":
            posts = {f"{r}/2024/05/post-{i}/" for i in range(n)}
            return Expected(
                f"{r}/",
                {f"{r}/"} | {f"{r}/page/{p}/" for p in pages if p > 1},
                posts
                | {f"{r}/2024/05/post-{i}/?print=1" for i in range(0, n, 10)}
                | {f"{r}/tag/{t}/" for t in TAGS}
                | {f"{r}/2024/05/", f"{r}/2024/04/"},
            )
        case "shop":
            return Expected(
                f"{r}/collections/all",
                {f"{r}/collections/all"}
                | {f"{r}/collections/all?page={p}" for p in pages if p > 1},
                {f"{r}/collections/all/products/p-{i}" for i in range(n)}
                | {f"{r}/products/p-{i}" for i in range(n)}
                | {f"{r}/products/p-{i}?variant=1" for i in range(0, n, 5)},
            )
        case "numbered" | "offsets":
            param, first = ("pg", 1) if shape == "numbered" else ("start", 0)
            return Expected(
                f"{r}/search",
                {f"{r}/search"}
                | {
                    f"{r}/search?{param}={_number(shape, p, per_page)}"
                    for p in pages
                    if _number(shape, p, per_page) != first
                },
                {f"{r}/item/{i}" for i in range(n)} | {f"{r}/", f"{r}/help"},
            )
        case "api":
            return Expected(
                f"{r}/items",
                {f"{r}/items"} | {f"{r}/items?cursor={_cursor(p)}" for p in pages if p > 1},
                {f"{r}/items/{i}" for i in range(n)},
            )
        case "catalog":
            return Expected(
                f"{r}/list",
                {f"{r}/list"} | {f"{r}/list?start={(p - 1) * per_page}" for p in pages if p > 1},
                {f"{r}/catalog/v2/item/{i}.html" for i in range(n)} | {f"{r}/"},
            )
        case "feed":
            return Expected(
                f"{r}/feed",
                {f"{r}/feed"} | {f"{r}/feed?after={_cursor(p)}" for p in pages if p > 1},
                {f"{r}/story/{i}" for i in range(n)},
            )
        case "custom":
            return Expected(
                f"{r}/list-1",
                {f"{r}/list-{p}" for p in pages},
                {f"{r}/entry/{i}" for i in range(n)},
            )
        case "sitemap":
            return Expected(
                f"{r}/sitemap_index.xml",
                {f"{r}/sitemap_index.xml", f"{r}/sitemap-docs.xml", f"{r}/sitemap-tags.xml.gz"},
                {f"{r}/doc/{i}" for i in range(n)} | {f"{r}/tag/{t}" for t in TAGS},
            )
    raise ValueError(f"no such shape: {shape}")


def _number(shape: str, page: int, per_page: int) -> int:
    return page if shape == "numbered" else (page - 1) * per_page


def _cursor(page: int) -> str:
    """An opaque cursor (no page number in it, as real APIs do it)."""
    return "".join("abcdefghij"[int(d)] for d in str(page * 7919))


def _cursor_page(cursor: str | None, n: int, per_page: int) -> int:
    """The page a cursor names (no cursor: the first); 404 for any other cursor."""
    if cursor is None:
        return 1
    try:
        value = int("".join(str("abcdefghij".index(c)) for c in cursor))
    except ValueError:
        raise web.HTTPNotFound() from None
    if value % 7919 or not 1 <= value // 7919 <= _pages(n, per_page):
        raise web.HTTPNotFound()
    return value // 7919


def _doc(title: str, body: str, head: str = "") -> web.Response:
    return web.Response(
        text=f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"{head}</head>\n<body>\n{body}\n</body></html>\n",
        content_type="text/html",
    )


def _a(href: str, text: str, attrs: str = "") -> str:
    return f'<a href="{html.escape(href)}"{attrs}>{html.escape(text)}</a>'


def _bookshop(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
    if not (rest.startswith("catalogue/page-") and rest.endswith(".html")):
        return "child"
    page, last = int(rest[len("catalogue/page-") : -5]), _pages(n, pp)
    if not 1 <= page <= last:
        raise web.HTTPNotFound()
    pods = "\n".join(
        f'<li class="col-xs-6"><article class="product_pod"><div class="image_container">'
        f'<a href="book_{i}/index.html"><img src="../media/{i}.jpg" alt="Book {i}"></a></div>'
        f'<h3><a href="book_{i}/index.html" title="Book {i}">Book {i}</a></h3>'
        f'<p class="price_color">£{10 + i % 40}.99</p></article></li>'
        for i in _items(n, pp, page)
    )
    cats = "".join(
        f"<li>{_a(f'category/{t}_{k}/index.html', t.title())}</li>" for k, t in enumerate(TAGS)
    )
    pager = [f'<li class="current">Page {page} of {last}</li>']
    if page > 1:
        pager.insert(0, f'<li class="previous">{_a(f"page-{page - 1}.html", "previous")}</li>')
    if page < last:
        pager.append(f'<li class="next">{_a(f"page-{page + 1}.html", "next")}</li>')
    return _doc(
        f"All products | Books to Scrape - Sandbox (page {page})",
        f'<header class="header"><div class="page_inner">'
        f"{_a(f'{r}/index.html', 'Books to Scrape')}</div></header>"
        f'<ul class="breadcrumb"><li>{_a("../index.html", "Home")}</li>'
        f'<li class="active">All products</li></ul>'
        f'<aside class="sidebar"><div class="side_categories"><ul class="nav nav-list">'
        f"<li>{_a('category/books_1/index.html', 'Books')}<ul>{cats}</ul></li></ul></div>"
        f'</aside><section><ol class="row">\n{pods}\n</ol>'
        f'<div><ul class="pager">{"".join(pager)}</ul></div></section>',
    )


def _blog(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
    last = _pages(n, pp)
    if rest == "":
        page = 1
    elif rest.startswith("page/") and rest[5:].rstrip("/").isdigit():
        page = int(rest[5:].rstrip("/"))
        if not 2 <= page <= last:
            raise web.HTTPNotFound()
    else:
        return "child"

    def url(p: int) -> str:
        return f"{r}/" if p == 1 else f"{r}/page/{p}/"

    head = f'<link rel="alternate" type="application/rss+xml" href="{r}/feed/">'
    if page < last:
        head += f'<link rel="next" href="{url(page + 1)}">'
    if page > 1:
        head += f'<link rel="prev" href="{url(page - 1)}">'
    posts = "\n".join(
        f'<article class="post type-post"><header class="entry-header"><h2 class="entry-title">'
        f"{_a(f'{r}/2024/05/post-{i}/', f'Post {i}', BOOKMARK)}</h2></header>"
        f'<div class="entry-summary"><p>Summary of post {i}.</p>'
        f"{_a(f'{r}/2024/05/post-{i}/#respond', 'Leave a comment')}"
        + (f" {_a(f'{r}/2024/05/post-{i}/?print=1', 'Print')}" if i % 10 == 0 else "")
        + "</div></article>"
        for i in _items(n, pp, page)
    )
    # WordPress's numbered pager: 1 2 3 ... last, with "Older posts"/"Newer posts" beside.
    shown = sorted({1, 2, 3, page - 1, page, page + 1, last} & set(range(1, last + 1)))
    numbers: list[tuple[str, str]] = []
    for p in shown:
        if numbers and p > int(numbers[-1][1]) + 1:
            numbers.append(("dots", "…"))
        numbers.append(("current" if p == page else url(p), str(p)))
    pager = "".join(
        f'<span class="page-numbers {kind}">{text}</span>'
        if kind in ("dots", "current")
        else _a(kind, text, ' class="page-numbers"')
        for kind, text in numbers
    )
    if page < last:
        pager += _a(url(page + 1), "Next", ' class="next page-numbers"')
    tags = "".join(
        _a(f"{r}/tag/{t}/", t, f' class="tag-cloud-link tag-link-{k}"') for k, t in enumerate(TAGS)
    )
    recent = "".join(
        f"<li>{_a(f'{r}/2024/05/post-{i}/', f'Post {i}')}</li>" for i in range(min(n, 3))
    )
    return _doc(
        f"Blog - Page {page}",
        f'<header id="masthead" class="site-header"><nav class="main-navigation">'
        f"{_a(f'{r}/', 'Home')} {_a(f'{r}/about/', 'About')} {_a(f'{r}/feed/', 'RSS')}"
        f'</nav></header>\n<main id="main" class="site-main">\n{posts}\n'
        f'<nav class="navigation pagination" aria-label="Posts"><div class="nav-links">'
        f"{pager}</div></nav></main>\n"
        f'<aside id="secondary" class="widget-area">'
        f'<section class="widget widget_recent_entries"><ul>{recent}</ul></section>'
        f'<section class="widget widget_tag_cloud"><div class="tagcloud">{tags}</div></section>'
        f'<section class="widget widget_archive"><ul><li>{_a(f"{r}/2024/05/", "May 2024")}'
        f"</li><li>{_a(f'{r}/2024/04/', 'April 2024')}</li></ul></section></aside>\n"
        f'<footer id="colophon">{_a(f"{r}/privacy-policy/", "Privacy Policy")} '
        f"{_a('https://wordpress.org/', 'Proudly powered by WordPress')}</footer>",
        head,
    )


def _shop(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
    if rest != "collections/all":
        return "child"
    last = _pages(n, pp)
    page = int(q.get("page", "1")) if q.get("page", "1").isdigit() else 0
    if not 1 <= page <= last:
        raise web.HTTPNotFound()
    cards = "\n".join(
        f'<li class="grid__item"><div class="card-wrapper">'
        f"{_a(f'{r}/products/p-{i}?utm_source=collection&utm_medium=grid', '')}"
        f'<div class="card__content"><h3 class="card__heading">'
        f"{_a(f'{r}/collections/all/products/p-{i}', f'Product {i}')}</h3>"
        + (_a(f"{r}/products/p-{i}?variant=1", "Quick view") if i % 5 == 0 else "")
        + "</div></div></li>"
        for i in _items(n, pp, page)
    )
    featured = "".join(
        f"<li>{_a(f'{r}/products/p-{i}', f'Product {i}')}</li>" for i in range(min(n, FEATURED))
    )
    pager = []
    if page > 1:
        pager.append(_a(f"{r}/collections/all?page={page - 1}", "←"))
    pager += [
        f"<span>{p}</span>" if p == page else _a(f"{r}/collections/all?page={p}", str(p))
        for p in range(1, last + 1)
    ]
    if page < last:
        pager.append(_a(f"{r}/collections/all?page={page + 1}", "→"))
    return _doc(
        "All products - Shop",
        f'<header class="header"><nav class="header__inline-menu">'
        f"{_a(f'{r}/', 'Home')} {_a(f'{r}/collections/all', 'Catalog')} "
        f'{_a(f"{r}/cart", "Cart")}</nav></header>\n<main id="MainContent">\n'
        f'<ul id="product-grid" class="grid">\n{cards}\n</ul>\n'
        f'<div class="pagination-wrapper"><div class="pagination__list">{" ".join(pager)}'
        f'</div></div>\n<section class="related-products"><h2>You may also like</h2>'
        f"<ul>{featured}</ul></section></main>\n"
        f"<footer>{_a(f'{r}/pages/contact', 'Contact')} "
        f"{_a(f'{r}/policies/refund-policy', 'Refunds')}</footer>",
    )


def _numbered(shape: str) -> Callable[..., web.Response | str]:
    param, first = ("pg", 1) if shape == "numbered" else ("start", 0)

    def render(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
        if rest != "search":
            return "child"
        last = _pages(n, pp)
        value = q.get(param, str(first))
        if not value.isdigit():
            raise web.HTTPNotFound()
        page = int(value) if shape == "numbered" else int(value) // pp + 1
        if not 1 <= page <= last or _number(shape, page, pp) != int(value):
            raise web.HTTPNotFound()

        def url(p: int) -> str:
            number = _number(shape, p, pp)
            return f"{r}/search" if number == first else f"{r}/search?{param}={number}"

        rows = "\n".join(
            f"<tr><td>{i}</td><td>{_a(f'{r}/item/{i}', f'Result {i}')}</td></tr>"
            for i in _items(n, pp, page)
        )
        window = sorted({1, last} | set(range(max(1, page - 2), min(last, page + 2) + 1)))
        numbers = " ".join(f"<b>{p}</b>" if p == page else _a(url(p), str(p)) for p in window)
        return _doc(
            f"Results, page {page}",
            f'<div class="menu">{_a(f"{r}/", "Home")} | {_a(f"{r}/help", "Help")}</div>'
            f"<table>\n{rows}\n</table>\n<p>Pages: {numbers}</p>",
        )

    return render


def _api(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
    if rest != "items":
        return "child"
    page, last = _cursor_page(q.get("cursor"), n, pp), _pages(n, pp)
    links = [f'<{r}/items>; rel="first"']
    if page < last:
        links.insert(0, f'<{r}/items?cursor={_cursor(page + 1)}>; rel="next"')
    rows = "\n".join(f"<li>{_a(f'{r}/items/{i}', f'Item {i}')}</li>" for i in _items(n, pp, page))
    response = _doc(f"Items {page}", f"<ul>\n{rows}\n</ul>")
    response.headers["Link"] = ", ".join(links)
    return response


def _catalog(
    r: str, n: int, pp: int, rest: str, q: dict[str, str], host: str
) -> web.Response | str:
    if rest != "list":
        return "child"
    last = _pages(n, pp)
    start = q.get("start", "0")
    if not start.isdigit() or int(start) % pp or not 0 <= int(start) // pp < last:
        raise web.HTTPNotFound()
    page = int(start) // pp + 1
    # Relative to <base href="{r}/catalog/v2/">; every third protocol-relative.
    hrefs = {
        i: f"//{host}{r}/catalog/v2/item/{i}.html" if i % 3 == 0 else f"item/{i}.html"
        for i in _items(n, pp, page)
    }
    items = "\n".join(f"<li>{_a(href, f'Item {i}')}</li>" for i, href in hrefs.items())
    nav = ""
    if page < last:
        nav = (
            f'<a href="../../list?start={page * pp}" aria-label="Next page" class="btn">'
            f'<svg viewBox="0 0 8 8"><path d="M2 0l4 4-4 4"/></svg></a>'
        )
    return _doc(
        f"Catalogue {page}",
        f'<div id="top">{_a("../../", "Catalogue home")}</div>'
        f"<ul>\n{items}\n</ul>\n<div>{nav}</div>",
        f'<base href="{r}/catalog/v2/">',
    )


def _feed(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
    if rest != "feed":
        return "child"
    page, last = _cursor_page(q.get("after"), n, pp), _pages(n, pp)
    stories = "\n".join(
        f'<div class="story">{_a(f"{r}/story/{i}", f"Story {i}")}</div>'
        for i in _items(n, pp, page)
    )
    more = ""
    if page < last:
        more = (
            f'<button class="btn load-more" data-next="{r}/feed?after={_cursor(page + 1)}"'
            f' onclick="loadMore(this)">Load more</button>'
        )
    return _doc(f"Feed {page}", f'<div id="stories">\n{stories}\n</div>{more}')


def _custom(r: str, n: int, pp: int, rest: str, q: dict[str, str]) -> web.Response | str:
    if not (rest.startswith("list-") and rest[5:].isdigit()):
        return "child"
    page, last = int(rest[5:]), _pages(n, pp)
    if not 1 <= page <= last:
        raise web.HTTPNotFound()
    entries = "\n".join(
        f"<dt>{_a(f'{r}/entry/{i}', f'Entry {i}')}</dt>" for i in _items(n, pp, page)
    )
    pager = " ".join(
        f"<em>{p}</em>" if p == page else _a(f"list-{p}", str(p)) for p in range(1, last + 1)
    )
    cont = _a(f"list-{page + 1}", "Continue", ' class="cta"') if page < last else ""
    return _doc(
        f"Entries {page}",
        f'<dl>\n{entries}\n</dl><div class="pagination">{pager}</div><p class="more">{cont}</p>',
    )


def _sitemap(
    r: str, n: int, pp: int, rest: str, q: dict[str, str], host: str
) -> web.Response | str:
    base = f"http://{host}{r}"
    urlset = '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{}</urlset>'
    match rest:
        case "sitemap_index.xml":
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n<sitemapindex xmlns="http://www.'
                'sitemaps.org/schemas/sitemap/0.9">'
                f"<sitemap><loc>{base}/sitemap-docs.xml</loc></sitemap>"
                f"<sitemap><loc>{base}/sitemap-tags.xml.gz</loc></sitemap></sitemapindex>"
            )
            return web.Response(text=body, content_type="application/xml")
        case "sitemap-docs.xml":
            locs = "".join(
                f"<url><loc>{base}/doc/{i}</loc><lastmod>2024-05-01</lastmod></url>"
                for i in range(n)
            )
            return web.Response(
                text='<?xml version="1.0"?>\n' + urlset.format(locs), content_type="application/xml"
            )
        case "sitemap-tags.xml.gz":
            locs = "".join(f"<url><loc>{base}/tag/{t}</loc></url>" for t in TAGS)
            return web.Response(
                body=gzip.compress(urlset.format(locs).encode()), content_type="application/x-gzip"
            )
    return "child"


_RENDER: dict[str, Callable[..., web.Response | str]] = {
    "bookshop": _bookshop,
    "blog": _blog,
    "shop": _shop,
    "numbered": _numbered("numbered"),
    "offsets": _numbered("offsets"),
    "api": _api,
    "feed": _feed,
    "custom": _custom,
}


def canonical_of(path: str) -> str | None:
    """The canonical path a shaped child page declares, if any (shop products, blog posts'
    print versions)."""
    if "/products/p-" in path:
        head, _, tail = path.partition("/products/")
        return f"{head.removesuffix('/collections/all')}/products/{tail.split('?')[0]}"
    if path.endswith("/?print=1"):
        return path.removesuffix("?print=1")
    return None


@functools.lru_cache(maxsize=64)
def _children(shape: str, n: int, per_page: int) -> frozenset[str]:
    return frozenset(expected(shape, n, per_page).children)


async def handle(request: web.Request, render_child: Callable[..., bytes]) -> web.Response:
    """``/shapes/<shape>/<n>x<per_page>/<rest>``: a shaped list page, one of its children
    (a page named by its path), or 404: a link resolved wrongly finds nothing."""
    shape, size, rest = (
        request.match_info["shape"],
        request.match_info["size"],
        request.match_info["rest"],
    )
    try:
        n, pp = (int(x) for x in size.split("x"))
    except ValueError:
        raise web.HTTPNotFound(text="size must be <n>x<per_page>") from None
    if shape not in SHAPES or pp < 1:
        raise web.HTTPNotFound(text=f"shapes: {', '.join(SHAPES)}")
    r, q = root(shape, n, pp), dict(request.query)
    if shape in ("catalog", "sitemap"):
        out = (_catalog if shape == "catalog" else _sitemap)(r, n, pp, rest, q, request.host)
    else:
        out = _RENDER[shape](r, n, pp, rest, q)
    if isinstance(out, web.Response):
        return out
    path = request.path_qs
    if path not in _children(shape, n, pp):
        raise web.HTTPNotFound(text="not a page of this listing")
    return web.Response(
        body=render_child(path, canonical=canonical_of(path)),
        content_type="text/html",
        charset="utf-8",
    )
