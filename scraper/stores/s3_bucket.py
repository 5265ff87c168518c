"""What both S3 clients share: the bucket and prefix the objects go to, the keys, the
counts of attempts, boto3's session (credentials, region, endpoint) and the bucket check
at open. See scraper/stores/s3.py for the choice between the clients."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from scraper.stores import StoreError, redact
from scraper.stores.body import check_key


class S3Bucket:
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
