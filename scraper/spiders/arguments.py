"""The spider's arguments (``-a``): checked before anything is crawled, each mistake said
in one line that names the argument (the crawl then ends ``arguments_unusable``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lxml import etree
from parsel.csstranslator import HTMLTranslator

from scraper.urls import expand_template


@dataclass
class Arguments:
    """What the arguments ask for: ``start_urls`` (``-a url=``, a template expanded),
    ``sitemap_filter`` compiled; ``error`` the first mistake, or None."""

    start_urls: list[str] = field(default_factory=list)
    sitemap_filter: re.Pattern[str] | None = None
    error: str | None = None


def check_arguments(
    url: str | None,
    sitemap: str | None,
    sitemap_filter: str | None,
    selectors: dict[str, str | None],
) -> Arguments:
    """``selectors``: link_css, link_xpath, next_css, next_xpath as given (None: not)."""
    args = Arguments()
    for kind, value in selectors.items():
        if value is not None and args.error is None:
            args.error = check_selector(kind, value)
    if sitemap_filter is not None:
        try:
            args.sitemap_filter = re.compile(sitemap_filter)
        except re.error as exc:
            args.error = f"-a sitemap_filter={sitemap_filter!r} is not a regex: {exc}"
    if url:
        try:
            args.start_urls = expand_template(url)
        except ValueError as exc:
            args.error = f"-a url: {exc}"
        if urlsplit(url).scheme not in ("http", "https"):
            args.error = (
                f"-a url={url!r} is not an http(s) URL: did you mean "
                f"-a url='https://{url.split('://')[-1]}'?"
            )
    if sitemap and urlsplit(sitemap).scheme not in ("http", "https"):
        args.error = f"-a sitemap={sitemap!r} is not an http(s) URL"
    return args


def check_selector(kind: str, value: str) -> str | None:
    """Why ``value`` is not a valid CSS (``kind`` ending in css) or XPath selector."""
    try:
        etree.XPath(HTMLTranslator().css_to_xpath(value) if kind.endswith("css") else value)
    except Exception as exc:  # cssselect's SelectorError, lxml's XPathSyntaxError
        return f"-a {kind}={value!r} is not a valid selector: {exc}"
    return None
