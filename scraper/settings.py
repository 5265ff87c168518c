"""Every default of the project in one place.

Override any of them per run with ``-s NAME=value`` (or per scrapyd job with
``-d setting=NAME=value``). Store URIs may also come from the environment
(``SCRAPER_BODY_STORE``, ``SCRAPER_META_STORE``) so that credentials in them
stay out of command lines.
"""

from __future__ import annotations

import os

from scraper.urls import TRACKING_PARAMS

BOT_NAME = "scraper"
SPIDER_MODULES = ["scraper.spiders"]
NEWSPIDER_MODULE = "scraper.spiders"

# --- Storage -------------------------------------------------------------------------------
# Where bodies go: "s3://bucket/prefix" or a local folder (the embedded default).
BODY_STORE = os.environ.get("SCRAPER_BODY_STORE", "data/bodies")
BODY_STORE_THREADS = 32  # S3 uploads in flight with boto3 (its threads and connections)
# How PUTs reach S3 (scraper/stores/s3.py): "obstore" (Rust, awaited on the event loop: ~0.3 ms
# of CPU per 35 KB PUT) or "boto3" (put_object in threads: ~3 ms). Both are configured by
# boto3's settings and credential chain.
BODY_STORE_S3_CLIENT = "obstore"
BODY_STORE_S3_IN_FLIGHT = 256  # obstore's PUTs in flight: no thread each (scraper/stores/s3.py)
BODY_STORE_FS_THREADS = 0  # a local folder is written on the reactor thread: cheaper than a
# thread hand-off per file; >0 for a network filesystem
BODY_STORE_GZIP = False  # gzip bodies (key gets ".gz", S3 ContentEncoding: gzip)
BODY_STORE_RETRY_TIMEOUT = 300  # seconds an item keeps retrying a failing store before its
# body is spooled; the crawl slows down meanwhile (back pressure)
BODY_STORE_S3_MAX_ATTEMPTS = 5  # the S3 client's tries per upload, the first included
BODY_STORE_SPOOL = "data/body-spool"  # bodies the store still refused after the retries: their
# records say body_pending; `scrapy replay` stores them
BODY_STORES: dict[str, str] = {}  # extra schemes: {"gs": "mypkg.GCSBodyStore"}
# Recurring crawls (scraper/recrawl.py): each child's previous record is read from META_STORE
# (conditional GET; an unchanged body is not stored again), and a complete crawl marks the
# records it no longer links gone_at.
RECRAWL = True
RECRAWL_MIN_AGE = 0  # seconds: a child the site gave or confirmed (200, 304) less than this ago
# is not asked again, its record only marked linked by this crawl; 0: every child is asked
BODY_STORE_VERSIONS = False  # keep each distinct body (key <fingerprint>-<sha256>), not the last

# Where meta documents go: "mongodb://host:27017/db" or a local JSON Lines file (the default).
META_STORE = os.environ.get("SCRAPER_META_STORE", "data/meta.jsonl")
META_STORE_COLLECTION = "pages"
META_STORE_BATCH_SIZE = 500  # documents per bulk_write
META_STORE_FLUSH_INTERVAL = 0.5  # seconds; an item waits at most this long for its batch
META_STORE_RETRY_TIMEOUT = 300
META_STORE_SPOOL = "data/meta-spool.jsonl"  # batches the store still refused after the retries
META_STORE_CONNECT_TIMEOUT_MS = 5000  # a wrong Mongo URI stops the crawl after this long
META_STORES: dict[str, str] = {}
# Response headers copied into the meta document.
META_HEADERS = [
    "Content-Type",
    "Content-Length",
    "Content-Encoding",
    "Last-Modified",
    "ETag",
    "Cache-Control",
    "Server",
]

ITEM_PIPELINES = {
    "scraper.canonical.CanonicalDedupPipeline": 50,  # only with DEDUP_CANONICAL
    "scraper.pipelines.BodyStorePipeline": 100,
    "scraper.pipelines.MetaStorePipeline": 200,  # after the body: meta never points at nothing
}

