"""URLs as a browser reads them, and as a crawl should tell them apart.

- ``resolve``: an ``href`` found on a page, against the page's base URL (its ``<base
  href>``, else its own URL), checked to be a fetchable link of the same site.
- ``strip_params``: tracking parameters (``utm_*``, ``fbclid``, ...) removed, so one page
  linked from a newsletter and from the site itself is one request, one record.
- ``expand_template``: ``https://shop.example/list?page={1..50}`` as 50 URLs.
"""

from __future__ import annotations

import fnmatch
import re
from urllib.parse import urldefrag, urljoin, urlsplit

from w3lib.url import safe_url_string

#: Query parameters dropped from every discovered link by default (URL_STRIP_PARAMS):
#: they say where a visitor came from, never what the page is.
TRACKING_PARAMS = (
    "utm_*",
    "fbclid",
    "gclid",
    "gclsrc",
    "dclid",
    "gbraid",
    "wbraid",
    "msclkid",
    "yclid",
    "mc_cid",
    "mc_eid",
    "_ga",
    "_gl",
    "_hsenc",
    "_hsmi",
    "mkt_tok",
    "igshid",
    "srsltid",
    "ref",
    "ref_src",
    "ref_url",
    "spm",
    "twclid",
    "ttclid",
    "li_fat_id",
    "oly_anon_id",
    "oly_enc_id",
    "vero_id",
    "wickedid",
    "_openstat",
    "hsa_*",
)

_TEMPLATE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(\d+))?\}")


def resolve(
    href: str | None, base_url: str, site: str | None, encoding: str = "utf-8"
) -> tuple[str | None, str]:
    """Resolve one ``href`` found on a page whose base URL is ``base_url``.

    Returns ``(absolute URL without fragment, "ok")`` for a link to follow, or
    ``(None, reason)`` with reason one of: empty, fragment, unparsable, scheme, offsite.
    ``site`` is the host the link must be on (the list page's own, not its base's);
    ``None`` accepts any host. ``encoding`` is the page's charset, which a browser uses
    to percent-encode the query (the path is always UTF-8).
    """
    href = (href or "").strip()
    if not href:
        return None, "empty"
    if href.startswith("#"):
        return None, "fragment"
    try:
        # As the Request will read it (w3lib, WHATWG rules: "a\\@b" is host a, path /@b):
        # the host checked below is the host that will be fetched.
        url = safe_url_string(urldefrag(urljoin(base_url, href)).url, encoding)
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except (ValueError, LookupError):  # LookupError: a charset Python does not know
        return None, "unparsable"
    if parts.scheme not in ("http", "https"):
        return None, "scheme"
    if not parts.hostname:
        return None, "unparsable"
    if site is not None and parts.hostname != site:
        return None, "offsite"
    return url, "ok"


class ParamStripper:
    """Removes the query parameters named by patterns (``fnmatch``: ``utm_*``)."""

    def __init__(self, patterns: list[str] | tuple[str, ...]) -> None:
        names = [p.lower() for p in patterns if p]
        self.exact = frozenset(p for p in names if not any(c in p for c in "*?["))
        wild = [fnmatch.translate(p) for p in names if p not in self.exact]
        self.wild = re.compile("|".join(wild)) if wild else None

    def drops(self, name: str) -> bool:
        name = name.lower()
        return name in self.exact or bool(self.wild and self.wild.match(name))

    def __call__(self, url: str) -> str:
        """``url`` without the parameters; the rest of it byte for byte as it was."""
        head, sep, query = url.partition("?")
        if not sep or not (self.exact or self.wild):
            return url
        kept = [
            pair for pair in query.split("&") if pair and not self.drops(pair.partition("=")[0])
        ]
        return f"{head}?{'&'.join(kept)}" if kept else head


def expand_template(url: str) -> list[str]:
    """The URLs a page-number template names: ``?page={1..50}``, ``?start={0..980..20}``.

    A URL without ``{a..b}`` is itself. ValueError for a template that names no page.
    """
    match = _TEMPLATE.search(url)
    if not match:
        return [url]
    if _TEMPLATE.search(url, match.end()):
        raise ValueError(f"only one {{a..b}} range per URL template: {url}")
    first, last, step = int(match[1]), int(match[2]), int(match[3] or 1)
    if step < 1 or last < first:
        raise ValueError(
            f"the range in {url} names no page: write {{first..last}} or "
            "{first..last..step} with first <= last"
        )
    head, tail = url[: match.start()], url[match.end() :]
    return [f"{head}{n}{tail}" for n in range(first, last + 1, step)]
