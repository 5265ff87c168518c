"""A bad setting stops `scrapy crawl` at start with one clear line, not a traceback."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import pytest

from scraper.logsetup import secrets_in
from scraper.stores import redact
from scraper.testsite import free_port
from tests.helpers import (
    S3_CREDENTIALS,
    Server,
    Site,
    assert_children_recorded,
    records,
    scrapy_crawl,
)

if TYPE_CHECKING:
    from pathlib import Path


def error_lines(output: str) -> list[str]:
    return [line.split("] ERROR: ", 1)[1] for line in output.splitlines() if "] ERROR: " in line]


def run(site: Site, tmp_path: Path, *settings: str) -> tuple[str, dict[str, Any]]:
    args = ["-a", f"url={site.listing_url(5)}"]
    for setting in settings:
        args += ["-s", setting]
    result = scrapy_crawl(args, cwd=tmp_path, timeout=120)
    assert "Traceback" not in result.output
    assert result.returncode == 1  # a crawl that could not start says so to its scheduler
    return result.output, result.stats


@pytest.mark.parametrize(
    ("setting", "reason", "message"),
    [
        (
            "BODY_STORE=ftp://files.example/bodies",
            "body_store_unusable",
            "BODY_STORE unusable, crawl stopped: BODY_STORE='ftp://files.example/bodies': unknown "
            "scheme 'ftp' (use file://, s3://, or a local path)",
        ),
        (
            "META_STORE=redis://127.0.0.1/0",
            "meta_store_unusable",
            "META_STORE unusable, crawl stopped: META_STORE='redis://127.0.0.1/0': unknown scheme "
            "'redis' (use file://, mongodb://, mongodb+srv://, or a local path)",
        ),
        (
            "BODY_STORE=s3://",
            "body_store_unusable",
            "BODY_STORE unusable, crawl stopped: BODY_STORE='s3://' names no bucket (s3://bucket/prefix)",
        ),
    ],
)
def test_unknown_or_incomplete_store_uri(
    site: Site, tmp_path: Path, setting: str, reason: str, message: str
) -> None:
    output, stats = run(site, tmp_path, setting)
    assert stats["finish_reason"] == reason
    assert error_lines(output) == [message]
    # Never started: 0 children, and no record in the default META_STORE (nor in the
    # unusable one, when that is the bad setting).
    assert_children_recorded(stats, len(records(tmp_path / "data")))


def test_missing_bucket(site: Site, moto: Server, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{moto.port}"
    output, stats = run(
        site,
        tmp_path,
        "BODY_STORE=s3://not-there/x",
        f"AWS_ENDPOINT_URL={endpoint}",
        "AWS_REGION_NAME=us-east-1",
        *(f"{k}={v}" for k, v in S3_CREDENTIALS.items()),
    )
    assert stats["finish_reason"] == "body_store_unusable"
    assert error_lines(output) == [
        f"BODY_STORE unusable, crawl stopped: S3 bucket s3://not-there at {endpoint} does not exist"
    ]
    assert S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in output
    assert_children_recorded(stats, len(records(tmp_path / "data")))


def test_unreachable_mongo_with_password_in_uri(site: Site, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    output, stats = run(
        site,
        tmp_path,
        f"META_STORE=mongodb://crawler:s3cr3t-pw@127.0.0.1:{port}/pages",
        "META_STORE_CONNECT_TIMEOUT_MS=300",
    )
    assert stats["finish_reason"] == "meta_store_unusable"
    assert error_lines(output) == [
        f"META_STORE unusable, crawl stopped: MongoDB at mongodb://crawler:***@127.0.0.1:{port}"
        "/pages unusable: no server answered within 300 ms"
    ]
    assert "s3cr3t-pw" not in output
    assert not (tmp_path / "data" / "bodies").exists() or not any(
        (tmp_path / "data" / "bodies").iterdir()
    )
    assert_children_recorded(stats, 0)  # never started: its Mongo is unreachable


@pytest.mark.parametrize(
    ("setting", "reason", "message"),
    [
        (
            "REDIS_DUPEFILTER=bitmap",
            "redis_dupefilter_unusable",
            "REDIS_DUPEFILTER unusable, crawl stopped: use 'set' or 'bloom', not 'bitmap'",
        ),
        (
            "REDIS_BLOOM_CAPACITY=0",
            "redis_bloom_capacity_unusable",
            "REDIS_BLOOM_CAPACITY unusable, crawl stopped: 0: must be at least 1",
        ),
        (
            "REDIS_BLOOM_ERROR_RATE=1.5",
            "redis_bloom_error_rate_unusable",
            "REDIS_BLOOM_ERROR_RATE unusable, crawl stopped: 1.5: must be between 0 and 1",
        ),
    ],
    ids=["dupefilter", "bloom-capacity", "bloom-error-rate"],
)
def test_a_bad_distributed_setting_stops_the_node_with_one_line(
    site: Site, redis_url: str, tmp_path: Path, setting: str, reason: str, message: str
) -> None:
    extra = [] if setting.startswith("REDIS_DUPEFILTER") else ["REDIS_DUPEFILTER=bloom"]
    output, stats = run(site, tmp_path, f"REDIS_URL={redis_url}", *extra, setting)
    assert stats["finish_reason"] == reason
    assert error_lines(output) == [message]
    assert_children_recorded(stats, len(records(tmp_path / "data")))


def test_mongo_refusing_the_crawl_says_why_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers but refuses (wrong password, no rights): its error's name,
    and the URI without its password."""
    from pymongo.errors import OperationFailure

    from scraper.stores import StoreError
    from scraper.stores.meta import MongoMetaStore

    class Refusing:
        def __init__(self, uri: str, **_: object) -> None:
            self.admin = self

        def __getitem__(self, name: str) -> Refusing:
            return self

        def get_default_database(self) -> Refusing:
            return self

        def command(self, name: str) -> None:
            raise OperationFailure(
                "Authentication failed.", code=18, details={"codeName": "AuthenticationFailed"}
            )

        def close(self) -> None:
            pass

    monkeypatch.setattr(MongoMetaStore, "client_class", Refusing)
    store = MongoMetaStore("mongodb://crawler:s3cret@127.0.0.1:27017/crawl")
    with pytest.raises(StoreError) as refused:
        store.open()
    assert str(refused.value) == (
        "MongoDB at mongodb://crawler:***@127.0.0.1:27017/crawl refused: AuthenticationFailed"
    )


