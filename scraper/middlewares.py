"""Downloader middlewares of the project."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scrapy import Request
from scrapy.downloadermiddlewares.redirect import RedirectMiddleware

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.http import Response


class ListingRedirectMiddleware(RedirectMiddleware):
    """Scrapy's RedirectMiddleware, adapted to "every discovered URL ends as one record".

    - A redirect target skips the dupefilter. Otherwise a redirect to an already seen
      URL (or to itself, a loop) would vanish without a record; REDIRECT_MAX_TIMES still
      ends loops, as an error record.
    - No Referer is sent (REFERER_ENABLED=False), so the stock middleware's warning
      about a missing RefererMiddleware does not apply.
    """

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        result = super().process_response(request, response)
        if isinstance(result, Request):  # a redirect (else the response passes through)
            result.dont_filter = True
        return result

    def handle_referer(self, request: Request, response: Response) -> None:
        request.headers.pop(b"Referer", None)

    def _engine_started(self) -> None:
        # The stock hook only looks up RefererMiddleware and warns that it is off.
        pass
