"""The cache on Redis, and nothing else: a failure raises a typed :class:`~core.errors.CacheError`.

Keys. Under ``prefix``: a user's entry is ``{prefix}:u:{user}:{version}:{key}``, the version at ``{prefix}:uv:{user}``;
``invalidate_user`` bumps the version, so every entry of that user vanishes for every worker at once (the old ones
expire by their TTL). A key's generation (``{prefix}:kg:...``, bumped by ``delete``) and the version make the token
that ``get_or_load`` checks before it stores: each script is one round trip.

Errors. Unreachable, timed out or read-only (a replica after a failover: it answers reads but would miss an
invalidation) is :class:`~core.errors.CacheUnavailableError`, retryable; any other refusal is a CacheError that is
not. The client's connections belong to the process (``services/container.py`` closes them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.errors import CacheError, CacheUnavailableError
from infrastructure.cache.base import CacheParams, Load, UserId, encode, scope_of, ttl_seconds
from infrastructure.metrics import Metrics, flag

logger = logging.getLogger("companion.cache")

# KEYS: the version key, the generation key. ARGV: the entry base, the key. Returns version, generation, value.
_GET = """
local version = redis.call('GET', KEYS[1]) or '0'
local generation = redis.call('GET', KEYS[2]) or '0'
return {version, generation, redis.call('GET', ARGV[1] .. version .. ':' .. ARGV[2])}
"""
# KEYS: version key, generation key. ARGV: base, key, value, ttl_ms, expected token ('' = no check).
_SET = """
local version = redis.call('GET', KEYS[1]) or '0'
if ARGV[5] ~= '' and ARGV[5] ~= version .. ':' .. (redis.call('GET', KEYS[2]) or '0') then return 0 end
redis.call('SET', ARGV[1] .. version .. ':' .. ARGV[2], ARGV[3], 'PX', ARGV[4])
return 1
"""
# KEYS: version key, generation key. ARGV: base, key, generation lifetime in ms.
_DELETE = """
local version = redis.call('GET', KEYS[1]) or '0'
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return redis.call('DEL', ARGV[1] .. version .. ':' .. ARGV[2])
"""
# A load that began before a delete is refused as long as the generation lives; loads take seconds at most.
_GENERATION_TTL_MS = 24 * 3600 * 1000
_OUTAGE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError)


class RedisCache:
    name = "redis"

    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        params: CacheParams | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._redis = redis
        self._params = params or CacheParams()
        self._metrics = metrics or Metrics.process()
        self._clock = clock
        self._get_script = redis.register_script(_GET)
        self._set_script = redis.register_script(_SET)
        self._delete_script = redis.register_script(_DELETE)

    async def get(self, key: str, *, user_id: UserId = None) -> Any | None:
        value, _ = await self._lookup(key, scope_of(user_id))
        return value

    async def set(self, key: str, value: Any, *, user_id: UserId = None, ttl: float | None = None) -> None:
        await self._store(key, value, scope_of(user_id), ttl, expected="")

    async def delete(self, key: str, *, user_id: UserId = None) -> None:
        scope = scope_of(user_id)
        with self._translate("delete"):
            await self._delete_script(
                keys=[self._version_key(scope), self._generation_key(scope, key)],
                args=[self._base(scope), key, _GENERATION_TTL_MS],
            )

    async def get_or_load(self, key: str, load: Load, *, user_id: UserId = None, ttl: float | None = None) -> Any:
        scope = scope_of(user_id)
        value, token = await self._lookup(key, scope)
        if value is not None:
            return value
        value = await load()
        if value is not None:
            await self._store(key, value, scope, ttl, expected=token)
        return value

    async def invalidate_user(self, user_id: uuid.UUID | str) -> None:
        with self._translate("invalidate"):
            await self._redis.incr(self._version_key(scope_of(user_id)))

    async def probe(self) -> None:
        """A write, not a ping: a read-only replica answers pings but cannot take an invalidation."""
        with self._translate("probe"):
            await self._redis.set(f"{self._params.prefix}:probe", "1", px=60_000)

    async def clear(self) -> None:
        """Drop every key under the prefix (when too many invalidations were missed to replay one by one)."""
        with self._translate("clear"):
            async for key in self._redis.scan_iter(match=f"{self._params.prefix}:*", count=1000):
                await self._redis.delete(key)

    async def aclose(self) -> None:
        """Nothing to do: the client belongs to the process, which closes it."""

    # Round trips ------------------------------------------------------------------------------------------

    async def _lookup(self, key: str, scope: str | None) -> tuple[Any | None, str]:
        """The value (None: absent) and the token ("version:generation") a later store must match."""
        with self._translate("get"):
            version, generation, raw = await self._get_script(
                keys=[self._version_key(scope), self._generation_key(scope, key)], args=[self._base(scope), key]
            )
        found = raw is not None
        (self._metrics.cache_hits if found else self._metrics.cache_misses).labels(backend=self.name).inc()
        return (json.loads(raw) if found else None), f"{_text(version)}:{_text(generation)}"

    async def _store(self, key: str, value: Any, scope: str | None, ttl: float | None, *, expected: str) -> None:
        text, seconds = encode(value), ttl_seconds(ttl, self._params)  # misuse raises before any round trip
        with self._translate("set"):
            await self._set_script(
                keys=[self._version_key(scope), self._generation_key(scope, key)],
                args=[self._base(scope), key, text, max(1, int(seconds * 1000)), expected],
            )

    @contextlib.contextmanager
    def _translate(self, operation: str) -> Iterator[None]:
        started = self._clock()
        try:
            yield
        except RedisError as exc:
            outage = isinstance(exc, _OUTAGE)
            self._metrics.cache_errors.labels(backend=self.name, retryable=flag(outage)).inc()
            if outage:
                raise CacheUnavailableError("redis is unreachable or read-only") from exc
            logger.warning("redis refused a cache operation", extra={"error": type(exc).__name__})
            raise CacheError("redis refused a cache operation") from exc
        self._metrics.cache_seconds.labels(backend=self.name, operation=operation).observe(self._clock() - started)

    # Keys -------------------------------------------------------------------------------------------------

    def _version_key(self, scope: str | None) -> str:
        return f"{self._params.prefix}:uv:{scope or '_'}"

    def _generation_key(self, scope: str | None, key: str) -> str:
        return f"{self._params.prefix}:kg:{scope or '_'}:{key}"

    def _base(self, scope: str | None) -> str:
        # A global key has a version too (never bumped), so one script serves both.
        return f"{self._params.prefix}:u:{scope}:" if scope else f"{self._params.prefix}:g:"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
