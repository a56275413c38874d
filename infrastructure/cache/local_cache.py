"""The in-process cache: a bounded cachetools TLRU (least recently used, each entry with its own time to live).

It serves alone when Redis is not configured, and behind :class:`~infrastructure.cache.FallbackCache` while Redis is
away. Values are kept as JSON text, as Redis keeps them, so a caller that changes what it got changes nothing here.
A load's token is one counter bumped by every delete and invalidation: coarse (an unrelated delete also refuses a
store, costing one later miss), but a store can never bring back what was dropped while it loaded.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from cachetools import TLRUCache

from infrastructure.cache.base import CacheParams, Load, UserId, encode, scope_of, ttl_seconds
from infrastructure.metrics import Metrics

_Key = tuple[str, str]  # (user or "", key)


def _expires(_key: _Key, value: tuple[float, str], now: float) -> float:
    return now + value[0]


class LocalCache:
    name = "memory"
    mode = name  # as FallbackCache says which backend serves

    def __init__(
        self,
        *,
        params: CacheParams | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._params = params or CacheParams()
        self._metrics = metrics or Metrics.process()
        self._clock = clock
        self._entries: TLRUCache[_Key, tuple[float, str]] = TLRUCache(
            maxsize=self._params.memory_max_entries, ttu=_expires, timer=clock
        )
        self._drops = 0  # bumped by every delete and invalidation: the token of get_or_load

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str, *, user_id: UserId = None) -> Any | None:
        return self._get(key, scope_of(user_id))

    async def set(self, key: str, value: Any, *, user_id: UserId = None, ttl: float | None = None) -> None:
        self._set(key, value, scope_of(user_id), ttl)

    async def delete(self, key: str, *, user_id: UserId = None) -> None:
        self._drops += 1
        self._entries.pop((scope_of(user_id) or "", key), None)

    async def get_or_load(self, key: str, load: Load, *, user_id: UserId = None, ttl: float | None = None) -> Any:
        scope = scope_of(user_id)
        value = self._get(key, scope)
        if value is not None:
            return value
        token = self._drops
        value = await load()
        if value is not None and token == self._drops:
            self._set(key, value, scope, ttl)
        return value

    async def invalidate_user(self, user_id: uuid.UUID | str) -> None:
        self._drops += 1
        scope = scope_of(user_id) or ""
        for entry in [k for k in list(self._entries.keys()) if k[0] == scope]:  # rare (a forget): a scan is fine
            self._entries.pop(entry, None)

    def clear(self) -> None:
        self._drops += 1
        self._entries.clear()

    async def aclose(self) -> None:
        self.clear()

    def _get(self, key: str, scope: str | None) -> Any | None:
        started = time.perf_counter()  # the injected clock is for expiry: tests move it
        entry = self._entries.get((scope or "", key))
        (self._metrics.cache_hits if entry else self._metrics.cache_misses).labels(backend=self.name).inc()
        self._observe("get", started)
        return None if entry is None else json.loads(entry[1])

    def _set(self, key: str, value: Any, scope: str | None, ttl: float | None) -> None:
        started = time.perf_counter()
        text, seconds = encode(value), ttl_seconds(ttl, self._params)
        self._entries[(scope or "", key)] = (seconds, text)
        self._observe("set", started)

    def _observe(self, operation: str, started: float) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.cache_seconds.labels(backend=self.name, operation=operation).observe(elapsed)
