"""BODY_STORE_S3_CLIENT=boto3: boto3's ``put_object`` on the pipeline's upload threads."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from scraper.stores import StoreError
from scraper.stores.s3_bucket import S3Bucket


class Boto3S3BodyStore(S3Bucket):
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
