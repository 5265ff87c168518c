"""What the JSON Lines meta store's re-crawl index costs: memory and load time per record.

    python -m bench.jsonl_index [--records 100000]

Writes that many whole records (as a crawl of the test site writes them: every field,
ETag and Last-Modified among the headers) to a file in a temporary folder, then opens
the store and loads its index (``previous``) the way a re-crawl does, measuring the time
the load takes, then the memory the index holds (a second load under tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

from scraper.items import PageItem, meta_document
from scraper.stores.meta import JsonLinesMetaStore


def record(i: int, now: datetime) -> dict[str, object]:
    fingerprint = hashlib.sha1(str(i).encode()).hexdigest()
    item = PageItem(
        fingerprint=fingerprint,
        url=f"https://shop.example/products/item-{i}",
        listing_url="https://shop.example/collections/all?page=3",
        listing="https://shop.example/collections/all",
        crawl_id="20261204T170000Z-a1b2c3",
        fetched_at=now,
        first_seen=now,
        last_seen=now,
        final_url=f"https://shop.example/products/item-{i}",
        status=200,
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "ETag": f'"{fingerprint[:16]}"',
            "Last-Modified": "Thu, 03 Dec 2026 10:00:00 GMT",
        },
        content_type="text/html; charset=utf-8",
        length=35_000,
        sha256=hashlib.sha256(fingerprint.encode()).hexdigest(),
        title=f"Item {i}",
        elapsed=0.1,
        body_key=fingerprint,
        unchanged=False,
    )
    return meta_document(item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="jsonl-index-") as folder:
        path = Path(folder) / "meta.jsonl"
        store = JsonLinesMetaStore(path)
        store.open()
        for start in range(0, args.records, 1000):
            store.write([record(i, now) for i in range(start, min(start + 1000, args.records))])
        store.close()
        size = path.stat().st_size

        store = JsonLinesMetaStore(path)
        store.open()
        started = time.perf_counter()
        store.previous([])
        seconds = time.perf_counter() - started
        store.close()

        store = JsonLinesMetaStore(path)
        store.open()
        gc.collect()
        tracemalloc.start()
        store.previous([])
        gc.collect()
        held, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert store.index is not None and len(store.index) == args.records
        store.close()
    n = args.records
    print(
        f"{n} records ({size / n:.0f} B a line): index {held / 1e6:.1f} MB "
        f"({held / n:.0f} B a record), loaded in {seconds:.2f} s ({1e6 * seconds / n:.1f} us "
        "a record)"
    )


if __name__ == "__main__":
    main()
