"""The cluster tests' Redis: `benchmarks.cluster_redis` (the benchmark starts
its server the same way)."""

from __future__ import annotations

from benchmarks.cluster_redis import REDIS_SERVER, RedisServer, free_port

__all__ = ["REDIS_SERVER", "RedisServer", "free_port"]
