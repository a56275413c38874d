"""What every cache offers (:class:`Cache`), its parameters, and the helpers its backends share.

Values are JSON. A key belongs to a user (``user_id``) or is global. ``get_or_load`` stores what it loaded only if
nothing invalidated or deleted the entry meanwhile, so a load that raced a forget cannot put old data back.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import Settings
from core.errors import CacheValueError

UserId = uuid.UUID | str | None
Load = Callable[[], Awaitable[Any]]


class Cache(Protocol):
    """The cache the services use. Only a :class:`~core.errors.CacheValueError` (misuse) reaches them from the
    process's cache; a backend on its own raises :class:`~core.errors.CacheError` when it fails."""

    name: str  # the backend serving now, as the metrics label it: redis or memory

    async def get(self, key: str, *, user_id: UserId = None) -> Any | None: ...

    async def set(self, key: str, value: Any, *, user_id: UserId = None, ttl: float | None = None) -> None: ...

    async def delete(self, key: str, *, user_id: UserId = None) -> None:
        """Drop one entry; a load of it under way will not store its result."""

    async def get_or_load(self, key: str, load: Load, *, user_id: UserId = None, ttl: float | None = None) -> Any:
        """The cached value, or ``await load()``, stored unless the entry was invalidated while it loaded. A
        ``None`` from ``load`` is returned and not stored."""

    async def invalidate_user(self, user_id: uuid.UUID | str) -> None:
        """Drop every entry of this user (on every worker, for a shared cache)."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class CacheParams:
    prefix: str = "companion"  # every Redis key starts with it: deployments can share one Redis
    default_ttl: float = 600.0  # seconds
    memory_max_entries: int = 10_000
    probe_interval: float = 1.0  # seconds between Redis probes while the in-process cache serves
    max_replay: int = 10_000  # invalidations remembered during an outage; past it, the prefix is cleared instead

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
        if self.default_ttl <= 0 or self.memory_max_entries < 1 or self.probe_interval <= 0 or self.max_replay < 1:
            raise ValueError("cache TTL, size, probe interval and replay bound must be positive")


def scope_of(user_id: UserId) -> str | None:
    return None if user_id is None else str(user_id).lower()


def encode(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CacheValueError("cache values must be JSON: dict, list, str, number, bool or None") from exc


def ttl_seconds(ttl: float | None, params: CacheParams) -> float:
    if ttl is None:
        return params.default_ttl
    if not ttl > 0:
        raise CacheValueError("cache TTL must be a positive number of seconds")
    return ttl


class LoadOnce:
    """``load`` run at most once: a fallback that takes over after the load ran must not run it again."""

    def __init__(self, load: Load) -> None:
        self._load = load
        self.ran = False
        self.value: Any = None

    async def __call__(self) -> Any:
        if not self.ran:
            self.value = await self._load()
            self.ran = True
        return self.value
