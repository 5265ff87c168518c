"""Local spools: what a store still refused after its retries, kept on disk for `scrapy replay`.

Two spools, both safe to share between crawler processes on one machine and a
replay running at the same time:

- The **body spool** (``BODY_STORE_SPOOL``) is a folder laid out like the body
  folder store: one file per body, ``<key[:2]>/<key>`` with the body store's key,
  written atomically (temporary file, then rename). A file holds one JSON line
  (the upload's key, content type and encoding, and the page's meta document, so
  that replay can upsert the finished record) followed by the body bytes as they
  would have been uploaded (gzipped when ``BODY_STORE_GZIP`` is on).
- The **meta spool** (``META_STORE_SPOOL``) is a JSON Lines file of meta documents.
  Writers append under an exclusive ``flock``; replay takes the whole file by
  renaming it aside under the same lock, so a line appended meanwhile lands in a
  new file and is never lost between reading and removing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scraper.stores.body import check_key
from scraper.stores.meta import dumps

if TYPE_CHECKING:
    from collections.abc import Iterator

#: Meta document fields that hold datetimes: JSON turns them into ISO strings, replay
#: turns them back, so a document replayed into MongoDB has the type a direct write has.
DATETIME_FIELDS = ("fetched_at",)


def revive(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` as read from JSON, with its datetime fields as datetimes again."""
    for name in DATETIME_FIELDS:
        value = doc.get(name)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                doc[name] = datetime.fromisoformat(value)
    return doc


@dataclass
class SpooledBody:
    """One body waiting in the spool, as read back by replay."""

    path: Path
    inode: int  # the file read; replay removes the file only if it is still this one
    key: str
    content_type: str | None
    encoding: str | None
    doc: dict[str, Any]
    body: bytes


class BodySpool:
    """A folder of bodies that the body store refused: ``<root>/<key[:2]>/<key>``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The spool file of ``key`` (a body store key: hex fingerprint, maybe ``.gz``)."""
        return self.root / check_key(key)[:2] / key

    def put(
        self,
        key: str,
        body: bytes,
        content_type: str | None,
        encoding: str | None,
        doc: dict[str, Any],
    ) -> Path:
        """Spool ``body`` (overwriting an older copy of the same key) with its meta document."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = dumps({"key": key, "content_type": content_type, "encoding": encoding, "doc": doc})
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(header.encode() + b"\n")
                f.write(body)
                f.flush()
                os.fsync(f.fileno())  # the spool is the only copy: make it durable
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    def paths(self) -> Iterator[Path]:
        """Every spooled body's file (temporary files of writes in progress excluded)."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and not folder.name.startswith("."):
                for path in sorted(folder.iterdir()):
                    if not path.name.startswith("."):
                        yield path

    def read(self, path: Path) -> SpooledBody:
        """The spooled body in ``path``; ValueError if the file is not a spool entry."""
        with path.open("rb") as f:
            inode = os.fstat(f.fileno()).st_ino
            header = json.loads(f.readline())
            body = f.read()
        if not isinstance(header, dict) or not isinstance(header.get("doc"), dict):
            raise ValueError(f"{path} is not a spooled body")
        key = check_key(str(header.get("key")))
        if path.name != key:
            raise ValueError(f"{path} holds the body of another key ({key})")
        return SpooledBody(
            path,
            inode,
            key,
            header.get("content_type"),
            header.get("encoding"),
            revive(header["doc"]),
            body,
        )

    def remove(self, entry: SpooledBody) -> bool:
        """Delete ``entry``'s file unless it was replaced since it was read (a newer copy
        spooled meanwhile stays for the next replay). True if it is gone."""
        try:
            if os.stat(entry.path).st_ino != entry.inode:
                return False
            entry.path.unlink()
        except FileNotFoundError:
            pass
        # The <key[:2]> folder stays: removing it could race with a crawl spooling into it.
        return True

    def count(self) -> int:
        """Bodies waiting."""
        return sum(1 for _ in self.paths())


def append_lines(path: Path, docs: list[dict[str, Any]]) -> None:
    """Append ``docs`` to the meta spool ``path`` as JSON Lines, durably, under its lock."""
    data = "".join(dumps(doc) + "\n" for doc in docs).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_ino != os.stat(path).st_ino:
                    continue  # replay took the file away while we waited: write to the new one
            except FileNotFoundError:
                continue
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            return
        finally:
            os.close(fd)  # also releases the lock


def taken_path(path: Path) -> Path:
    """Where replay moves the meta spool ``path`` while it replays it."""
    return path.with_name(path.name + ".replaying")


def take_lines(path: Path) -> Path | None:
    """Move the meta spool ``path`` aside for replay (under the writers' lock), and return
    where it went. A file left there by an earlier replay that failed is returned first;
    None when nothing waits."""
    taken = taken_path(path)
    if taken.exists():
        return taken
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            return None  # another replay took it first
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)
    return taken


def read_lines(path: Path) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The meta documents of a taken spool file, and its lines that are not one (a line cut
    by a crash, say)."""
    docs: list[dict[str, Any]] = []
    bad: list[bytes] = []
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                bad.append(line)
                continue
            if isinstance(doc, dict) and isinstance(doc.get("fingerprint"), str):
                docs.append(revive(doc))
            else:
                bad.append(line)
    return docs, bad


def rejected_path(path: Path) -> Path:
    """Where replay keeps the lines of the meta spool ``path`` that are not documents."""
    return path.with_name(path.name + ".rejected")


def count_lines(path: Path) -> int:
    """Documents waiting in the meta spool ``path`` (and in a taken file beside it)."""
    total = 0
    for p in (taken_path(path), path):
        with contextlib.suppress(FileNotFoundError), p.open("rb") as f:
            total += sum(1 for line in f if line.strip())
    return total
