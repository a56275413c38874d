"""The cache: a :class:`Cache` protocol, Redis and in-process backends, and the fallback that joins them.

What it holds: the user's basic profile, read at every session start (``UserService.get_profile``, keyed by the
database's per-user version). Everything else a turn reads lives in the session's process (the memory index).
"""

from __future__ import annotations

from collections.abc import Callable

import redis.asyncio as aioredis

from infrastructure.cache.base import Cache, CacheParams
from infrastructure.cache.fallback import AvailabilityChanged, FallbackCache
from infrastructure.cache.local_cache import LocalCache
from infrastructure.cache.redis_cache import RedisCache
from infrastructure.metrics import Metrics

__all__ = [
    "AvailabilityChanged",
    "Cache",
    "CacheParams",
    "FallbackCache",
    "LocalCache",
    "RedisCache",
    "open_cache",
]


def open_cache(
    *,
    redis: aioredis.Redis | None,
    params: CacheParams,
    metrics: Metrics | None = None,
    on_availability_changed: Callable[[AvailabilityChanged], None] | None = None,
) -> FallbackCache | LocalCache:
    """Redis behind the in-process fallback; the in-process cache alone when Redis is not configured."""
    local = LocalCache(params=params, metrics=metrics)
    if redis is None:
        return local
    primary = RedisCache(redis=redis, params=params, metrics=metrics)
    return FallbackCache(primary=primary, fallback=local, params=params, metrics=metrics,
                         on_availability_changed=on_availability_changed)  # fmt: skip
