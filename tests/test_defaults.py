"""Every constructor default that a setting also sets is the setting's value in
settings.py: a component built by hand (tests, `scrapy replay`, a user's script) behaves as
the crawl that builds it from the settings."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from scrapy.settings import Settings

from scraper import settings as project_settings
from scraper.distributed.scheduler import DistributedScheduler
from scraper.pipelines import BodyStorePipeline, MetaStorePipeline
from scraper.stores.body import FSBodyStore
from scraper.stores.meta import MongoMetaStore
from scraper.stores.s3 import Boto3S3BodyStore, ObstoreS3BodyStore
from scraper.stores.s3_bucket import S3Bucket

#: (class, constructor parameter) -> the setting its from_crawler passes there.
SETTING_OF: dict[tuple[type, str], str] = {
    (BodyStorePipeline, "threads"): "BODY_STORE_THREADS",
    (BodyStorePipeline, "gzip"): "BODY_STORE_GZIP",
    (BodyStorePipeline, "retry_timeout"): "BODY_STORE_RETRY_TIMEOUT",
    (BodyStorePipeline, "spool"): "BODY_STORE_SPOOL",
    (MetaStorePipeline, "batch_size"): "META_STORE_BATCH_SIZE",
    (MetaStorePipeline, "flush_interval"): "META_STORE_FLUSH_INTERVAL",
    (MetaStorePipeline, "retry_timeout"): "META_STORE_RETRY_TIMEOUT",
    (MetaStorePipeline, "spool"): "META_STORE_SPOOL",
    (FSBodyStore, "threads"): "BODY_STORE_FS_THREADS",
    (MongoMetaStore, "collection"): "META_STORE_COLLECTION",
    (MongoMetaStore, "connect_timeout_ms"): "META_STORE_CONNECT_TIMEOUT_MS",
    (S3Bucket, "max_attempts"): "BODY_STORE_S3_MAX_ATTEMPTS",
    (DistributedScheduler, "prefetch"): "REDIS_PREFETCH",
    (DistributedScheduler, "lease_seconds"): "REDIS_LEASE_SECONDS",
    (DistributedScheduler, "max_attempts"): "REDIS_MAX_ATTEMPTS",
    (DistributedScheduler, "idle_timeout"): "REDIS_IDLE_TIMEOUT",
    (DistributedScheduler, "wait_for_start_urls"): "REDIS_WAIT_FOR_START_URLS",
}

SETTINGS = Settings()
SETTINGS.setmodule(project_settings)


def default_of(cls: type, name: str) -> Any:
    parameter = inspect.signature(cls.__init__).parameters[name]
    assert parameter.default is not inspect.Parameter.empty, f"{cls.__name__}({name}) has none"
    return parameter.default


@pytest.mark.parametrize(("cls", "name"), list(SETTING_OF), ids=lambda x: getattr(x, "__name__", x))
def test_constructor_defaults_are_the_settings(cls: type, name: str) -> None:
    setting = SETTING_OF[cls, name]
    assert setting in SETTINGS, f"{setting} is not in settings.py"
    default = default_of(cls, name)
    expected = type(default)(SETTINGS.get(setting)) if default is not None else None
    if isinstance(default, bool):
        expected = SETTINGS.getbool(setting)
    assert default == expected, f"{cls.__name__}({name}={default!r}) but {setting}={expected!r}"


@pytest.mark.parametrize("store", [ObstoreS3BodyStore, Boto3S3BodyStore])
def test_each_s3_client_gets_its_own_window(store: type[S3Bucket]) -> None:
    """The PUTs in flight: the setting of the client that sends them, its value in
    settings.py when the store is built without one."""
    setting = {
        ObstoreS3BodyStore: "BODY_STORE_S3_IN_FLIGHT",
        Boto3S3BodyStore: "BODY_STORE_THREADS",
    }[store]
    assert store.concurrency_setting == setting
    assert store("s3://bucket/").concurrency == SETTINGS.getint(setting)
    assert store("s3://bucket/", concurrency=3).concurrency == 3
