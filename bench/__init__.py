"""Benchmarks: our crawl side by side with the Celery + gevent setup and the bare-client limit."""
