"""The project's own signal, beside Scrapy's (scrapy.signals).

``request_done``: everything a request produced is stored, or it failed and produced
nothing to store. Sent with ``request=``. LeaseTracker sends it for callbacks' output;
a callback or errback that yields no item sends it itself (ListingSpider.list_failed).
In distributed mode the scheduler acknowledges the request's lease on it; in memory,
nothing listens.
"""

request_done = object()

#: A site answered with a wait (429/503 and Retry-After): sent by RetryAfterMiddleware with
#: ``site=`` (the download slot) and ``seconds=``. In distributed mode the scheduler tells
#: every node (scraper/distributed/queue.py ``pause``).
site_paused = object()
