"""Meta stores: a local JSON Lines file (the embedded default) and MongoDB."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pymongo import MongoClient, ReplaceOne
from pymongo.errors import ConfigurationError, OperationFailure, PyMongoError

from scraper.stores import StoreError, redact

if TYPE_CHECKING:
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

    Batches are appended. A fingerprint written again (a re-crawl, a replayed request)
    makes the file be rewritten at close keeping the newest line per fingerprint, so
    the file behaves like an upserting collection.
    """

    transient_errors: tuple[type[BaseException], ...] = (OSError,)
    max_threads = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fingerprints: set[str] = set()
        self.rewrite = False
        self.file: Any = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> Self:
        return cls(urlsplit(uri).path if uri.startswith("file://") else uri)

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                with self.path.open("rb") as f:
                    self.fingerprints = {json.loads(line)["fingerprint"]
                                         for line in f if line.strip()}
            self.file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise StoreError(f"META_STORE file {self.path} cannot be opened: {exc.strerror}") \
                from None
        except (ValueError, KeyError):
            raise StoreError(f"META_STORE file {self.path} holds a line that is not a meta "
                             "document; move it away or name another file") from None

    def write(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            if doc["fingerprint"] in self.fingerprints:
                self.rewrite = True
            self.fingerprints.add(doc["fingerprint"])
        self.file.write("".join(dumps(doc) + "\n" for doc in docs))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is None:
            return
        self.file.close()
        if self.rewrite:
            self._compact()

    def _compact(self) -> None:
        newest: dict[str, str] = {}
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    newest[json.loads(line)["fingerprint"]] = line
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.writelines(newest.values())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


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
            raise StoreError(f"MongoDB at {where} refused: {exc.code_name or exc.code}") from None
        except (PyMongoError, ValueError) as exc:
            reason = type(exc).__name__
            if "ServerSelectionTimeout" in reason:
                reason = f"no server answered within {self.connect_timeout_ms} ms"
            raise StoreError(f"MongoDB at {where} unusable: {reason}") from None

    def write(self, docs: list[dict[str, Any]]) -> None:
        ops = [ReplaceOne({"_id": d["fingerprint"]}, {**d, "_id": d["fingerprint"]}, upsert=True)
               for d in docs]
        self.collection.bulk_write(ops, ordered=False)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
