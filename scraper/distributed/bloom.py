"""A Bloom filter's bit positions for the dedup in Redis (REDIS_DUPEFILTER = "bloom")."""

from __future__ import annotations

import math

from scraper.config import ConfigError


class BloomFilter:
    """Bit positions of a Bloom filter sized for ``capacity`` requests at ``error_rate``.

    Memory is m bits in one Redis string (at most 2**32 bits, 512 MiB), instead of a
    set holding every fingerprint (~100 bytes each): 1e8 requests at 1e-3 take 180 MB
    instead of ~10 GB. The cost: a new request is taken for a seen one (and skipped)
    with probability ``error_rate``. Positions come from the fingerprint's own bits
    (double hashing), so every node computes the same ones.
    """

    def __init__(self, capacity: int, error_rate: float) -> None:
        if capacity < 1:
            raise ConfigError("REDIS_BLOOM_CAPACITY", f"{capacity}: must be at least 1")
        if not 0 < error_rate < 1:
            raise ConfigError("REDIS_BLOOM_ERROR_RATE", f"{error_rate}: must be between 0 and 1")
        self.capacity, self.error_rate = capacity, error_rate
        self.bits = math.ceil(-capacity * math.log(error_rate) / math.log(2) ** 2)
        if self.bits > 2**32:
            raise ConfigError(
                "REDIS_BLOOM_CAPACITY",
                f"a Bloom filter for {capacity} requests at {error_rate} needs "
                f"{self.bits} bits; Redis strings hold 2**32",
            )
        self.hashes = max(1, round(self.bits / capacity * math.log(2)))

    def split(self, parts: int) -> BloomFilter:
        """The filter of one of ``parts`` partitions: each holds its share of the requests."""
        return BloomFilter(math.ceil(self.capacity / parts), self.error_rate)

    def key(self, fingerprint: str) -> str:
        """The dedup key of a hex fingerprint: ``#`` and its bit positions."""
        h1, h2 = int(fingerprint[:16], 16), int(fingerprint[16:32], 16) | 1
        return "#" + ",".join(str((h1 + i * h2) % self.bits) for i in range(self.hashes))
