"""Bodies as S3 objects ``<prefix><key>`` in one bucket: two clients, one configuration.

``BODY_STORE_S3_CLIENT`` chooses how the PUTs are sent:

- ``obstore`` (the default): the Rust ``object_store`` crate through obstore, awaited on
  the crawl's own event loop; signing, HTTP and TLS run in Rust, off the GIL. Measured
  (bench/s3_clients.py, bench/RESULTS.md): ~0.3 ms of the crawling process's CPU per
  35 KB PUT against ~3 ms for boto3, which made S3 cost a crawl more than everything else
  it does.
  Up to ``BODY_STORE_S3_IN_FLIGHT`` PUTs are in flight: each costs a pending future, not
  a thread, and its completion waits for the GIL, which a busy crawl hands over only every
  few milliseconds (PUTs to a local sink took 40-70 ms from call to return at c=1000), so
  a window of 32 kept thousands of bodies queued in memory.
- ``boto3``: boto3's ``put_object`` on a pool of ``BODY_STORE_THREADS`` threads.

Both take their configuration from boto3, which users already configure and trust:
credentials from Scrapy's ``AWS_*`` settings when set, else boto3's chain (environment,
``~/.aws``, SSO, container and instance roles, refreshed when they expire); endpoint from
``AWS_ENDPOINT_URL`` (path-style addressing, for MinIO, moto and other S3-compatible
servers); region from ``AWS_REGION_NAME``. The bucket is checked with boto3 at open, so a
missing bucket or refused credentials stop the crawl with one line, whichever client.

Throttling, 5xx and dropped connections are retried by the client, up to
``BODY_STORE_S3_MAX_ATTEMPTS`` tries per upload (counted in ``sdk_retries``); what still
fails is retried by the pipeline, with a longer backoff, then spooled.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from scraper.stores import StoreError, redact
from scraper.stores.body import check_key

if TYPE_CHECKING:
    from obstore.store import S3Config
    from scrapy.crawler import Crawler

CLIENTS = ("obstore", "boto3")


class S3BodyStore:
    """The ``s3://`` scheme: builds the store of the client ``BODY_STORE_S3_CLIENT`` names."""

    @classmethod
    def from_crawler(cls, crawler: Crawler, uri: str) -> Boto3S3BodyStore | ObstoreS3BodyStore:
        s = crawler.settings
        client = s.get("BODY_STORE_S3_CLIENT")
        if client not in CLIENTS:
            raise StoreError(f"BODY_STORE_S3_CLIENT={client!r}: use one of {', '.join(CLIENTS)}")
        store_class = ObstoreS3BodyStore if client == "obstore" else Boto3S3BodyStore
        return store_class(
            uri,
            concurrency=s.getint(store_class.concurrency_setting),
            endpoint_url=s.get("AWS_ENDPOINT_URL") or None,
            region_name=s.get("AWS_REGION_NAME") or None,
            credentials={
                name.lower(): s.get(name)
                for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
                if s.get(name)
            },
            max_attempts=s.getint("BODY_STORE_S3_MAX_ATTEMPTS"),
        )


class _S3Store:
    """What both clients share: where the objects go, and the check at open."""

    concurrency_setting: str  # the setting that bounds this client's PUTs in flight

    def __init__(
        self,
        uri: str,
        *,
        concurrency: int | None = None,  # None: settings.py's value of concurrency_setting
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
        if concurrency is None:
            from scraper import settings as defaults

            concurrency = int(getattr(defaults, self.concurrency_setting))
        self.concurrency = max(1, concurrency)
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.credentials = credentials or {}
        self.max_attempts = max(1, max_attempts)
        self.timeout = timeout
        self.attempts = 0  # PUT requests sent, retries included
        self.puts = 0
        self.lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    @property
    def sdk_retries(self) -> int:
        """Upload requests the client sent again (throttled, 5xx, connection lost)."""
        with self.lock:
            return max(0, self.attempts - self.puts)

    def _count_attempt(self, **_: Any) -> None:  # as a botocore hook: returns None
        with self.lock:
            self.attempts += 1

    def object_key(self, key: str) -> str:
        with self.lock:
            self.puts += 1
        return self.prefix + check_key(key)

    def session(self) -> Any:
        import boto3

        return boto3.session.Session(region_name=self.region_name, **self.credentials)

    def boto3_client(self, session: Any, pool: int) -> Any:
        from botocore.config import Config

        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                max_pool_connections=pool,
                # total_max_attempts counts the first try; botocore's max_attempts would not.
                retries={"mode": "standard", "total_max_attempts": self.max_attempts},
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
            ),
        )

    def check_bucket(self, client: Any) -> None:
        """StoreError with one line if the bucket is missing, refused or unreachable."""
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StoreError(f"S3 bucket {self.where} does not exist") from None
            if code in ("403", "AccessDenied"):
                raise StoreError(
                    f"S3 bucket {self.where}: access denied for these credentials"
                ) from None
            raise StoreError(f"S3 bucket {self.where}: {code}") from None
        except BotoCoreError as exc:
            raise StoreError(f"S3 bucket {self.where} unreachable: {type(exc).__name__}") from None


class Boto3S3BodyStore(_S3Store):
    """PUTs through boto3's ``put_object``, from the pipeline's upload threads."""

    transient_errors: tuple[type[BaseException], ...] = (BotoCoreError, ClientError)
    concurrency_setting = "BODY_STORE_THREADS"
    max_threads = 1024  # uploads wait on the network: BODY_STORE_THREADS decides

    client: Any = None

    def open(self) -> None:
        self.client = self.boto3_client(self.session(), self.concurrency)
        self.client.meta.events.register("before-send.s3.PutObject", self._count_attempt)
        self.check_bucket(self.client)

    def put(self, key: str, body: bytes, content_type: str | None, encoding: str | None) -> str:
        object_key = self.object_key(key)
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


