"""Retrying a store call with exponential backoff, quietly.

During an outage every item in flight retries; one warning per ``what`` every few
seconds says so, instead of one per item.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, TypeVar

from scraper.stores import StoreError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)

T = TypeVar("T")

_FAILURE_REPR = re.compile(r"\[?<twisted\.python\.failure\.Failure (?:[\w.]+\.)?([^>]*)>\]?")

_last_warning: dict[str, float] = {}


async def with_backoff(
    call: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout: float,
    stats: StatsCollector,
    retry_on: tuple[type[BaseException], ...],
    first_delay: float = 0.5,
    max_delay: float = 15.0,
) -> T:
    """Await ``call()`` until it succeeds or ``timeout`` seconds have passed.

    Only ``retry_on`` errors (the store's transient ones: network, throttling, 5xx) are
    retried; anything else, StoreError included, is raised at once, and after the
    timeout the last error is.
    """
    deadline = time.monotonic() + timeout
    delay = first_delay
    while True:
        try:
            return await call()
        except StoreError:
            raise
        except retry_on as exc:
            if time.monotonic() + delay > deadline:
                raise
            stats.inc_value(f"{what}/retries")
            now = time.monotonic()
            if now - _last_warning.get(what, 0.0) > 5:
                _last_warning[what] = now
                logger.warning(
                    "%(what)s: %(error)s; retrying (up to %(timeout)ds per item)",
                    {"what": what, "error": describe(exc), "timeout": timeout},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


def describe(exc: BaseException) -> str:
    """A short, one-line description of ``exc``."""
    # Twisted wraps causes as "[<twisted.python.failure.Failure x.Error: text>]".
    text = _FAILURE_REPR.sub(r"\1", " ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
