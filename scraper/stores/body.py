"""The local folder body store (the embedded default); S3 is in stores/s3.py."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from scraper.stores import StoreError

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

# Keys are made from request fingerprints (and the body's sha256 with
# BODY_STORE_VERSIONS); anything else is refused, so no key can name a path outside the
# store (no "..", no "/", no absolute path).
_KEY = re.compile(r"^[0-9a-f]{16,128}(-[0-9a-f]{64})?(\.gz)?$")


def check_key(key: str) -> str:
    """``key`` if it is a fingerprint-made key, else ValueError."""
    if not _KEY.match(key):
        raise ValueError(f"invalid body key {key[:80]!r}: keys are hex fingerprints")
    return key


class FSBodyStore:
    """Bodies as files under a folder: ``<root>/<key[:2]>/<key>``, written atomically."""

    transient_errors: tuple[type[BaseException], ...] = (OSError,)  # a full disk, a stale NFS

    def __init__(self, root: str | Path, threads: int = 0) -> None:
        self.root = Path(root).resolve()
        #: 0: write on the reactor thread. Writing a 35 KB file to a local disk costs less
        #: than handing it to a thread (GIL and futex hand-offs: bench/RESULTS.md); a
        #: network filesystem wants threads (BODY_STORE_FS_THREADS).
        self.max_threads = threads

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> Self:
        return cls(
            urlsplit(uri).path if uri.startswith("file://") else uri,
            crawler.settings.getint("BODY_STORE_FS_THREADS"),
        )

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"BODY_STORE folder {self.root} cannot be created: {exc.strerror}"
            ) from None
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"BODY_STORE folder {self.root} is not writable")

    def path(self, key: str) -> Path:
        """The file that holds ``key``."""
        return self.root / check_key(key)[:2] / key

    def put(self, key: str, body: bytes, content_type: str | None, encoding: str | None) -> str:
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        # Write then rename: a crash never leaves a half-written body under the final name.
        # The temporary name is unique per process and thread (cheaper than mkstemp's).
        tmp = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(body)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return f"{key[:2]}/{key}"

    def close(self) -> None:
        pass
