"""A JSON cache on Redis that falls back to an in-process LRU on its own, and comes back when Redis does.

Keys. Every key lives under ``prefix`` so that several deployments can share one Redis. A user's keys also carry
the user's version: ``{prefix}:u:{user_id}:{version}:{key}``, the version kept at ``{prefix}:uv:{user_id}``.
``invalidate_user`` bumps the version, so every entry of that user disappears for every worker at once (the old
ones expire by their TTL). Reading the version and the entry is one Lua script: one round trip.

Stale writes. ``get_or_load`` remembers, on a miss, the user's version and the key's generation (bumped by
``delete``) and stores what it loaded only if both are unchanged, so a load that raced with another worker's
invalidation or delete cannot put old data back.

Failure. A connection error, a timeout or a refused write (a read-only replica after a failover) switches the cache
to ``memory`` mode (no exception reaches the caller), starts a background probe that writes, and serves from a
bounded LRU. Invalidations and deletes made meanwhile are remembered
and replayed on Redis before the cache switches back, so no worker reads what they removed. Other Redis errors
are counted and the operation is treated as a miss. Only misuse (a value that is not JSON, a TTL that is not
positive) raises :class:`CacheError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.config import Settings
from core.errors import CacheError

logger = logging.getLogger("companion.cache")

CacheMode = Literal["redis", "memory"]

# KEYS: the user's version key, then each key's generation key. ARGV: the entry base, then the keys.
# Returns the version, the generations, then the values.
_GET = """
local version = redis.call('GET', KEYS[1]) or '0'
local out = {version}
for i = 2, #KEYS do out[#out + 1] = redis.call('GET', KEYS[i]) or '0' end
local entries = {}
for i = 2, #ARGV do entries[#entries + 1] = ARGV[1] .. version .. ':' .. ARGV[i] end
local values = redis.call('MGET', unpack(entries))
for i = 1, #values do out[#out + 1] = values[i] end
return out
"""
# KEYS: version key, generation key of the first key. ARGV: base, ttl_ms, expected token ('' = no check), then
# key/value pairs. The token is "<version>:<generation>" as _GET saw them.
_SET = """
local version = redis.call('GET', KEYS[1]) or '0'
if ARGV[3] ~= '' and ARGV[3] ~= version .. ':' .. (redis.call('GET', KEYS[2]) or '0') then return 0 end
for i = 4, #ARGV, 2 do redis.call('SET', ARGV[1] .. version .. ':' .. ARGV[i], ARGV[i + 1], 'PX', ARGV[2]) end
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


@dataclass(frozen=True, slots=True)
class CacheParams:
    prefix: str = "companion"
    default_ttl: float = 600.0  # seconds
    memory_max_entries: int = 10_000
    probe_interval: float = 1.0  # seconds between Redis probes while in memory mode
    max_replay: int = 10_000  # invalidations remembered during an outage
    latency_window: int = 2_048  # operations kept for the latency percentiles

    @classmethod
    def from_settings(cls, settings: Settings) -> CacheParams:
        return cls(
            prefix=settings.redis_key_prefix,
            default_ttl=settings.cache_ttl_seconds,
            memory_max_entries=settings.cache_memory_max_entries,
        )

    def __post_init__(self) -> None:
        if not self.prefix or ":" in self.prefix:
            raise ValueError("cache prefix must be non-empty and contain no ':'")
        if self.default_ttl <= 0 or self.memory_max_entries < 1 or self.probe_interval <= 0:
            raise ValueError("cache TTL, size and probe interval must be positive")


@dataclass(frozen=True, slots=True)
class CacheStats:
    mode: CacheMode
    hits: int
    misses: int
    hit_rate: float
    errors: int
    fallbacks: int
    recoveries: int
    p50_ms: float
    p95_ms: float
    memory_entries: int