# --- Distributed mode (scraper/distributed/) -------------------------------------------------
# Set REDIS_URL (redis://[:password@]host:port/db, rediss:// for TLS) to crawl with many nodes
# from one Redis: keys <spider>:start_urls, :dupefilter as in scrapy-redis, one queue per site
# (scraper/distributed/queue.py). A Redis Cluster: REDIS_URL=redis+cluster://host:port,...
# or REDIS_CLUSTER_NODES=host:port,... (scraper/distributed/connection.py).
REDIS_URL = os.environ.get("SCRAPER_REDIS_URL")
REDIS_CLUSTER_NODES = None
REDIS_PASSWORD = os.environ.get("SCRAPER_REDIS_PASSWORD")  # if not in the URL; never logged
REDIS_PREFETCH = 100  # requests leased ahead per node (min with CONCURRENT_REQUESTS)
REDIS_LEASE_SECONDS = 120  # a dead node's requests go back to the queue after this
REDIS_MAX_ATTEMPTS = 5  # leases a request may lose (node deaths) before :dead
REDIS_IDLE_TIMEOUT = 30  # a node started before any seed waits this long for one
REDIS_WAIT_FOR_START_URLS = False  # True: never close, wait for new start URLs (RedisSpider)
REDIS_DUPEFILTER = "set"  # "bloom": bounded memory, REDIS_BLOOM_ERROR_RATE false "seen"s
REDIS_BLOOM_CAPACITY = 100_000_000
REDIS_BLOOM_ERROR_RATE = 0.001  # 1e8 requests at 1e-3: a 180 MB bitmap, 10 bits per request
# The queue's partitions, each on one shard of a cluster: None is 1 on one Redis, 24 on a
# cluster (about 8 per master of 3). The crawl's first node decides; the others follow it.
REDIS_PARTITIONS = None
COMMANDS_MODULE = "scraper.commands"  # scrapy seed, scrapy status, scrapy replay

# --- Concurrency ---------------------------------------------------------------------------
# Per site (scraper/sites.py, set by scraper/addon.py): a crawl whose list pages are all on
# one site is a site you own: CONCURRENT_REQUESTS_PER_DOMAIN follows CONCURRENT_REQUESTS
# (Scrapy's default of 8 per domain would silently cap `-s CONCURRENT_REQUESTS=1000` at 8).
# A crawl whose list pages span several sites gets CONCURRENT_REQUESTS_PER_SITE requests at
# once per site, CONCURRENT_REQUESTS in all, and a scheduler queue fair across sites. Your
# own CONCURRENT_REQUESTS_PER_DOMAIN wins in both cases.
CONCURRENT_REQUESTS = 100
# Scrapy's own per-domain default: what a site that is not yours sees from a Scrapy crawl
# with default settings, so 500 shops' list pages in one crawl load each of them no harder
# than any Scrapy project would; the crawl's speed comes from crawling many at once.
CONCURRENT_REQUESTS_PER_SITE = 8
# One item per page; Scrapy's default of 100 makes ~100 tasks per response and, at c=1000,
# the garbage collector then takes about half the CPU.
CONCURRENT_ITEMS = 1
# Responses stay "active" until their item is stored (body upload + meta batch). Scrapy's
# 5 MB default would stall a c=1000 crawl of 35 KB pages behind a single meta flush.
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 128 * 2**20
REACTOR_THREADPOOL_MAXSIZE = 20
DOWNLOAD_TIMEOUT = 60
DOWNLOAD_MAXSIZE = 32 * 2**20  # larger bodies end as a record with error, not in memory
DOWNLOAD_WARNSIZE = 8 * 2**20
RETRY_TIMES = 2

