"""BODY_STORE_S3_CLIENT=obstore (the default): PUTs through obstore (Rust's object_store),
awaited on the crawl's event loop, BODY_STORE_S3_IN_FLIGHT at a time."""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from scraper.stores import StoreError
from scraper.stores.s3_bucket import S3Bucket

if TYPE_CHECKING:
    from obstore.store import S3Config


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


class ObstoreS3BodyStore(S3Bucket):
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
