"""Pagination detection, offline: each idiom in the shapes real themes write it, in order."""
# ruff: noqa: RUF001 - the arrows are what is tested

from __future__ import annotations

import pytest
from scrapy import Request
from scrapy.http import HtmlResponse

from scraper.spiders.listpage import read_list_page
from scraper.spiders.pagination import FIRST, link_text_kind, position
from scraper.urls import TRACKING_PARAMS, ParamStripper, expand_template, resolve

PAGE = "http://site.test/shop/list"
strip = ParamStripper(TRACKING_PARAMS)


def read(
    body: str,
    url: str = PAGE,
    headers: dict[str, str] | None = None,
    encoding: str = "utf-8",
    **kw: object,
):
    response = HtmlResponse(
        url,
        body=f"<html><body>{body}</body></html>".encode(encoding),
        headers={"Content-Type": "text/html", **(headers or {})},
        request=Request(url),
    )
    return read_list_page(response, strip=strip, **kw)  # type: ignore[arg-type]


def followed(page) -> list[str]:
    return [url for url, _ in page.next_pages]


@pytest.mark.parametrize(
    ("html", "idiom", "next_url"),
    [
        ('<a rel="next" href="?page=2">2</a>', "rel_next", PAGE + "?page=2"),
        ('<a rel="nofollow next" href="/shop/list/2">more</a>', "rel_next", PAGE + "/2"),
        (
            '<ul class="pager"><li class="next"><a href="page-2.html">next</a></li></ul>',
            "next_element",
            "http://site.test/shop/page-2.html",
        ),
        (
            '<a class="next page-numbers" href="/shop/list/page/2/">Next</a>',
            "next_element",
            PAGE + "/page/2/",
        ),
        (
            '<div class="pagination"><span class="next"><a href="/p2">x</a></span></div>',
            "next_element",
            "http://site.test/p2",
        ),
        (
            '<a aria-label="Go to next page" href="/p2"><svg></svg></a>',
            "next_element",
            "http://site.test/p2",
        ),
        (
            '<a href="/p2" title="Next page"><img src="arrow.png"></a>',
            "next_element",
            "http://site.test/p2",
        ),
        ('<a href="/p2">Older posts</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">Next&nbsp;&raquo;</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2"> › </a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">→</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">Suivant</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">Weiter</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">Siguiente »</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">下一页</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">次へ</a>', "next_element", "http://site.test/p2"),
        ('<a href="/p2">Следующая</a>', "next_element", "http://site.test/p2"),
        ('<p>1 <a href="?pg=2">2</a> <a href="?pg=3">3</a></p>', "numbered", PAGE + "?pg=2"),
        ('<a href="?start=20">2</a>', "numbered", PAGE + "?start=20"),
        ('<a href="?offset=50">2</a>', "numbered", PAGE + "?offset=50"),
        ('<a href="/shop/list/page/3/">3</a>', "numbered", PAGE + "/page/3/"),
        (
            '<button class="load-more" data-next="/shop/list?cursor=x">Load more</button>',
            "more_button",
            PAGE + "?cursor=x",
        ),
        (
            '<a href="#" class="js-more" data-url="/more?after=9">Show more</a>',
            "more_button",
            "http://site.test/more?after=9",
        ),
    ],
)
def test_each_idiom_is_found(html: str, idiom: str, next_url: str) -> None:
    page = read(html)
    assert page.idiom == idiom
    assert followed(page)[0] == next_url
    assert next_url not in page.children


def test_link_rel_next_in_the_head_and_the_link_header() -> None:
    response = HtmlResponse(
        PAGE,
        request=Request(PAGE),
        headers={"Link": '<https://site.test/x?c=2>; rel="next"'},
        body=b'<html><head><link rel="next" href="/shop/list?page=2"></head><body></body>',
    )
    page = read_list_page(response, strip=strip)
    assert (page.idiom, followed(page)) == ("rel_next", [PAGE + "?page=2"])
    page = read("", headers={"Link": '<https://site.test/x?c=2>; rel="next", </a>; rel=last'})
    assert (page.idiom, followed(page)) == ("link_header", ["https://site.test/x?c=2"])


def test_the_first_idiom_found_wins_and_the_other_pager_links_are_not_children() -> None:
    page = read(
        '<div class="nav-links"><a class="page-numbers" href="?page=2">2</a>'
        '<a class="page-numbers" href="?page=20">20</a>'
        '<a class="next page-numbers" href="?page=2">Next</a></div>'
        '<a rel="next" href="?page=2">more</a><article><a href="/item/1">1</a></article>'
    )
    assert (page.idiom, followed(page)) == ("rel_next", [PAGE + "?page=2"])
    assert page.children == ["http://site.test/item/1"]
    assert page.skipped["pager"] == 4


def test_wordpress_older_and_newer_posts() -> None:
    """.nav-previous says "Older posts" (the next page), .nav-next "Newer posts" (back)."""
    page = read(
        '<div class="nav-previous"><a href="/blog/page/3/">Older posts</a></div>'
        '<div class="nav-next"><a href="/blog/">Newer posts</a></div>',
        url="http://site.test/blog/page/2/",
    )
    assert page.idiom == "next_element"
    assert set(followed(page)) == {"http://site.test/blog/page/3/", "http://site.test/blog/"}
    assert not page.children