# --- What a list page gives (scraper/spiders/) ----------------------------------------------
LISTING_MAX_PAGES = 10000  # pagination stops here (an endless "next" chain must end)
# "content": every same-site link of a list page outside its navigation (<nav>,
# role=navigation, a page-level <header>/<footer>) and its pager; "all": navigation too.
LISTING_CHILDREN = "content"
# Query parameters removed from every discovered link before dedup (fnmatch patterns):
# one page linked with ?utm_source=... and without is one record.
URL_STRIP_PARAMS = list(TRACKING_PARAMS)
# True: a child whose <link rel="canonical"> is already stored (under another URL) ends as
# a record with duplicate_of and no second body (scraper/canonical.py).
DEDUP_CANONICAL = False
# A list page's fingerprint differs from a child's of the same URL (scraper/fingerprint.py):
# a URL linked both ways is crawled once as each.
REQUEST_FINGERPRINTER_CLASS = "scraper.fingerprint.ListingFingerprinter"

# Downloads through Scrapy's aiohttp handler (scraper/handlers.py): less CPU per page than
# the standard one (bench/RESULTS.md). -s DOWNLOAD_HANDLERS={} brings the standard one back.
DOWNLOAD_HANDLERS = {
    "http": "scraper.handlers.AiohttpHandler",
    "https": "scraper.handlers.AiohttpHandler",
}

# Scrapy's downloader, holding each slot's (site's) concurrency when many requests queue up
# at once (scraper/downloader.py: Scrapy 2.19 on asyncio starts them all).
DOWNLOADER = "scraper.downloader.Downloader"

# Scrapy's stats without its per-access deprecation shim (scraper/stats.py: 3% of the CPU).
STATS_CLASS = "scraper.stats.StatsCollector"
STATS_FILE = ""  # a path: the crawl's final stats written there as JSON (scraper/stats.py)

# --- What a listing crawl does not use (each costs CPU per page) --------------------------
COOKIES_ENABLED = False
REFERER_ENABLED = False
TELNETCONSOLE_ENABLED = False
REMOTE_CONTROL_ENABLED = False
WARN_ON_GENERATOR_RETURN_VALUE = False
METAREFRESH_ENABLED = False  # would search every body for <meta http-equiv="refresh">
DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.redirect.MetaRefreshMiddleware": None,
    "scrapy.downloadermiddlewares.redirect.RedirectMiddleware": None,
    "scraper.middlewares.ListingRedirectMiddleware": 600,
    "scraper.ssrf.SsrfGuard": 50,  # first: nothing else works on a request it refuses
    # Above RetryMiddleware (550): sees a 429/503 with Retry-After before it retries at once.
    "scraper.politeness.RetryAfterMiddleware": 560,
    "scrapy.downloadermiddlewares.httpauth.HttpAuthMiddleware": None,
    "scrapy.downloadermiddlewares.httpproxy.HttpProxyMiddleware": None,
}
SPIDER_MIDDLEWARES = {
    "scraper.recrawl.Recrawl": 100,  # only with RECRAWL
    "scrapy.spidermiddlewares.depth.DepthMiddleware": None,
    "scrapy.spidermiddlewares.urllength.UrlLengthMiddleware": None,
}
# The settings that follow from others (distributed mode when REDIS_URL is set, the
# per-site concurrency and scheduler queue of one site or many) are wired in one place:
# scraper/addon.py.
ADDONS = {"scraper.addon.ListingCrawl": 0}
EXTENSIONS = {
    "scraper.logsetup.LogSetup": 0,  # first: secrets never reach the log
    "scrapy.extensions.logstats.LogStats": None,  # replaced by the progress line
    "scraper.progress.Progress": 500,
    "scraper.gctuning.GcThresholds": 500,
    "scraper.jobdir.JobdirGuard": 500,  # only with JOBDIR
    "scraper.metrics.Metrics": 500,  # only with METRICS_PORT
    "scraper.checks.Checks": 900,  # after CoreStats: may change finish_reason
}
# Python's (700, 10, 10) costs ~10% CPU at c=1000; 50,000 still cost a distributed node
# ~1 s of GC per 10,000 pages, 200,000 costs 0.03 s (stats gc/*); [] keeps Python's.
GC_THRESHOLDS = [200000, 10, 10]
PROGRESS_INTERVAL = 5.0  # seconds between progress lines; 0 turns them off
PROGRESS_BAR = True  # a live bar when stderr is a terminal (scraper/progress_bar.py)

