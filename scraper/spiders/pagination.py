"""How a list page says where its next page is, in the idioms real sites use.

The idioms, in the order a list page is searched for them (the first one found wins;
``listing/pagination/<idiom>`` counts the pages each one led from):

``rel_next``      ``<a rel="next">`` or ``<link rel="next">``
``link_header``   the HTTP header ``Link: <...>; rel="next"``
``next_element``  an element that says "next" in its class, id, ``aria-label``, ``title``
                  or ``rel`` (``li.next a``, ``a.next.page-numbers``, ``[aria-label~=Next]``),
                  or whose text is a "next" word or arrow (Next, Older posts, ›, », Suivant)
``numbered``      a pager of page numbers: links that differ from the list page's own URL
                  in its page number only (``?page=N``, ``/page/N/``, ``?pg=N``, ``?p=N``,
                  ``?offset=N``, ``?start=N``, ``page-N.html``)
``more_button``   a "load more" button or link with the URL in ``data-next``, ``data-url``
                  or ``data-href``

Every link recognized as pagination (next, previous, first, last, a page number) is a
list page, never a child, whichever idiom wins.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

NEXT_ARROWS = "›»→⟶❯⟩〉▶►⇒⇢>"
PREV_ARROWS = "‹«←⟵❮⟨〈◀◄⇐⇠<"
_STRIP = " \t\r\n.:·|…-–—_*" + NEXT_ARROWS + PREV_ARROWS

#: Link texts (lower case, arrows and dots stripped) that mean "the next page".
NEXT_WORDS = frozenset(
    {
        "next",
        "next page",
        "next results",
        "older posts",
        "older entries",
        "older articles",
        "suivant",
        "suivante",
        "page suivante",  # fr
        "weiter",
        "nächste",
        "nächste seite",
        "vorwärts",  # de
        "siguiente",
        "página siguiente",
        "sig",  # es
        "successivo",
        "successiva",
        "pagina successiva",
        "avanti",  # it
        "próximo",
        "próxima",
        "próxima página",
        "seguinte",  # pt
        "volgende",
        "volgende pagina",  # nl
        "następna",
        "następna strona",
        "dalej",  # pl
        "следующая",
        "следующая страница",
        "далее",
        "вперёд",
        "вперед",  # ru
        "наступна",
        "далі",  # uk
        "nästa",
        "næste",
        "neste",
        "seuraava",
        "další",
        "sonraki",
        "következő",
        "următoarea",
        "επόμενη",
        "التالي",
        "הבא",
        "下一页",
        "下一頁",
        "后页",
        "次へ",
        "次のページ",
        "次",
        "다음",
        "다음 페이지",
    }
)
#: ... "the previous / first / last page": pagination too, never a child, not followed.
OTHER_PAGER_WORDS = frozenset(
    {
        "previous",
        "prev",
        "previous page",
        "newer posts",
        "newer entries",
        "first",
        "last",
        "first page",
        "last page",
        "précédent",
        "précédente",
        "page précédente",
        "zurück",
        "vorherige",
        "anterior",
        "precedente",
        "vorige",
        "poprzednia",
        "предыдущая",
        "назад",
        "上一页",
        "上一頁",
        "前へ",
        "이전",
    }
)

_NEXT_TOKEN = re.compile(r"^next(?:$|[-_]|page|post|link|btn|button)|[-_]next(?:$|[-_])")
_PREV_TOKEN = re.compile(r"^prev(?:ious)?(?:$|[-_]|page|post|link)|[-_]prev(?:ious)?(?:$|[-_])")
_PAGER_TOKEN = re.compile(
    r"paginat|pager|paging|^page-?numbers$|^page-?nav|^nav-links$|"
    r"^wp-pagenavi$|^pages-nav"
)
_NUMBER = re.compile(r"\d{1,6}")

#: Query parameters that hold a page number (names compared without "_" and "-"), and
#: the number a URL without them stands for.
PAGE_PARAMS = {
    "page": 1,
    "paged": 1,
    "pg": 1,
    "pn": 1,
    "p": 1,
    "pagenum": 1,
    "pageno": 1,
    "pagenumber": 1,
    "pageindex": 1,
    "currentpage": 1,
    "offset": 0,
    "start": 0,
}
_PAGE_PATH = re.compile(r"/(?:page|pages)[/_-]?(\d{1,6})(?:\.html?)?/?$", re.IGNORECASE)
_PAGE_HINT = re.compile(
    r"(?i)[?&;](?:page|paged|pg|pn|p|page_?num(?:ber)?|page_?no|"
    r"page_?index|current_?page|offset|start)=\d|/pages?[/_-]?\d"
)


class Position(NamedTuple):
    """Where a URL sits in a numbered pager: the URL with its page number taken out
    (the same for every page of one listing), and the page number, ``FIRST`` for the
    first page, whether its URL says ``page=1``, ``start=0`` or nothing."""

    key: str
    number: int


FIRST = -1


# Each check first looks for a plain substring: most class names have none of them, and a
# list page has a thousand links (spiders/listpage.py checks each one and its parents).


def says_next(value: str | None) -> bool:
    """A class, id or rel value with a "next" token (``next``, ``pagination-next``...)."""
    if not value or "next" not in (value := value.lower()):
        return False
    return any(_NEXT_TOKEN.search(t) for t in value.split())


def says_prev(value: str | None) -> bool:
    if not value or "prev" not in (value := value.lower()):
        return False
    return any(_PREV_TOKEN.search(t) for t in value.split())


def is_pager_block(value: str | None) -> bool:
    """A class or id that names a pager (``pagination``, ``pager``, ``page-numbers``)."""
    if not value or not ("pag" in (value := value.lower()) or "nav-links" in value):
        return False
    return any(_PAGER_TOKEN.search(t) for t in value.split())


def label_says_next(label: str | None) -> bool:
    """An ``aria-label`` or ``title`` such as "Next", "Next page", "Go to next page"."""
    if not label:
        return False
    text = " ".join(label.lower().split())
    return "next" in text.split() or text.strip(_STRIP) in NEXT_WORDS


def link_text_kind(text: str) -> str | None:
    """What a link's text says: "next", "pager" (previous, first, last, a page number),
    or None. ``text`` as the link shows it (whitespace is normalized here)."""
    if len(text) > 40:
        return None
    raw = " ".join(text.split()).lower()
    if not raw:
        return None
    word = raw.strip(_STRIP)
    if word in NEXT_WORDS:
        return "next"
    if not word:  # only arrows: ›, », → (also "»" for "last": both are followed)
        return "next" if any(c in NEXT_ARROWS for c in raw) else "pager"
    if word in OTHER_PAGER_WORDS or _NUMBER.fullmatch(word):
        return "pager"
    return None


def position(url: str) -> Position:
    """This URL's place in a numbered pager (a URL without a page number: ``FIRST``)."""
    parts = urlsplit(url)
    path, number = parts.path, FIRST
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if _PAGE_HINT.search(url):
        for i, (name, value) in enumerate(pairs):
            default = PAGE_PARAMS.get(name.lower().replace("_", "").replace("-", ""))
            if default is not None and value.isdigit():
                del pairs[i]
                number = int(value) if int(value) != default else FIRST
                break
        else:
            match = _PAGE_PATH.search(path)
            if match:
                path = path[: match.start()]
                number = int(match[1]) if int(match[1]) != 1 else FIRST
    key = urlunsplit(
        (parts.scheme, parts.netloc, path.rstrip("/") or "/", urlencode(sorted(pairs)), "")
    )
    return Position(key, number)


_LINK = re.compile(r"<([^>]*)>([^,<]*)")
_REL = re.compile(r"""(?i)\brel\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s;,]+))""")


def link_header(values: list[bytes], rel: str) -> list[str]:
    """The URLs of an HTTP ``Link`` header with this ``rel`` (RFC 8288), as written."""
    urls = []
    for value in values:
        for match in _LINK.finditer(value.decode("latin-1")):
            for r in _REL.finditer(match[2]):
                if rel in (r[1] or r[2] or r[3] or "").lower().split():
                    urls.append(match[1].strip())
    return urls