def test_redact_hides_uri_passwords() -> None:
    assert redact("mongodb://u:p%40ss@h:1/db") == "mongodb://u:***@h:1/db"
    assert redact("redis://:pw@h/0") == "redis://:***@h/0"
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


def test_secrets_are_found_in_settings() -> None:
    settings = {
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "META_STORE": "mongodb://u:p%40ss@h/db",
        "REDIS_URL": "redis://:redis-pw@h:6379/0",
        "BODY_STORE": "data/bodies",
    }
    assert secrets_in(settings) == {"aws-secret", "p%40ss", "p@ss", "redis-pw"}


def test_crawl_without_a_list_page_or_with_redis_down_exits_1(tmp_path: Path) -> None:
    no_url = scrapy_crawl([], cwd=tmp_path, timeout=120)
    assert no_url.returncode == 1
    assert "No list page given: run `scrapy crawl listing -a url=<list page URL>`" in (
        no_url.output
    )
    assert no_url.stats["finish_reason"] == "no_url"
    assert datetime.fromisoformat(no_url.stats["start_time"]).tzinfo is not None  # STATS_FILE
    assert_children_recorded(no_url.stats, len(records(tmp_path / "data")))

    port = free_port()  # nothing listens there
    redis_down = scrapy_crawl(
        ["-s", f"REDIS_URL=redis://:pw-not-shown@127.0.0.1:{port}/0"], cwd=tmp_path, timeout=120
    )
    output = redis_down.output
    assert redis_down.returncode == 1
    assert redis_down.stats["finish_reason"] == "redis_unusable"
    assert "REDIS_URL unusable, crawl stopped" in output and "pw-not-shown" not in output
    assert "Traceback" not in output and len(error_lines(output)) == 1
    assert_children_recorded(redis_down.stats, len(records(tmp_path / "data")))
