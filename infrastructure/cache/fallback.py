"""Redis first, the in-process cache while Redis is away: one :class:`~infrastructure.cache.base.Cache`, in the
shape of LiveKit's ``FallbackAdapter``.

An outage (:class:`~core.errors.CacheUnavailableError`: unreachable, timed out, read-only) marks Redis unavailable,
emits an availability event, and moves every operation to the in-process cache at once; no exception reaches the
caller. A background probe writes to Redis every ``probe_interval``; once a write lands, the invalidations and
deletes made meanwhile are replayed on Redis (so no worker reads what they removed), the in-process entries are
dropped, and Redis serves again. Another refusal from Redis is counted and treated as a miss; a value that is not
JSON raises :class:`~core.errors.CacheValueError` whichever backend serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import CacheError, CacheUnavailableError, CacheValueError
from infrastructure.cache.base import CacheParams, Load, LoadOnce, UserId, scope_of
from infrastructure.cache.local_cache import LocalCache
from infrastructure.cache.redis_cache import RedisCache
from infrastructure.metrics import Metrics

logger = logging.getLogger("companion.cache")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class AvailabilityChanged:
    """Redis stopped or started serving the cache (LiveKit's ``AvailabilityChangedEvent``, for the cache)."""

    backend: str
    available: bool


class _Refused(Exception):
    """Redis refused the operation without an outage: count it (the backend did) and serve nothing."""


class FallbackCache:
    def __init__(
        self,
        *,
        primary: RedisCache,
        fallback: LocalCache,
        params: CacheParams | None = None,
        metrics: Metrics | None = None,
        on_availability_changed: Callable[[AvailabilityChanged], None] | None = None,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._params = params or CacheParams()
        self._metrics = metrics or Metrics.process()
        self._on_change = on_availability_changed
        self._available = True
        self._metrics.cache_primary_available.set(1)
        self._missed_users: set[str] = set()
        self._missed_deletes: set[tuple[str | None, str]] = set()
        self._replay_overflowed = False
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def name(self) -> str:
        return self._primary.name if self._available else self._fallback.name

    mode = name  # which backend serves now: redis, or memory while Redis is away

    @property
    def available(self) -> bool:
        return self._available

    async def get(self, key: str, *, user_id: UserId = None) -> Any | None:
        if self._available:
            try:
                return await self._on_primary(self._primary.get(key, user_id=user_id))
            except _Refused:
                return None
            except CacheUnavailableError:
                pass
        return await self._fallback.get(key, user_id=user_id)

    async def set(self, key: str, value: Any, *, user_id: UserId = None, ttl: float | None = None) -> None:
        if self._available:
            try:
                return await self._on_primary(self._primary.set(key, value, user_id=user_id, ttl=ttl))
            except _Refused:
                return None
            except CacheUnavailableError:
                pass
        await self._fallback.set(key, value, user_id=user_id, ttl=ttl)

    async def delete(self, key: str, *, user_id: UserId = None) -> None:
        if self._available:
            try:
                return await self._on_primary(self._primary.delete(key, user_id=user_id), refused_is_outage=True)
            except CacheUnavailableError:
                pass
        await self._fallback.delete(key, user_id=user_id)
        self._remember(deleted=(scope_of(user_id), key))

    async def invalidate_user(self, user_id: uuid.UUID | str) -> None:
        if self._available:
            try:
                return await self._on_primary(self._primary.invalidate_user(user_id), refused_is_outage=True)
            except CacheUnavailableError:
                pass
        await self._fallback.invalidate_user(user_id)
        self._remember(user=scope_of(user_id) or "")

    async def get_or_load(self, key: str, load: Load, *, user_id: UserId = None, ttl: float | None = None) -> Any:
        once = LoadOnce(load)
        if self._available:
            try:
                return await self._on_primary(self._primary.get_or_load(key, once, user_id=user_id, ttl=ttl))
            except _Refused:
                return await once()  # loaded, not stored
            except CacheUnavailableError:
                if once.ran:  # Redis went away after the load: its token means nothing to the other cache
                    return once.value
        return await self._fallback.get_or_load(key, once, user_id=user_id, ttl=ttl)

    async def aclose(self) -> None:
        """Stop the probe. Idempotent. The Redis client belongs to the process, which closes it."""
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        await self._primary.aclose()
        await self._fallback.aclose()

    # Switching --------------------------------------------------------------------------------------------

    async def _on_primary(self, call: Awaitable[T], *, refused_is_outage: bool = False) -> T:
        """Run ``call`` on Redis. An outage switches to the in-process cache and re-raises for the caller to serve
        there; a refusal raises _Refused, or counts as an outage for what must not be lost (a delete)."""
        try:
            return await call
        except CacheValueError:
            raise
        except CacheUnavailableError:
            self._fall_back()
            raise
        except CacheError as exc:
            if refused_is_outage:
                self._fall_back()
                raise CacheUnavailableError("redis refused an invalidation") from exc
            raise _Refused from exc

    def _fall_back(self) -> None:
        if not self._available:
            return
        self._available = False
        self._metrics.cache_fallbacks.inc()
        self._metrics.cache_primary_available.set(0)
        logger.warning("redis cache unavailable, using the in-process cache")
        self._emit(False)
        if not self._closed and (self._probe_task is None or self._probe_task.done()):
            self._probe_task = asyncio.create_task(self._probe(), name="cache-redis-probe")

    async def _probe(self) -> None:
        while not self._available:
            await asyncio.sleep(self._params.probe_interval)
            try:
                await self._primary.probe()
                await self._replay()
            except CacheError:
                continue
            except Exception as exc:  # a bug must not end the probe: the cache would stay in process for good
                logger.warning("redis cache probe failed", extra={"error": type(exc).__name__})
                continue
            self._fallback.clear()
            self._available = True
            self._metrics.cache_recoveries.inc()
            self._metrics.cache_primary_available.set(1)
            logger.info("redis cache is back")
            self._emit(True)

    async def _replay(self) -> None:
        """Apply on Redis what was invalidated while it was away, before it is trusted again; what is invalidated
        while this runs is replayed too, so it loops until nothing is left."""
        while self._replay_overflowed or self._missed_users or self._missed_deletes:
            if self._replay_overflowed:
                self._replay_overflowed = False
                self._missed_users.clear()
                self._missed_deletes.clear()
                await self._primary.clear()  # too many to list: drop everything under our prefix instead
                continue
            for scope in list(self._missed_users):
                await self._primary.invalidate_user(scope)
                self._missed_users.discard(scope)
            for scope, key in list(self._missed_deletes):
                await self._primary.delete(key, user_id=scope)
                self._missed_deletes.discard((scope, key))

    def _remember(self, *, user: str | None = None, deleted: tuple[str | None, str] | None = None) -> None:
        if user is not None:
            self._missed_users.add(user)
        if deleted is not None:
            self._missed_deletes.add(deleted)
        if len(self._missed_users) + len(self._missed_deletes) > self._params.max_replay:
            self._replay_overflowed = True
            self._missed_users.clear()
            self._missed_deletes.clear()

    def _emit(self, available: bool) -> None:
        if self._on_change is not None:
            try:
                self._on_change(AvailabilityChanged(backend=self._primary.name, available=available))
            except Exception as exc:  # a listener's bug must not break the cache
                logger.warning("cache availability listener failed", extra={"error": type(exc).__name__})