@pytest.mark.parametrize(
    ("html", "child"),
    [
        ('<div class="context"><a href="/a">Context</a></div>', "/a"),  # "context" holds "next"
        ('<a class="nextend-slide" href="/a">A slide</a>', "/a"),
        ('<a href="/a">Next steps for your garden</a>', "/a"),
        ('<a href="/shop/list/7">7</a>', "/shop/list/7"),  # a number, not this listing's page
        ('<a href="/?p=123">A post with a plain permalink</a>', "/?p=123"),
    ],
)
def test_what_is_not_pagination(html: str, child: str) -> None:
    page = read(html)
    assert page.idiom is None and not page.next_pages
    assert page.children == ["http://site.test" + child]


def test_navigation_is_skipped_but_an_articles_own_header_is_content() -> None:
    page = read(
        '<header><nav><a href="/home">Home</a></nav><a href="/logo">Logo</a></header>'
        '<div role="navigation"><a href="/menu">Menu</a></div>'
        '<main><article><header><h2><a href="/post/1">Post</a></h2></header></article>'
        '<section><footer><a href="/post/1/comments">3 comments</a></footer></section>'
        '</main><footer><a href="/privacy">Privacy</a></footer>'
    )
    assert page.children == ["http://site.test/post/1", "http://site.test/post/1/comments"]
    assert page.skipped["nav"] == 4
    every = read_list_page(
        HtmlResponse(PAGE, body=b"<header><a href='/h'>h</a></header>", request=Request(PAGE)),
        strip=strip,
        nav_children=True,
    )
    assert every.children == ["http://site.test/h"]


def test_links_resolve_as_a_browser_resolves_them() -> None:
    page = read(
        '<a href="item/1">1</a><a href="//site.test/item/2">2</a>'
        '<a href="//other.test/item/3">3</a><a href="/caf\xe9?q=\xe9">4</a>',
        headers={"Content-Type": "text/html; charset=iso-8859-1"},
        encoding="latin-1",
        url="http://site.test/shop/list?x=1",
    )
    assert page.children == [
        "http://site.test/shop/item/1",
        "http://site.test/item/2",
        "http://site.test/caf%C3%A9?q=%E9",
    ]  # path UTF-8, query latin-1
    assert page.skipped["offsite"] == 1
    response = HtmlResponse(
        PAGE,
        request=Request(PAGE),
        body=b'<html><head><base href="/c/v2/"></head><body><a href="item/1">1</a></body></html>',
    )
    assert read_list_page(response, strip=strip).children == ["http://site.test/c/v2/item/1"]


def test_tracking_parameters_are_stripped_and_the_rest_kept_as_it_was() -> None:
    assert (
        strip("http://s.test/p?utm_source=x&id=3&fbclid=abc&UTM_Medium=y&ref=nl")
        == "http://s.test/p?id=3"
    )
    assert strip("http://s.test/p?utm_source=x") == "http://s.test/p"
    assert strip("http://s.test/p?a=%20b&gclid=1&c") == "http://s.test/p?a=%20b&c"
    assert ParamStripper([])("http://s.test/p?utm_source=x") == "http://s.test/p?utm_source=x"


@pytest.mark.parametrize(
    ("url", "key", "number"),
    [
        ("http://s/blog/", "http://s/blog", FIRST),
        ("http://s/blog/page/3/", "http://s/blog", 3),
        ("http://s/list?n=5&page=3", "http://s/list?n=5", 3),
        ("http://s/list?page=1&n=5", "http://s/list?n=5", FIRST),
        ("http://s/c?start=0", "http://s/c", FIRST),
        ("http://s/c?start=40", "http://s/c", 40),
        ("http://s/catalogue/page-2.html", "http://s/catalogue", 2),
        ("http://s/list?print=1", "http://s/list?print=1", FIRST),
    ],
)
def test_position_in_a_numbered_pager(url: str, key: str, number: int) -> None:
    assert position(url) == (key, number)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Next »", "next"),
        ("»", "next"),
        ("  Older\n posts ", "next"),
        ("2", "pager"),
        ("« Previous", "pager"),
        ("Last", "pager"),
        ("‹", "pager"),
        ("Product 2", None),
        ("", None),
    ],
)
def test_link_text_kind(text: str, kind: str | None) -> None:
    assert link_text_kind(text) == kind


def test_url_templates() -> None:
    assert expand_template("http://s/l?page={1..3}") == [f"http://s/l?page={i}" for i in (1, 2, 3)]
    assert expand_template("http://s/l?start={0..40..20}") == [
        "http://s/l?start=0",
        "http://s/l?start=20",
        "http://s/l?start=40",
    ]
    assert expand_template("http://s/l") == ["http://s/l"]
    for bad in ("http://s/l?p={3..1}", "http://s/{1..2}/{1..2}", "http://s/l?p={1..5..0}"):
        with pytest.raises(ValueError):
            expand_template(bad)


def test_resolve_reasons() -> None:
    assert resolve("/a", PAGE, "site.test") == ("http://site.test/a", "ok")
    assert resolve("mailto:x@y", PAGE, "site.test") == (None, "scheme")
    assert resolve("http://o.test/", PAGE, "site.test") == (None, "offsite")
    assert resolve("http://o.test/", PAGE, None) == ("http://o.test/", "ok")
