"""GcThresholds: raised thresholds during the crawl, restored after, collections counted."""

from __future__ import annotations

import gc
from pathlib import Path

from scrapy.utils.defer import deferred_f_from_coro_f

from tests.helpers import Site, assert_children_recorded, crawl, records, store_settings


@deferred_f_from_coro_f
async def test_collections_are_counted_and_thresholds_restored(site: Site, tmp_path: Path) -> None:
    before, callbacks = gc.get_threshold(), list(gc.callbacks)
    crawler = await crawl(
        site.listing_url(100, per_page=50),
        GC_THRESHOLDS=[200, 10, 10],
        **store_settings(tmp_path),
    )

    stats = crawler.stats.get_stats()
    assert stats["meta_store/written"] == 100
    assert stats["gc/collections/gen0"] > 0
    assert stats["gc/seconds/gen0"] > 0
    assert gc.get_threshold() == before
    assert gc.callbacks == callbacks
    assert_children_recorded(stats, len(records(tmp_path)))
