"""Body stores: a local folder (the embedded default) and S3."""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from scraper.stores import StoreError, redact

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

# Keys are made from request fingerprints; anything else is refused, so no key can
# name a path outside the store (no "..", no "/", no absolute path).
_KEY = re.compile(r"^[0-9a-f]{16,128}(\.gz)?$")


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
        return cls(urlsplit(uri).path if uri.startswith("file://") else uri,
                   crawler.settings.getint("BODY_STORE_FS_THREADS"))

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"BODY_STORE folder {self.root} cannot be created: {exc.strerror}") \
                from None
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


class S3BodyStore:
    """Bodies as S3 objects ``<prefix><key>`` in one bucket, through boto3.

    Endpoint, region and credentials come from Scrapy's ``AWS_*`` settings when set,
    else from boto3's own chain (``AWS_ACCESS_KEY_ID``... environment variables,
    ``~/.aws``, instance roles). botocore retries throttling, 5xx and dropped
    connections itself (``standard`` mode, ``BODY_STORE_S3_MAX_ATTEMPTS`` tries, counted
    in ``sdk_retries``); what still fails after that is retried by the pipeline, with a
    longer backoff, then spooled.
    """

    transient_errors: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)
    max_threads = 1024  # uploads wait on the network: BODY_STORE_THREADS decides

    def __init__(
        self,
        uri: str,
        *,
        threads: int = 32,
        endpoint_url: str | None = None,
        region_name: str | None = None,
        credentials: dict[str, str] | None = None,
        max_attempts: int = 5,
        timeout: float = 30,
    ) -> None:
        parts = urlsplit(uri)
        if not parts.netloc:
            raise StoreError(f"BODY_STORE={redact(uri)!r} names no bucket (s3://bucket/prefix)")
        self.bucket = parts.netloc
        self.prefix = parts.path.lstrip("/")
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"
        self.threads = threads
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.credentials = credentials or {}
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.client: Any = None
        self.attempts = 0  # HTTP requests sent for put(), retries included
        self.puts = 0
        self.lock = threading.Lock()

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> Self:
        s = crawler.settings
        credentials = {
            name.lower(): s.get(name)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
            if s.get(name)
        }
        return cls(
            uri,
            threads=s.getint("BODY_STORE_THREADS"),
            endpoint_url=s.get("AWS_ENDPOINT_URL") or None,
            region_name=s.get("AWS_REGION_NAME") or None,
            credentials=credentials,
            max_attempts=s.getint("BODY_STORE_S3_MAX_ATTEMPTS", 5),
        )

    def open(self) -> None:
        import boto3
        from botocore.config import Config

        config = Config(
            max_pool_connections=self.threads,  # one connection per upload thread
            # total_max_attempts counts the first try; botocore's max_attempts would not.
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.timeout,
            read_timeout=self.timeout,
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region_name,
            config=config, **self.credentials,
        )
        self.client.meta.events.register("before-send.s3.PutObject", self._count_attempt)
        where = f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StoreError(f"S3 bucket {where} does not exist") from None
            if code in ("403", "AccessDenied"):
                raise StoreError(f"S3 bucket {where}: access denied for these credentials") \
                    from None
            raise StoreError(f"S3 bucket {where}: {code}") from None
        except BotoCoreError as exc:
            raise StoreError(f"S3 bucket {where} unreachable: {type(exc).__name__}") from None

    def _count_attempt(self, **_: Any) -> None:  # returns None: botocore sends the request
        with self.lock:
            self.attempts += 1

    @property
    def sdk_retries(self) -> int:
        """Upload requests botocore sent again (throttled, 5xx, connection lost)."""
        with self.lock:
            return max(0, self.attempts - self.puts)

    def put(self, key: str, body: bytes, content_type: str | None, encoding: str | None) -> str:
        object_key = self.prefix + check_key(key)
        with self.lock:
            self.puts += 1
        extra = {"ContentType": content_type or "application/octet-stream"}
        if encoding:
            extra["ContentEncoding"] = encoding
        try:
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=body, **extra)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if 400 <= status < 500 and status not in (408, 429):
                # Retrying will not help (no such bucket, access denied, bad request).
                code = exc.response.get("Error", {}).get("Code", status)
                raise StoreError(f"S3 refused s3://{self.bucket}/{object_key}: {code}") from None
            raise
        return object_key

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
