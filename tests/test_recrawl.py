"""Recurring crawls (issue 16): the same listing crawled again, unchanged, partly changed,
with children removed and added, and from a site without validators; for the local
stores and for S3 (moto) + MongoDB."""

from __future__ import annotations

import subprocess
import urllib.request
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
import redis
from scrapy import Request
from scrapy.utils.defer import deferred_f_from_coro_f
from twisted.python.failure import Failure

from scraper.items import meta_document
from scraper.previous import LISTING, PREVIOUS, Previous
from scraper.spiders.records import failed_child_record
from scraper.stores.meta import JsonLinesMetaStore
from scraper.testsite import in_change, render_child
from tests.helpers import (
    Node,
    Site,
    crawl,
    mongo_collection,
    read_jsonl,
    running_site,
    s3_client,
    s3_store,
    scrapy,
    store_settings,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from scrapy.crawler import Crawler

N = 200


@pytest.fixture(scope="module")
def changing_site(logs: Path) -> Iterator[Site]:
    """A site of this module's own: its tests change its pages and listing."""
    with running_site(logs / "recrawl-site.log") as site:
        yield site


def knob(site: Site, path: str) -> None:
    with urllib.request.urlopen(site.base + path, timeout=10) as r:
        r.read()


@pytest.fixture
def fresh_site(changing_site: Site) -> Iterator[Site]:
    for path in ("/_change?reset=1", "/_listing?reset=1", "/_validators?on=1"):
        knob(changing_site, path)
    yield changing_site
    for path in ("/_change?reset=1", "/_listing?reset=1", "/_validators?on=1"):
        knob(changing_site, path)


class Stores:
    """Where one test's crawls store, and how the test reads them back."""

    def __init__(
        self,
        settings: dict[str, Any],
        records: Callable[[], dict[str, dict[str, Any]]],
        body: Callable[[str], bytes],
    ) -> None:
        self.settings = settings
        self.records = records
        self.body = body


@pytest.fixture(params=["local", "s3-mongo"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    if request.param == "local":
        return Stores(
            store_settings(tmp_path),
            lambda: {d["fingerprint"]: d for d in read_jsonl(tmp_path / "meta.jsonl")},
            lambda key: (tmp_path / "bodies" / key).read_bytes(),
        )
    moto = request.getfixturevalue("moto")
    bucket = request.getfixturevalue("bucket")
    mongo_uri = request.getfixturevalue("mongo_uri")
    s3 = s3_client(moto.url)
    return Stores(
        store_settings(tmp_path, META_STORE=mongo_uri, **s3_store(moto.url, bucket)),
        lambda: {d["fingerprint"]: d for d in mongo_collection(mongo_uri).find()},
        lambda key: s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
    )


def name_of(doc: dict[str, Any]) -> str:
    return str(doc["url"].rsplit("/", 1)[1])


def stamp(value: Any) -> datetime:
    """A stored time: text in JSON Lines, a naive UTC datetime from MongoDB."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


async def crawl_again(
    site: Site, stores: Stores, **settings: Any
) -> tuple[dict[str, Any], dict[str, int]]:
    """One crawl of the listing: its stats, and what the site served meanwhile."""
    site.stats(reset=True)
    crawler: Crawler = await crawl(site.listing_url(N, per_page=50), **(stores.settings | settings))
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    assert stats["finish_reason"] == "finished"
    return stats, site.stats()


@deferred_f_from_coro_f
async def test_a_recrawl_stores_what_changed_and_says_what_is_gone(
    fresh_site: Site, stores: Stores
) -> None:
    site = fresh_site
    stats, served = await crawl_again(site, stores)
    assert stats["listing/children_new"] == N and stats["body_store/stored"] == N
    first = stores.records()
    assert len(first) == N
    first_crawl = {d["crawl_id"] for d in first.values()}
    assert len(first_crawl) == 1

    # Unchanged: every child a 304, no body downloaded, none stored.
    stats, served = await crawl_again(site, stores)
    assert stats["listing/children_unchanged"] == N, stats
    assert "body_store/stored" not in stats
    # Previous records read a list page at a time: one lookup (a MongoDB find) per page.
    assert stats["recrawl/lookups"] == stats["listing/list_pages"] == N // 50
    assert stats["recrawl/found"] == N
    assert served["not_modified"] == N and served["child_bytes"] == 0
    second = stores.records()
    assert len(second) == N
    for fp, doc in second.items():
        assert doc["unchanged"] is True and doc["status"] == 304
        assert doc["body_key"] == first[fp]["body_key"] and doc["sha256"] == first[fp]["sha256"]
        assert stamp(doc["first_seen"]) == stamp(first[fp]["first_seen"])
        assert stamp(doc["last_seen"]) > stamp(first[fp]["last_seen"])
        assert doc["changed_at"] is None and doc["gone_at"] is None
        assert doc["crawl_id"] not in first_crawl

    # 5% changed: exactly those downloaded and stored again, with changed_at.
    knob(site, "/_change?percent=5&seed=3")
    changed = {str(i) for i in range(N) if in_change(i, 5, 3)}
    assert changed
    stats, served = await crawl_again(site, stores)
    assert stats["listing/children_changed"] == len(changed)
    assert stats["listing/children_unchanged"] == N - len(changed)
    assert stats["body_store/stored"] == len(changed)
    assert served["not_modified"] == N - len(changed)
    third = stores.records()
    assert {name_of(d) for d in third.values() if d["changed_at"]} == changed
    for doc in third.values():
        if name_of(doc) in changed:
            assert doc["unchanged"] is False and doc["status"] == 200
            assert stores.body(doc["body_key"]) == render_child(name_of(doc), revision=1)
            assert stamp(doc["changed_at"]) == stamp(doc["fetched_at"])
        else:
            assert doc["unchanged"] is True

    # Children taken out of the listing are marked gone; new ones are stored.
    knob(site, "/_listing?drop=5&seed=8&add=10")  # the new ones are dropped at the same rate
    dropped = {str(i) for i in range(N) if in_change(i, 5, 8)}
    added = {str(i) for i in range(N, N + 10) if not in_change(i, 5, 8)}
    stats, served = await crawl_again(site, stores)
    assert stats["listing/children_gone"] == len(dropped)
    assert stats["listing/children_new"] == len(added)
    assert stats["body_store/stored"] == len(added)
    fourth = stores.records()
    assert len(fourth) == N + len(added)
    assert {name_of(d) for d in fourth.values() if d["gone_at"]} == dropped
    for doc in fourth.values():
        if name_of(doc) in added:
            assert stores.body(doc["body_key"]) == render_child(name_of(doc))
            assert doc["unchanged"] is False and doc["first_seen"] is not None

    # Linked again: no longer gone.
    knob(site, "/_listing?reset=1")
    stats, _ = await crawl_again(site, stores)
    assert stats["listing/children_gone"] == len(added)
    assert {name_of(d) for d in stores.records().values() if d["gone_at"]} == added


@deferred_f_from_coro_f
async def test_a_min_age_records_recent_children_as_linked_without_asking_the_site(
    fresh_site: Site, stores: Stores
) -> None:
    site = fresh_site
    await crawl_again(site, stores)
    first = stores.records()
    knob(site, "/_change?percent=5&seed=3")  # a change that children not asked do not show
    knob(site, "/_listing?drop=5&seed=8")
    dropped = {str(i) for i in range(N) if in_change(i, 5, 8)}
    changed = {str(i) for i in range(N) if in_change(i, 5, 3)} - dropped
    assert dropped and changed

    stats, served = await crawl_again(site, stores, RECRAWL_MIN_AGE=3600)
    assert stats["listing/children_recent"] == stats["listing/children"] == N - len(dropped)
    assert served["hits"] == stats["listing/list_pages"]  # not one child asked
    assert stats["meta_store/written"] == N - len(dropped)
    # A list page's recent children are one item: written together, not one write each.
    assert stats["meta_store/batches"] <= stats["listing/list_pages"]
    assert "body_store/stored" not in stats and "listing/children_not_crawled" not in stats
    assert stats["listing/children_gone"] == len(dropped)
    second = stores.records()
    assert {name_of(d) for d in second.values() if d["gone_at"]} == dropped
    new_crawl = {d["crawl_id"] for d in second.values() if not d["gone_at"]}
    assert len(new_crawl) == 1 and new_crawl.isdisjoint(d["crawl_id"] for d in first.values())
    kept = ("status", "fetched_at", "last_seen", "sha256", "body_key", "unchanged", "changed_at")
    for fp, doc in second.items():
        assert {k: doc[k] for k in kept} == {k: first[fp][k] for k in kept}

    # Older than the min age: asked again, and the change is found.
    stats, served = await crawl_again(site, stores, RECRAWL_MIN_AGE=0.01)
    assert "listing/children_recent" not in stats
    assert stats["listing/children_changed"] == len(changed)
    assert served["not_modified"] == N - len(dropped) - len(changed)


def test_a_child_whose_last_fetch_failed_is_asked_again_within_the_min_age(
    tmp_path: Path,
) -> None:
    path = tmp_path / "meta.jsonl"
    fp = "a" * 40
    t0, t1, t2 = (f"2026-12-0{d}T00:00:00+00:00" for d in (1, 2, 3))
    whole = {"fingerprint": fp, "sha256": "s" * 64, "body_key": fp, "fetched_at": t0}

    def previous_after(*docs: dict[str, Any]) -> Previous:
        store = JsonLinesMetaStore(path)
        store.open()
        store.write(list(docs))
        found = store.previous([fp])[fp]
        store.close()
        return found

    assert previous_after(whole).checked_at == t0
    not_modified = previous_after({"fingerprint": fp, "fetched_at": t1, "status": 304})
    assert not_modified.checked_at == t1 and not_modified.sha256 == "s" * 64
    day_after = datetime(2026, 12, 3, tzinfo=UTC)
    assert not_modified.checked_within(2 * 86400, day_after)
    assert not not_modified.checked_within(86400, day_after)
    failed = previous_after({"fingerprint": fp, "fetched_at": t2, "error": "HTTP 500"})
    assert failed.checked_at is None and not failed.checked_within(86400, day_after)
    assert Previous.of({**whole, "error": "HTTP 500"}).checked_at is None  # MongoDB's merged doc


@deferred_f_from_coro_f
async def test_a_site_without_validators_is_downloaded_but_not_stored_again(
    fresh_site: Site, stores: Stores
) -> None:
    site = fresh_site
    knob(site, "/_validators?on=0")
    await crawl_again(site, stores)
    stats, served = await crawl_again(site, stores)
    assert served["not_modified"] == 0 and served["child_bytes"] > 0
    assert stats["listing/children_unchanged"] == N
    assert "body_store/stored" not in stats
    docs = stores.records()
    assert all(d["unchanged"] is True and d["status"] == 200 for d in docs.values())
    assert all(stores.body(d["body_key"]) == render_child(name_of(d)) for d in docs.values())


class TwoNodes:
    """A listing crawled by two nodes, generation after generation (`scrapy seed`)."""

    def __init__(self, site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]) -> None:
        self.url = site.listing_url(N, per_page=50)
        self.redis_url, self.tmp_path, self.nodes = redis_url, tmp_path, nodes
        self.generation = 0

    def seed(self, *flags: str) -> subprocess.CompletedProcess[str]:
        redis = f"REDIS_URL={self.redis_url}"
        return scrapy("seed", "listing", self.url, *flags, "-s", redis, cwd=self.tmp_path)

    def crawl(self, *settings: str) -> list[dict[str, Any]]:
        """Both nodes' final stats."""
        self.generation += 1
        two = [
            Node(f"gen{self.generation}-node{i}", self.redis_url, self.tmp_path, *settings)
            for i in range(2)
        ]
        self.nodes.extend(two)
        assert [node.wait() for node in two] == [0, 0]
        return [node.stats() for node in two]


@pytest.fixture
def two(fresh_site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]) -> TwoNodes:
    return TwoNodes(fresh_site, redis_url, tmp_path, nodes)


def total(stats: list[dict[str, Any]], name: str) -> int:
    return sum(s.get(name, 0) for s in stats)


def test_two_nodes_crawl_a_listing_again_as_a_new_generation(
    fresh_site: Site, two: TwoNodes, tmp_path: Path
) -> None:
    site = fresh_site
    assert two.seed().returncode == 0
    first = two.crawl()
    assert total(first, "listing/children_new") == N
    assert total(first, "body_store/stored") == N

    knob(site, "/_change?percent=5&seed=3")
    knob(site, "/_listing?drop=5&seed=8")
    changed = {str(i) for i in range(N) if in_change(i, 5, 3) and not in_change(i, 5, 8)}
    dropped = {str(i) for i in range(N) if in_change(i, 5, 8)}
    result = two.seed("--recrawl")
    assert result.returncode == 0 and "a new generation" in result.stdout, result.stdout
    site.stats(reset=True)
    second = two.crawl()
    assert total(second, "listing/children_changed") == len(changed)
    assert total(second, "listing/children_unchanged") == N - len(changed) - len(dropped)
    assert total(second, "body_store/stored") == len(changed)
    assert total(second, "listing/children_gone") == len(dropped)  # marked once, not twice
    assert site.stats()["not_modified"] == N - len(changed) - len(dropped)

    docs = {d["fingerprint"]: d for d in read_jsonl(tmp_path / "meta.jsonl")}
    assert len(docs) == N
    assert {name_of(d) for d in docs.values() if d["gone_at"]} == dropped
    assert {name_of(d) for d in docs.values() if d["changed_at"]} == changed
    generations = {d["crawl_id"] for d in docs.values() if not d["gone_at"]}
    assert len(generations) == 1 and generations.isdisjoint(
        d["crawl_id"] for d in docs.values() if d["gone_at"]
    )
    for doc in docs.values():
        expected = render_child(name_of(doc), revision=1 if name_of(doc) in changed else 0)
        assert (tmp_path / "bodies" / doc["body_key"]).read_bytes() == expected


def test_two_nodes_with_a_min_age_record_recent_children_without_asking_the_site(
    fresh_site: Site, two: TwoNodes, tmp_path: Path
) -> None:
    site = fresh_site
    assert two.seed().returncode == 0
    assert total(two.crawl(), "listing/children_new") == N
    knob(site, "/_listing?drop=5&seed=8")
    dropped = {str(i) for i in range(N) if in_change(i, 5, 8)}
    assert two.seed("--recrawl").returncode == 0
    site.stats(reset=True)
    second = two.crawl("RECRAWL_MIN_AGE=3600")
    assert total(second, "listing/children_recent") == N - len(dropped)
    assert site.stats()["hits"] == total(second, "listing/list_pages")
    assert total(second, "listing/children_gone") == len(dropped)
    docs = {d["fingerprint"]: d for d in read_jsonl(tmp_path / "meta.jsonl")}
    assert {name_of(d) for d in docs.values() if d["gone_at"]} == dropped
    assert len({d["crawl_id"] for d in docs.values() if not d["gone_at"]}) == 1


def test_a_node_given_its_own_url_crawls_it_as_a_listing_of_the_generation(
    fresh_site: Site, redis_url: str, tmp_path: Path, nodes: list[Node]
) -> None:
    """`-a url=` on a node, no `scrapy seed`: the listing joins the crawl's generation as a
    seeded one does, so its records carry the generation's crawl id and the children it no
    longer links are marked gone (on a new Redis, the next day)."""
    site = fresh_site
    url = site.listing_url(N, per_page=50)

    def day(name: str) -> dict[str, Any]:
        node = Node(name, redis_url, tmp_path, url=url)
        nodes.append(node)
        assert node.wait() == 0
        return node.stats()

    assert day("day1")["listing/children_new"] == N
    knob(site, "/_listing?drop=5&seed=8")
    dropped = {str(i) for i in range(N) if in_change(i, 5, 8)}
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    first_id = client.hget("listing:crawl", "id")
    client.flushall()  # a new Redis: a new generation
    second = day("day2")
    second_id = client.hget("listing:crawl", "id")
    client.close()
    assert second["listing/children_gone"] == len(dropped)
    assert first_id and second_id and first_id != second_id
    docs = {d["fingerprint"]: d for d in read_jsonl(tmp_path / "meta.jsonl")}
    assert {name_of(d) for d in docs.values() if d["gone_at"]} == dropped
    assert {d["crawl_id"] for d in docs.values() if not d["gone_at"]} == {second_id}
    assert {d["crawl_id"] for d in docs.values() if d["gone_at"]} == {first_id}


def test_a_recrawl_is_refused_while_the_crawl_runs(redis_url: str, tmp_path: Path) -> None:
    args = ("-s", f"REDIS_URL={redis_url}")
    assert scrapy("seed", "listing", "http://127.0.0.1:9/list", *args, cwd=tmp_path).returncode == 0
    again = scrapy("seed", "listing", "http://127.0.0.1:9/list", "--recrawl", *args, cwd=tmp_path)
    assert again.returncode == 1
    assert "still crawling" in again.stdout and "nothing added" in again.stdout


@deferred_f_from_coro_f
async def test_body_store_versions_keeps_each_distinct_body(
    fresh_site: Site, tmp_path: Path
) -> None:
    site = fresh_site
    stores = Stores(
        store_settings(tmp_path, BODY_STORE_VERSIONS=True),
        lambda: {d["fingerprint"]: d for d in read_jsonl(tmp_path / "meta.jsonl")},
        lambda key: (tmp_path / "bodies" / key).read_bytes(),
    )
    await crawl_again(site, stores)
    first = stores.records()
    knob(site, "/_change?percent=5&seed=3")
    await crawl_again(site, stores)
    for fp, doc in stores.records().items():
        assert doc["body_key"].endswith(f"{fp}-{doc['sha256']}")
        if doc["changed_at"]:  # both versions kept, each under its own key
            assert doc["body_key"] != first[fp]["body_key"]
            assert stores.body(first[fp]["body_key"]) == render_child(name_of(doc))
            assert stores.body(doc["body_key"]) == render_child(name_of(doc), revision=1)
        else:
            assert doc["body_key"] == first[fp]["body_key"]


def test_the_json_lines_store_merges_partial_records_and_marks_gone_once(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    store = JsonLinesMetaStore(path)
    store.open()
    whole = {
        "fingerprint": "a" * 40,
        "listing": "http://x/list",
        "crawl_id": "c1",
        "status": 200,
        "headers": {"ETag": '"v1"', "Last-Modified": "Thu, 01 Jan 2026 00:00:00 GMT"},
        "sha256": "s" * 64,
        "body_key": "a" * 40,
        "first_seen": "2026-12-01T00:00:00+00:00",
        "changed_at": None,
        "gone_at": None,
    }
    other = {**whole, "fingerprint": "b" * 40, "body_key": "b" * 40}
    store.write([whole, other])
    assert store.previous(["a" * 40, "c" * 40]) == {
        "a" * 40: Previous(
            '"v1"', "Thu, 01 Jan 2026 00:00:00 GMT", "s" * 64, "a" * 40, whole["first_seen"], None
        )
    }
    # A 304 of the second crawl updates only its fields; the other child is no longer linked.
    store.write([{"fingerprint": "a" * 40, "crawl_id": "c2", "status": 304, "unchanged": True}])
    now = datetime(2026, 12, 3, tzinfo=UTC)
    assert store.mark_gone(["http://x/list"], "c2", now) == 1
    assert store.mark_gone(["http://x/list"], "c2", now) == 0  # marked once
    assert store.mark_gone(["http://elsewhere/list"], "c3", now) == 0  # another listing's
    store.close()
    docs = {d["fingerprint"]: d for d in read_jsonl(path)}
    assert len(read_jsonl(path)) == 2  # one line per fingerprint again
    assert docs["a" * 40] == {**whole, "crawl_id": "c2", "status": 304, "unchanged": True}
    assert docs["b" * 40] == {**other, "gone_at": now.isoformat()}


def test_a_failure_of_a_page_stored_before_keeps_its_body() -> None:
    request = Request(
        "http://x/page/1",
        meta={PREVIOUS: ['"v1"', None, "s" * 64, "a" * 40, None, None], LISTING: "http://x/l"},
        cb_kwargs={"fingerprint": "a" * 40, "listing_url": "http://x/l"},
    )
    failure = Failure(TimeoutError("took too long"))
    failure.request = request  # type: ignore[attr-defined]
    item = failed_child_record(failure, ["ETag"], 1000)
    document = meta_document(item)
    assert document["error"] and document["listing"] == "http://x/l"
    assert not {"body_key", "sha256", "headers", "first_seen", "changed_at"} & set(document)
    first_time = failed_child_record(_failure_without_previous(), ["ETag"], 1000)
    assert {"body_key", "sha256"} <= set(meta_document(first_time))  # a whole record


def _failure_without_previous() -> Failure:
    request = Request(
        "http://x/page/2", cb_kwargs={"fingerprint": "b" * 40, "listing_url": "http://x/l"}
    )
    failure = Failure(TimeoutError("took too long"))
    failure.request = request  # type: ignore[attr-defined]
    return failure