class S3PutError(Exception):
    """A PUT that failed past the client's tries (5xx, throttling, the network): worth
    retrying later. The message is one short line: the status and S3's error code."""


_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([^<]{1,64})</Code>")


def _why(exc: BaseException) -> tuple[str, str]:
    """(HTTP status or "", one short line): obstore's message holds the whole request and
    S3's XML; keep what says why."""
    text = str(exc)
    status, code = _STATUS.search(text), _CODE.search(text)
    why = (
        " ".join(m.group(1) for m in (status, code) if m)
        or text.split("\n", 1)[0].rsplit(":", 1)[-1].strip()[:120]
        or type(exc).__name__
    )
    return (status.group(1) if status else ""), why


def _put_error(object_key: str, exc: BaseException) -> S3PutError:
    return S3PutError(f"PUT {object_key}: {_why(exc)[1]}")


def _obstore_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(retryable, refused) obstore errors: 5xx, throttling and the network are worth
    another try; a missing bucket or refused credentials are not."""
    from obstore import exceptions as e

    return (e.GenericError,), (
        e.NotFoundError,
        e.PermissionDeniedError,
        e.UnauthenticatedError,
        e.InvalidPathError,
    )


class ObstoreS3BodyStore(_S3Store):
    """PUTs through obstore, awaited on the event loop (``put_async``): no thread per
    upload; ``BODY_STORE_S3_IN_FLIGHT`` bounds the uploads in flight."""

    concurrency_setting = "BODY_STORE_S3_IN_FLIGHT"
    max_threads = 0  # the pipeline awaits put_async on the loop; open() runs in a thread

    def __init__(self, uri: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self.store: Any = None
        self.gate: asyncio.Semaphore | None = None
        self.retryable, self.refused = _obstore_errors()
        self.transient_errors = (S3PutError,)

    def open(self) -> None:
        from obstore.auth.boto3 import Boto3CredentialProvider
        from obstore.store import S3Store

        session = self.session()
        # Where boto3 would send it: the setting, else boto3's own environment variables.
        endpoint = (
            self.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        config: S3Config = {"region": session.region_name or "us-east-1"}
        if endpoint:  # an S3-compatible server: path-style, plain HTTP if it says so
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        self.store = S3Store(
            self.bucket,
            config=config,
            credential_provider=Boto3CredentialProvider(session),
            client_options={
                "allow_http": bool(endpoint and endpoint.startswith("http://")),
                "timeout": timedelta(seconds=self.timeout),
                "connect_timeout": timedelta(seconds=self.timeout),
            },
            retry_config={"max_retries": 0},  # ours, below: counted, and short
        )
        self._check_bucket()

    def _check_bucket(self) -> None:
        """What boto3's head_bucket tells (the same s3:ListBucket permission), through a
        one-key listing: a boto3 client would cost ~0.2 s of CPU to build, for one call."""
        import obstore

        try:
            next(iter(obstore.list(self.store, prefix=self.prefix or None, chunk_size=1)), None)
        except Exception as exc:
            from obstore import exceptions as e

            status, why = _why(exc)
            if isinstance(exc, e.NotFoundError) or status == "404":
                raise StoreError(f"S3 bucket {self.where} does not exist") from None
            if isinstance(exc, e.PermissionDeniedError | e.UnauthenticatedError) or status in (
                "401",
                "403",
            ):
                raise StoreError(
                    f"S3 bucket {self.where}: access denied for these credentials"
                ) from None
            if status:
                raise StoreError(f"S3 bucket {self.where}: {why}") from None
            raise StoreError(f"S3 bucket {self.where} unreachable: {why}") from None

    def _attributes(self, content_type: str | None, encoding: str | None) -> dict[str, str]:
        attributes = {"Content-Type": content_type or "application/octet-stream"}
        if encoding:
            attributes["Content-Encoding"] = encoding
        return attributes

    def _after_failure(self, object_key: str, attempt: int, exc: Exception) -> float:
        """Raise what a failed try means for the upload, or return the pause before the
        next try: refused (StoreError), out of tries (S3PutError), or not ours (as is)."""
        if isinstance(exc, self.refused):
            raise StoreError(
                f"S3 refused s3://{self.bucket}/{object_key}: {type(exc).__name__}"
            ) from None
        if not isinstance(exc, self.retryable):
            raise exc
        if attempt + 1 == self.max_attempts:
            raise _put_error(object_key, exc) from None
        return float(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))

    async def put_async(
        self, key: str, body: bytes, content_type: str | None, encoding: str | None
    ) -> str:
        import obstore

        object_key = self.object_key(key)
        attributes = self._attributes(content_type, encoding)
        if self.gate is None:
            self.gate = asyncio.Semaphore(self.concurrency)
        async with self.gate:
            for attempt in range(self.max_attempts):
                self._count_attempt()
                try:
                    await obstore.put_async(self.store, object_key, body, attributes=attributes)
                    return object_key
                except Exception as exc:  # sorted by _after_failure
                    pause = self._after_failure(object_key, attempt, exc)
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    def put(self, key: str, body: bytes, content_type: str | None, encoding: str | None) -> str:
        """The same from a thread (``scrapy replay``)."""
        import obstore

        object_key = self.object_key(key)
        attributes = self._attributes(content_type, encoding)
        for attempt in range(self.max_attempts):
            self._count_attempt()
            try:
                obstore.put(self.store, object_key, body, attributes=attributes)
                return object_key
            except Exception as exc:  # sorted by _after_failure
                pause = self._after_failure(object_key, attempt, exc)
            time.sleep(pause)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.store = None
