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

from typing import TYPE_CHECKING

from scraper.stores import StoreError
from scraper.stores.s3_boto3 import Boto3S3BodyStore
from scraper.stores.s3_obstore import ObstoreS3BodyStore

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

__all__ = ["Boto3S3BodyStore", "ObstoreS3BodyStore", "S3BodyStore"]

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
