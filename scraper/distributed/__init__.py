"""Distributed crawling: many nodes, one crawl, one Redis (switched on by REDIS_URL)."""
