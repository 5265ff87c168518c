"""What a meta document costs the crawling process, per store, apart from any crawl.

    python -m bench.meta_cost --docs 10000 --batch 500

No MongoDB server can be installed here, and mongomock (a Python emulation of one) costs
more per document than a real server's client ever would, and grows with the collection
(its upserts scan it): in a crawl it sets the pace and measures itself. So the MongoDB
path is taken apart, in this process, on documents shaped as the crawl writes them:

- ``bson``: pymongo's BSON encoding of each document (C): what any real server costs the
  client per document before the socket;
- ``ops``: building the ``ReplaceOne`` upserts that ``MongoMetaStore.write`` sends;
- ``mongomock``: ``MongoMetaStore.write`` (``bulk_write``, unordered upserts) against
  mongomock, each batch into an empty collection so that its scans stay short: an upper
  bound of the emulation, not of a server;
- ``jsonl``: ``JsonLinesMetaStore.write`` (the embedded default), to a file on tmpfs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def documents(n: int) -> list[dict[str, Any]]:
    """Meta documents as MetaStorePipeline hands them over (PageItem fields, no body)."""
    now = datetime.now(UTC)
    return [
        {
            "fingerprint": f"{i:040x}",
            "url": f"http://127.0.0.1:8347/page/{i}",
            "listing_url": "http://127.0.0.1:8347/list?n=10000&per_page=1000&page=1",
            "fetched_at": now,
            "final_url": f"http://127.0.0.1:8347/page/{i}",
            "status": 200,
            "headers": {
                "Content-Type": "text/html; charset=utf-8",
                "Content-Length": "35210",
                "Server": "Python/3.11 aiohttp/3.14",
            },
            "content_type": "text/html; charset=utf-8",
            "length": 35210,
            "sha256": "ab" * 32,
            "title": f"Child page {i}",
            "elapsed": 0.1032,
            "error": None,
            "canonical_url": None,
            "duplicate_of": None,
            "body_key": f"{i:040x}"[:2] + f"/{i:040x}",
            "body_pending": False,
        }
        for i in range(n)
    ]


def per_doc_us(fn: Any, docs: list[dict[str, Any]], batch: int) -> float:
    started = time.process_time()
    for k in range(0, len(docs), batch):
        fn(docs[k : k + batch], k)
    return 1e6 * (time.process_time() - started) / len(docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()

    import bson
    from pymongo import ReplaceOne

    from bench.servers import use_mongomock
    from scraper.stores.meta import JsonLinesMetaStore, MongoMetaStore

    docs = documents(args.docs)
    use_mongomock()
    results = {
        "bson": per_doc_us(lambda batch, _: [bson.encode(d) for d in batch], docs, args.batch),
        "ops": per_doc_us(
            lambda batch, _: [
                ReplaceOne({"_id": d["fingerprint"]}, {**d, "_id": d["fingerprint"]}, upsert=True)
                for d in batch
            ],
            docs,
            args.batch,
        ),
    }
    stores = {}  # one database per batch, opened beforehand: an empty collection each
    for k in range(0, len(docs), args.batch):
        stores[k] = MongoMetaStore(f"mongodb://127.0.0.1:27017/meta_cost_{k}")
        stores[k].open()
    results["mongomock"] = per_doc_us(lambda batch, k: stores[k].write(batch), docs, args.batch)
    with tempfile.TemporaryDirectory(
        dir="/dev/shm" if Path("/dev/shm").is_dir() else None
    ) as folder:
        jsonl = JsonLinesMetaStore(Path(folder) / "meta.jsonl")
        jsonl.open()
        results["jsonl"] = per_doc_us(lambda batch, _: jsonl.write(batch), docs, args.batch)
        jsonl.close()
    print(
        f"{args.docs} meta documents in batches of {args.batch}, CPU per document (this process):"
    )
    print("| path | us per document |\n|---|---|")
    for name, value in results.items():
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
