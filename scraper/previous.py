"""What an earlier crawl stored of a child, and the request meta a re-crawl carries.

A child's request carries its previous record (``meta["previous"]``, when there is one:
scraper/recrawl.py looks them up in batches) and the crawl it belongs to: ``listing``,
the list page the crawl started from, and ``crawl_id``. List pages pass both on to the
next list pages and to their children, so they travel with the request, through Redis
and JOBDIR too, and no component has to hold them.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any, NamedTuple

#: request.meta keys
PREVIOUS = "previous"
LISTING = "listing"
CRAWL_ID = "crawl_id"


def new_crawl_id() -> str:
    """A crawl's id: when it started (UTC), and a few random hex digits."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def iso(value: Any) -> str | None:
    """A stored time as ISO 8601 text: the JSON Lines store keeps text, MongoDB gives
    naive UTC datetimes back."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    return str(value) if value else None


def when(text: str | None) -> datetime | None:
    """An ISO 8601 time as an aware datetime (UTC when it says no zone)."""
    if not text:
        return None
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: What MongoDB returns of a record for Previous.of.
PROJECTION = {
    "headers": 1,
    "sha256": 1,
    "body_key": 1,
    "first_seen": 1,
    "fetched_at": 1,
    "changed_at": 1,
    "error": 1,
}


def _header(headers: dict[str, Any], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return None


def checked_at(doc: dict[str, Any]) -> str | None:
    """When a record's last fetch got its body or a 304: its ``fetched_at``, unless that
    fetch failed (``error``)."""
    return None if doc.get("error") else iso(doc.get("fetched_at"))


class Previous(NamedTuple):
    """The fields of a child's stored record that a re-crawl needs: its validators for a
    conditional GET, its body's hash and key, and its dates. Plain text, so that it fits
    in request meta (JSON in Redis) and costs little memory in the JSON Lines index."""

    etag: str | None
    last_modified: str | None
    sha256: str | None
    body_key: str | None
    first_seen: str | None
    changed_at: str | None
    # When the site last gave or confirmed the stored body (a 200, a 304); None when the
    # last fetch failed (RECRAWL_MIN_AGE asks such a child again). A default: a request
    # queued by an older version carries six fields.
    checked_at: str | None = None

    @classmethod
    def of(cls, doc: dict[str, Any], fingerprint: str | None = None) -> Previous:
        """A stored record's; a record from before re-crawls has no ``first_seen``: it was
        first seen when it was fetched. ``fingerprint``: the record's, a string the body
        key shares when they are equal; so do the first and the last check when they are
        the same time (an index holds one string, not two)."""
        headers = doc.get("headers") or {}
        body_key = doc.get("body_key")
        first_seen = iso(doc.get("first_seen") or doc.get("fetched_at"))
        checked = checked_at(doc)
        return cls(
            _header(headers, "etag"),
            _header(headers, "last-modified"),
            doc.get("sha256"),
            fingerprint if body_key == fingerprint else body_key,
            first_seen,
            iso(doc.get("changed_at")),
            first_seen if checked == first_seen else checked,
        )

    def checked_within(self, seconds: float, now: datetime) -> bool:
        """Whether the site gave or confirmed the stored body less than ``seconds`` ago."""
        checked = when(self.checked_at)
        if not self.body_key or checked is None:
            return False
        return (now - checked).total_seconds() < seconds

    @classmethod
    def from_meta(cls, value: Any) -> Previous | None:
        """From ``request.meta["previous"]`` (a list once it went through JSON)."""
        return cls(*value) if value else None

    def validators(self) -> dict[str, str]:
        """The conditional GET's headers; none unless a body is stored to fall back on."""
        if not self.body_key:
            return {}
        found = {"If-None-Match": self.etag, "If-Modified-Since": self.last_modified}
        return {name: value for name, value in found.items() if value}
