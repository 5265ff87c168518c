"""Meta stores: a local JSON Lines file (the embedded default) and MongoDB."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pymongo import MongoClient, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from scraper.previous import PROJECTION, Previous, checked_at
from scraper.stores import RejectedDocuments, StoreError, redact

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Self

    from scrapy.crawler import Crawler


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(doc: dict[str, Any]) -> str:
    """One JSON Lines record."""
    return json.dumps(doc, default=_json_default, ensure_ascii=False, separators=(",", ":"))


class JsonLinesMetaStore:
    """Meta documents as lines of a JSON Lines file, one line per fingerprint.

    Batches are appended, each as one write under an exclusive lock on ``<file>.lock``,
    so several crawler processes on one machine may share the file. At close the file is
    rewritten (under the same lock) with one line per fingerprint if any fingerprint was
    written twice (a re-crawl, a replayed request): the later line's fields over the
    earlier's, so it behaves like a collection upserted with ``$set``. A writer that
    finds the file replaced reopens it first.

    A re-crawl reads the previous records from an index of the file built on the first
    ``previous`` call (scraper/recrawl.py): a tuple of six short strings per record.
    """

    transient_errors: tuple[type[BaseException], ...] = (OSError,)
    max_threads = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self.lock_fd: int | None = None
        self.index: dict[str, Previous] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> Self:
        return cls(urlsplit(uri).path if uri.startswith("file://") else uri)

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock_fd = os.open(
                self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644
            )
            self._reopen()
            with self._locked():
                self._fingerprints()  # a file that is not ours is refused now, not at close
        except OSError as exc:
            raise StoreError(
                f"META_STORE file {self.path} cannot be opened: {exc.strerror}"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise StoreError(
                f"META_STORE file {self.path} holds a line that is not a meta "
                "document; move it away or name another file"
            ) from None

    def _reopen(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.lock_fd is not None and self.fd is not None
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            if os.fstat(self.fd).st_ino != os.stat(self.path).st_ino:
                self._reopen()  # another process compacted the file
            yield
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def write(self, docs: list[dict[str, Any]]) -> None:
        with self._locked():
            self._append(docs)

    def _append(self, docs: list[dict[str, Any]]) -> None:
        """Append under the lock the caller holds."""
        assert self.fd is not None
        view = memoryview("".join(dumps(doc) + "\n" for doc in docs).encode())
        while view:
            view = view[os.write(self.fd, view) :]
        os.fsync(self.fd)

    def previous(self, fingerprints: list[str]) -> dict[str, Previous]:
        """What the file holds of these fingerprints (those it has)."""
        if self.index is None:
            with self._locked():
                self.index = self._read_index()
        index = self.index
        return {fp: index[fp] for fp in fingerprints if fp in index}

    def _read_index(self) -> dict[str, Previous]:
        """Each fingerprint's Previous, read a line at a time (the file is not held in
        memory). A whole record sets it; a partial one (a 304, a failure) changes only when
        the body was last checked, and leaves the body, its hash and validators as they were
        (a gone_at, or a link by a later crawl, changes nothing)."""
        index: dict[str, Previous] = {}
        for doc in self._docs():
            fp = doc["fingerprint"]
            if "sha256" in doc:
                index[fp] = Previous.of(doc, fp)
            elif "fetched_at" in doc and fp in index:
                index[fp] = index[fp]._replace(checked_at=checked_at(doc))
        return index

    def _docs(self) -> Iterator[dict[str, Any]]:
        """The file's lines as documents, in order, one at a time."""
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def mark_gone(self, listings: list[str], crawl_id: str, when: datetime) -> int:
        """Mark ``gone_at`` on the records of these listings that crawl ``crawl_id`` did
        not link (and that are not marked yet); how many. The file is read a line at a
        time, keeping three fields per fingerprint, not the file."""
        wanted = set(listings)
        with self._locked():  # read and marked in one step: nodes sharing the file mark once
            state: dict[str, tuple[Any, Any, Any]] = {}
            for doc in self._docs():
                fp = doc["fingerprint"]
                listing, crawl, gone_at = state.get(fp, (None, None, None))
                state[fp] = (
                    doc.get("listing", listing),
                    doc.get("crawl_id", crawl),
                    doc.get("gone_at", gone_at),
                )
            gone = [
                {"fingerprint": fp, "gone_at": when}
                for fp, (listing, crawl, gone_at) in state.items()
                if listing in wanted and crawl != crawl_id and not gone_at
            ]
            if gone:
                self._append(gone)
        return len(gone)

    def close(self) -> None:
        if self.fd is None or self.lock_fd is None:
            return
        with self._locked():
            lines, unique = self._fingerprints()
            if lines != len(unique):
                self._compact(unique)
        os.close(self.fd)
        os.close(self.lock_fd)
        self.fd = self.lock_fd = None

    def _fingerprints(self) -> tuple[int, dict[str, list[bytes]]]:
        """Lines in the file, and the lines of each fingerprint, in order."""
        per_fingerprint: dict[str, list[bytes]] = {}
        lines = 0
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    lines += 1
                    per_fingerprint.setdefault(json.loads(line)["fingerprint"], []).append(line)
        return lines, per_fingerprint

    def _compact(self, per_fingerprint: dict[str, list[bytes]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            for lines in per_fingerprint.values():
                if len(lines) == 1:
                    f.write(lines[0])
                    continue
                doc: dict[str, Any] = {}
                for line in lines:
                    doc.update(json.loads(line))
                f.write(dumps(doc).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


#: Server error codes that a retry may get past: network, shutdown, election, time limits
#: (pymongo's own retryable-write list, plus 50 MaxTimeMSExpired and 64 WriteConcernFailed).
TRANSIENT_CODES = frozenset(
    {6, 7, 50, 64, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436}
)


def _reasons(errors: list[dict[str, Any]]) -> list[str]:
    """Distinct "E<code> <message>" of write errors, short (a message may quote a value)."""
    reasons = set()
    for error in errors:
        code, message = f"E{error.get('code')}", str(error.get("errmsg") or "")[:120]
        reasons.add(message if message.startswith(code) else f"{code} {message}".strip())
    return sorted(reasons)


#: What mark_gone asks for: a listing's records not marked gone, of another crawl (equality
#: fields first, the ``$ne`` range last: it scans only the records this crawl did not link).
GONE_INDEX = [("listing", 1), ("gone_at", 1), ("crawl_id", 1)]


class MongoMetaStore:
    """Meta documents in a MongoDB collection, ``_id`` = fingerprint, upserted in bulk."""

    transient_errors: tuple[type[BaseException], ...] = (PyMongoError,)
    max_threads = 1

    #: The client class; tests swap in mongomock's.
    client_class: Any = MongoClient

    def __init__(self, uri: str, collection: str = "pages", connect_timeout_ms: int = 5000) -> None:
        self.uri = uri
        self.collection_name = collection
        self.connect_timeout_ms = connect_timeout_ms
        self.client: Any = None
        self.collection: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> Self:
        s = crawler.settings
        return cls(uri, s.get("META_STORE_COLLECTION"), s.getint("META_STORE_CONNECT_TIMEOUT_MS"))

    def open(self) -> None:
        where = redact(self.uri)
        try:
            self.client = self.client_class(
                self.uri,
                serverSelectionTimeoutMS=self.connect_timeout_ms,
                connectTimeoutMS=self.connect_timeout_ms,
                appname="scraper",
            )
            try:
                db = self.client.get_default_database()
            except ConfigurationError:
                db = self.client["scraper"]
            self.collection = db[self.collection_name]
            self.client.admin.command("ping")
            self.collection.create_index("fingerprint", unique=True)
            self.collection.create_index(GONE_INDEX, name="listing_gone_crawl")
        except OperationFailure as exc:
            why = (exc.details or {}).get("codeName") or exc.code
            raise StoreError(f"MongoDB at {where} refused: {why}") from None
        except (PyMongoError, ValueError) as exc:
            reason = type(exc).__name__
            if "ServerSelectionTimeout" in reason:
                reason = f"no server answered within {self.connect_timeout_ms} ms"
            raise StoreError(f"MongoDB at {where} unusable: {reason}") from None

    def write(self, docs: list[dict[str, Any]]) -> None:
        """Upsert ``docs``; RejectedDocuments for those the server refuses for good.

        Outages, elections, timeouts and write-concern errors are raised as they are (the
        caller retries the whole batch: upserts make that safe). A refusal that a retry
        cannot change (a validator, a unique index of the user's, a document too large,
        no right to write) names the documents it concerns.
        """
        # $set: a whole record sets every field (each PageItem field is in it), a partial
        # one (a 304, a failure of a page stored before) only its own.
        ops = [UpdateOne({"_id": d["fingerprint"]}, {"$set": d}, upsert=True) for d in docs]
        try:
            self.collection.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors") or []
            if (
                not errors
                or exc.details.get("writeConcernErrors")
                or any(e.get("code") in TRANSIENT_CODES for e in errors)
            ):
                raise
            raise RejectedDocuments([docs[e["index"]] for e in errors], _reasons(errors)) from None
        except OperationFailure as exc:
            if (
                isinstance(exc, WriteConcernError)
                or exc.code in TRANSIENT_CODES
                or exc.has_error_label("RetryableWriteError")
            ):
                raise
            details = exc.details or {}
            raise RejectedDocuments(
                docs,
                _reasons(
                    [{"code": exc.code, "errmsg": details.get("codeName") or details.get("errmsg")}]
                ),
            ) from None

    def previous(self, fingerprints: list[str]) -> dict[str, Previous]:
        """What the collection holds of these fingerprints: one ``find`` per call."""
        cursor = self.collection.find({"_id": {"$in": fingerprints}}, PROJECTION)
        return {doc["_id"]: previous for doc in cursor if (previous := Previous.of(doc))}

    def mark_gone(self, listings: list[str], crawl_id: str, when: datetime) -> int:
        """Mark ``gone_at`` on the records of these listings that crawl ``crawl_id`` did
        not link (and that are not marked yet), in one ``update_many``; how many."""
        result = self.collection.update_many(
            {"listing": {"$in": listings}, "crawl_id": {"$ne": crawl_id}, "gone_at": None},
            {"$set": {"gone_at": when}},
        )
        return int(result.modified_count)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