# --- Checks (scraper/checks.py) -------------------------------------------------------------
# A crawl that ends "finished" but breaks one of these ends "checks_failed" instead: one
# ERROR line per broken check, and `scrapy crawl` exits 2 (scrapyd, cron, CI see it). A share
# is broken when above its limit (1 turns it off); the defaults catch the obvious: (nearly)
# every child failed, nothing reached the stores, a request lost for good. Distributed: each
# node judges its own stats, and CHECK_MIN_STORED is not judged per node.
CHECKS_ENABLED = True
CHECK_MAX_FAILED_SHARE = 0.9  # children that failed (HTTP error, timeout, robots, ...)
CHECK_MAX_SPOOLED_SHARE = 0.9  # bodies, or records, spooled instead of stored
CHECK_MAX_DEAD_SHARE = 0.0  # distributed: requests moved to <spider>:dead (no record at all)
CHECK_MIN_STORED = 1  # records written to META_STORE; 0 turns it off

# --- Metrics (scraper/metrics.py, docs/operations.md) -------------------------------------
# A port: each node serves /metrics for Prometheus there while it crawls; 0: any free port
# (logged, one INFO line with the URL); None: off. Read at scrape time from the stats: a page
# costs nothing more.
METRICS_PORT = None
# Loopback by default: a crawl never opens a port to the network unless told to. For a
# Prometheus on another host, -s METRICS_HOST=0.0.0.0 (or the node's private address).
METRICS_HOST = "127.0.0.1"
# Seconds /metrics stays up after the crawl ends, until one scrape has read the final
# figures: set it to Prometheus' scrape interval, or the last seconds of a crawl are lost.
METRICS_LINGER = 0

# --- Safety (scraper/ssrf.py) --------------------------------------------------------------
# Requests and redirects to loopback, private, link-local (169.254.169.254: cloud metadata),
# multicast or reserved addresses are refused, checked after DNS resolution, unless their
# network is listed here (CIDRs). Env SCRAPER_ALLOWED_NETWORKS: comma-separated; the tests,
# the demo and the benchmarks crawl the local test site with 127.0.0.1/32.
ALLOWED_NETWORKS = [
    network.strip()
    for network in os.environ.get("SCRAPER_ALLOWED_NETWORKS", "").split(",")
    if network.strip()
]

# --- Politeness (scraper/politeness.py) --------------------------------------------------
# The crawl is meant for sites you own or may load hard: no DOWNLOAD_DELAY, no AutoThrottle,
# per-site concurrency follows CONCURRENT_REQUESTS. For anyone else's site lower
# CONCURRENT_REQUESTS and set DOWNLOAD_DELAY / AUTOTHROTTLE_ENABLED. What stays on:
# robots.txt is obeyed (as in a new Scrapy project; a disallowed child ends as a record
# saying so), and a site that answers 429/503 with Retry-After is slowed down and retried
# after the time it states. -s ROBOTSTXT_OBEY=False for a site you own.
ROBOTSTXT_OBEY = True
RETRY_AFTER_ENABLED = True  # honour Retry-After: slow the site's slot, retry after the wait
RETRY_AFTER_HTTP_CODES = [429, 503]  # answers whose Retry-After is honoured
RETRY_AFTER_DEFAULT = 5  # seconds to wait on a 429 without a (readable) Retry-After
RETRY_AFTER_MAX = 300  # a longer stated wait is not waited for: the page ends as a record
RETRY_AFTER_TIMES = 5  # retries per request on push-back, apart from RETRY_TIMES
RETRY_AFTER_RECOVER_STEP = 2  # successes (after the wait) per recovery step of a slowed site:
# its delay halves, then its concurrency doubles, back to its own
USER_AGENT = "scraper/0.1"

# --- Logging -------------------------------------------------------------------------------
# DEBUG logs a line per request and per item: at 1,000 pages/s that is the crawl's main cost.
LOG_LEVEL = "INFO"

FEED_EXPORT_ENCODING = "utf-8"