class RedisCache:
    """``redis=None`` means Redis is not configured: the cache lives in memory for good, with no probe."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis | None,
        params: CacheParams | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._params = params or CacheParams()
        self._clock = clock
        self._mode: CacheMode = "redis" if redis is not None else "memory"
        self._memory: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._memory_versions: dict[str, int] = {}
        self._memory_generations: dict[tuple[str, str], int] = {}
        self._missed_invalidations: set[str] = set()
        self._missed_deletes: set[tuple[str | None, str]] = set()
        self._replay_overflowed = False
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        self._latencies: deque[float] = deque(maxlen=self._params.latency_window)
        self._hits = self._misses = self._errors = self._fallbacks = self._recoveries = 0
        if redis is not None:
            self._get_script = redis.register_script(_GET)
            self._set_script = redis.register_script(_SET)
            self._delete_script = redis.register_script(_DELETE)

    @property
    def mode(self) -> CacheMode:
        return self._mode

    # Public API -------------------------------------------------------------------------------------------

    async def get(self, key: str, *, user_id: uuid.UUID | str | None = None) -> Any | None:
        return (await self.get_many([key], user_id=user_id)).get(key)

    async def get_many(self, keys: Iterable[str], *, user_id: uuid.UUID | str | None = None) -> dict[str, Any]:
        """The cached values of ``keys`` that are present (absent keys are missing from the result)."""
        values, _ = await self._read(list(keys), _scope(user_id))
        return values

    async def set(
        self, key: str, value: Any, *, user_id: uuid.UUID | str | None = None, ttl: float | None = None
    ) -> None:
        await self.set_many({key: value}, user_id=user_id, ttl=ttl)

    async def set_many(
        self, items: Mapping[str, Any], *, user_id: uuid.UUID | str | None = None, ttl: float | None = None
    ) -> None:
        await self._write(dict(items), _scope(user_id), ttl, expected=None)

    async def delete(self, key: str, *, user_id: uuid.UUID | str | None = None) -> None:
        """Drop one entry everywhere; a load of it already under way will not store its result."""
        scope = _scope(user_id)
        started = self._clock()
        if self._mode == "redis":
            try:
                await self._delete_script(
                    keys=[self._version_key(scope), self._generation_key(scope, key)],
                    args=[self._base(scope), key, _GENERATION_TTL_MS],
                )
                self._timed(started)
                return
            except RedisError as exc:
                if not self._fall_back(exc):
                    return
        generation = (scope or "", key)
        self._memory_generations[generation] = self._memory_generations.get(generation, 0) + 1
        self._memory.pop(self._memory_key(scope, key), None)
        self._remember(deleted=(scope, key))

    async def invalidate_user(self, user_id: uuid.UUID | str) -> None:
        """Drop every cached entry of this user, on every worker sharing the Redis."""
        scope = _scope(user_id) or ""
        if self._mode == "redis":
            try:
                await self._redis.incr(self._version_key(scope))  # type: ignore[union-attr]
                return
            except RedisError as exc:
                if not self._fall_back(exc):
                    return
        self._memory_versions[scope] = self._memory_versions.get(scope, 0) + 1
        self._remember(invalidated=scope)

    async def get_or_load(
        self,
        key: str,
        load: Callable[[], Awaitable[Any]],
        *,
        user_id: uuid.UUID | str | None = None,
        ttl: float | None = None,
    ) -> Any:
        """The cached value, or ``await load()``, stored unless the entry was invalidated while it loaded.
        A ``None`` from ``load`` is returned and not stored."""
        scope = _scope(user_id)
        values, tokens = await self._read([key], scope)
        if key in values:
            return values[key]
        value = await load()
        if value is not None:
            await self._write({key: value}, scope, ttl, expected=tokens.get(key, ""))
        return value

    def stats(self) -> CacheStats:
        latencies = sorted(self._latencies)
        total = self._hits + self._misses
        return CacheStats(
            mode=self._mode,
            hits=self._hits,
            misses=self._misses,
            hit_rate=self._hits / total if total else 0.0,
            errors=self._errors,
            fallbacks=self._fallbacks,
            recoveries=self._recoveries,
            p50_ms=_percentile(latencies, 0.50) * 1000,
            p95_ms=_percentile(latencies, 0.95) * 1000,
            memory_entries=len(self._memory),
        )

    async def aclose(self) -> None:
        """Stop the probe. The Redis client belongs to the connection pool, which closes it."""
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None

    # Reads and writes -------------------------------------------------------------------------------------

    async def _read(self, keys: list[str], scope: str | None) -> tuple[dict[str, Any], dict[str, str]]:
        """Values found, and for every key the token ("version:generation") a later store must match."""
        started = self._clock()
        if not keys:
            return {}, {}
        if self._mode == "redis":
            try:
                raw = await self._get_script(
                    keys=[self._version_key(scope), *(self._generation_key(scope, k) for k in keys)],
                    args=[self._base(scope), *keys],
                )
                version, generations, values = _text(raw[0]), raw[1 : 1 + len(keys)], raw[1 + len(keys) :]
                found = {k: json.loads(v) for k, v in zip(keys, values, strict=True) if v is not None}
                tokens = {k: f"{version}:{_text(g)}" for k, g in zip(keys, generations, strict=True)}
                self._count(found, keys, started)
                return found, tokens
            except RedisError as exc:
                if not self._fall_back(exc):
                    self._count({}, keys, started)
                    return {}, {}
        now = self._clock()
        found = {}
        for key in keys:
            memory_key = self._memory_key(scope, key)
            entry = self._memory.get(memory_key)
            if entry is None:
                continue
            if entry[0] <= now:
                del self._memory[memory_key]
                continue
            self._memory.move_to_end(memory_key)
            found[key] = json.loads(entry[1])
        self._count(found, keys, started)
        return found, {k: self._memory_token(scope, k) for k in keys}

    async def _write(self, items: dict[str, Any], scope: str | None, ttl: float | None, *, expected: str | None):
        if not items:
            return
        if ttl is not None and not ttl > 0:
            raise CacheError("cache TTL must be a positive number of seconds")
        encoded = {key: _encode(value) for key, value in items.items()}
        seconds = ttl if ttl is not None else self._params.default_ttl
        started = self._clock()
        if self._mode == "redis":
            pairs = [part for item in encoded.items() for part in item]
            first = next(iter(encoded))
            try:
                await self._set_script(
                    keys=[self._version_key(scope), self._generation_key(scope, first)],
                    args=[self._base(scope), max(1, int(seconds * 1000)), expected or "", *pairs],
                )
                self._timed(started)
                return
            except RedisError as exc:
                if not self._fall_back(exc):
                    return
        if expected is not None and expected != self._memory_token(scope, next(iter(encoded))):
            return  # invalidated while loading (or the load began on Redis): do not store what may be stale
        expires = self._clock() + seconds
        for key, text in encoded.items():
            memory_key = self._memory_key(scope, key)
            self._memory[memory_key] = (expires, text)
            self._memory.move_to_end(memory_key)
        while len(self._memory) > self._params.memory_max_entries:
            self._memory.popitem(last=False)

    # Modes ------------------------------------------------------------------------------------------------

    def _fall_back(self, exc: RedisError) -> bool:
        """Count the error; switch to memory when Redis is unreachable. True when the caller should use memory."""
        self._errors += 1
        if not isinstance(exc, (RedisConnectionError, RedisTimeoutError, ReadOnlyError)):
            logger.warning("redis cache operation failed", extra={"error": type(exc).__name__})
            return False
        if self._mode == "memory":
            return True
        self._mode = "memory"
        self._fallbacks += 1
        logger.warning("redis cache unavailable, using the in-process cache", extra={"error": type(exc).__name__})
        if not self._closed and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.create_task(self._probe(), name="redis-cache-probe")
        return True

    async def _probe(self) -> None:
        assert self._redis is not None
        while self._mode == "memory":
            await asyncio.sleep(self._params.probe_interval)
            try:
                # A write, not a ping: a read-only replica answers pings but cannot take an invalidation.
                await self._redis.set(f"{self._params.prefix}:probe", "1", px=60_000)
                await self._replay()
            except RedisError:
                self._errors += 1
                continue
            self._memory.clear()
            self._memory_versions.clear()
            self._memory_generations.clear()
            self._mode = "redis"
            self._recoveries += 1
            logger.info("redis cache is back")

    async def _replay(self) -> None:
        """Apply on Redis what was invalidated while it was away, before it is trusted again. Invalidations made
        while this runs are replayed too: it loops until nothing is left."""
        assert self._redis is not None
        while self._replay_overflowed or self._missed_invalidations or self._missed_deletes:
            if self._replay_overflowed:
                self._replay_overflowed = False
                self._missed_invalidations.clear()
                self._missed_deletes.clear()
                # Too many to list: drop everything under our prefix instead.
                async for key in self._redis.scan_iter(match=f"{self._params.prefix}:*", count=1000):
                    await self._redis.delete(key)
                continue
            for scope in list(self._missed_invalidations):
                await self._redis.incr(self._version_key(scope))
                self._missed_invalidations.discard(scope)
            for scope, key in list(self._missed_deletes):
                await self._delete_script(
                    keys=[self._version_key(scope), self._generation_key(scope, key)],
                    args=[self._base(scope), key, _GENERATION_TTL_MS],
                )
                self._missed_deletes.discard((scope, key))

    def _remember(self, *, invalidated: str | None = None, deleted: tuple[str | None, str] | None = None) -> None:
        if self._redis is None:
            return  # memory-only: there is no Redis to catch up
        if invalidated is not None:
            self._missed_invalidations.add(invalidated)
        if deleted is not None:
            self._missed_deletes.add(deleted)
        if len(self._missed_invalidations) + len(self._missed_deletes) > self._params.max_replay:
            self._replay_overflowed = True
            self._missed_invalidations.clear()
            self._missed_deletes.clear()

    # Keys and bookkeeping ---------------------------------------------------------------------------------

    def _version_key(self, scope: str | None) -> str:
        return f"{self._params.prefix}:uv:{scope or '_'}"

    def _generation_key(self, scope: str | None, key: str) -> str:
        return f"{self._params.prefix}:kg:{scope or '_'}:{key}"

    def _base(self, scope: str | None) -> str:
        # A global key has a version too (never bumped), so one script serves both.
        return f"{self._params.prefix}:u:{scope}:" if scope else f"{self._params.prefix}:g:"

    def _memory_key(self, scope: str | None, key: str) -> str:
        return f"{scope or '_'}:{self._memory_versions.get(scope or '', 0)}:{key}"

    def _memory_token(self, scope: str | None, key: str) -> str:
        version = self._memory_versions.get(scope or "", 0)
        return f"m{version}:{self._memory_generations.get((scope or '', key), 0)}"

    def _count(self, found: dict[str, Any], keys: list[str], started: float) -> None:
        self._hits += len(found)
        self._misses += len(keys) - len(found)
        self._timed(started)

    def _timed(self, started: float) -> None:
        self._latencies.append(self._clock() - started)


def _scope(user_id: uuid.UUID | str | None) -> str | None:
    return None if user_id is None else str(user_id).lower()


def _encode(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CacheError("cache values must be JSON: dict, list, str, number, bool or None") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
