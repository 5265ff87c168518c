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

from pymongo import MongoClient, ReplaceOne
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

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
    rewritten (under the same lock) keeping the newest line per fingerprint if any
    fingerprint was written twice (a re-crawl, a replayed request): it behaves like an
    upserting collection. A writer that finds the file replaced reopens it first.
    """

    transient_errors: tuple[type[BaseException], ...] = (OSError,)
    max_threads = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fd: int | None = None
        self.lock_fd: int | None = None

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
        data = "".join(dumps(doc) + "\n" for doc in docs).encode()
        with self._locked():
            assert self.fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            os.fsync(self.fd)

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

    def _fingerprints(self) -> tuple[int, dict[str, bytes]]:
        """Lines in the file, and the newest line per fingerprint."""
        newest: dict[str, bytes] = {}
        lines = 0
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    lines += 1
                    newest[json.loads(line)["fingerprint"]] = line
        return lines, newest

    def _compact(self, newest: dict[str, bytes]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as f:
            f.writelines(newest.values())
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
        ops = [
            ReplaceOne({"_id": d["fingerprint"]}, {**d, "_id": d["fingerprint"]}, upsert=True)
            for d in docs
        ]
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

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
