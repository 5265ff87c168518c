"""The two storage pipelines: body first, then meta.

Both keep every network call off the reactor thread: S3 uploads run on a bounded
pool of threads, the meta store on one writer thread fed with batches. (A local
body folder is written in place: a 35 KB local write costs less than the thread
hand-off, see BODY_STORE_FS_THREADS.) An item leaves BodyStorePipeline only once
its body is stored, and MetaStorePipeline only once its batch is written, so a
finished item is a stored item. What a store still refuses after its retries is
spooled to local disk (scraper/spool.py) for `scrapy replay`: nothing is dropped.
"""

from scraper.pipelines.body import BodyStorePipeline
from scraper.pipelines.meta import MetaStorePipeline

__all__ = ["BodyStorePipeline", "MetaStorePipeline"]
