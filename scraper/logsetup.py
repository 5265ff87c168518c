"""Log set-up: secrets out of every line, and no cost for lines nobody will see.

Secrets: Scrapy logs its overridden settings at start, so ``-s
META_STORE=mongodb://u:pw@h`` or ``-s AWS_SECRET_ACCESS_KEY=...`` would otherwise put
the secret in the log. The extension collects the secret values from the settings
and replaces them with ``***`` in every log record made after it is built (which is
before that line): in the message, and in the traceback and stack a record carries
(an exception's text may quote a URI, password included).

Cost: Scrapy filters by LOG_LEVEL in its handler, so its loggers still build a
record for every "Crawled (200)" and "Scraped from" DEBUG line, item repr included,
only to drop it. Setting the ``scrapy`` logger's own level to LOG_LEVEL skips that
work (about 2% of the CPU per page at c=1000).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

#: Settings whose whole value is a secret. (An access key id is not one by itself, but it
#: names the account the secret key unlocks: it stays out of logs too.)
SECRET_SETTINGS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "REDIS_PASSWORD",
)
#: Settings holding URIs whose password part is a secret.
URI_SETTINGS = ("BODY_STORE", "META_STORE", "REDIS_URL")


def secrets_in(settings: Any) -> set[str]:
    """The secret strings configured in ``settings``."""
    found = {str(settings.get(name)) for name in SECRET_SETTINGS if settings.get(name)}
    for name in URI_SETTINGS:
        value = settings.get(name)
        if value and "://" in str(value):
            try:
                password = urlsplit(str(value)).password
            except ValueError:
                continue
            if password:
                found.update({password, unquote(password)})
    return {s for s in found if len(s) >= 3}  # never redact "a" everywhere


class LogSetup:
    """Extension: redact configured secrets; build no record below LOG_LEVEL."""

    def __init__(self, secrets: set[str], level: str | int = "INFO") -> None:
        self.secrets = sorted(secrets, key=len, reverse=True)
        if self.secrets:
            install(self.secrets)
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
        if isinstance(level, int) and level > logging.DEBUG:
            logging.getLogger("scrapy").setLevel(level)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        return cls(secrets_in(crawler.settings), crawler.settings.get("LOG_LEVEL"))


_installed: set[str] = set()
_formatter = logging.Formatter()


def _redact(text: str) -> str:
    for secret in sorted(_installed, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def install(secrets: list[str]) -> None:
    """Wrap the log record factory once; later calls add secrets to the same wrapper."""
    if _installed:
        _installed.update(secrets)
        return
    _installed.update(secrets)
    make_record = logging.getLogRecordFactory()

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging to report
            return record
        if any(secret in message for secret in _installed):
            record.msg, record.args = _redact(message), None
        if record.exc_info and record.exc_info[0] is not None:
            # Formatters print exc_text when it is set instead of formatting exc_info
            # again: set it now, redacted. (Records with a traceback are rare: no cost.)
            record.exc_text = _redact(_formatter.formatException(record.exc_info))
        if record.stack_info:
            record.stack_info = _redact(record.stack_info)
        return record

    logging.setLogRecordFactory(redacting_factory)
