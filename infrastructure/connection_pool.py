"""The process-wide owner of long-lived clients: HTTP, OpenAI, the storage backend's pool, Redis.

Each resource is created once, on first use (or in prewarm through :meth:`ConnectionPool.open_all`), handed out
again on every later call, health-checked on demand, and closed once by :meth:`ConnectionPool.aclose`. A LiveKit
job process builds one pool in prewarm; every session in that process shares it.

Stats per resource: how often it was created and handed out again, its connections in use and idle where the
library tells, errors, and the last health check's result and time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import openai
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.config import Settings
from core.errors import ClosedError, CompanionError
from infrastructure.storage import Storage, open_storage

logger = logging.getLogger("companion.pool")

Client = TypeVar("Client")


@dataclass(frozen=True, slots=True)
class HealthResult:
    ok: bool
    checked_at: float  # unix time
    latency_ms: float
    error: str | None = None  # the exception's type name, never its text (it may carry a URL or key)


@dataclass(frozen=True, slots=True)
class ResourceStats:
    name: str
    open: bool
    created: int
    reused: int
    in_use: int | None  # None: the library does not say
    idle: int | None
    errors: int
    last_health: HealthResult | None


@dataclass(frozen=True, slots=True)
class PoolParams:
    http_max_connections: int = 100
    http_max_keepalive: int = 20
    http_keepalive_expiry: float = 30.0
    http_timeout: float = 10.0
    redis_timeout: float = 0.25  # a dead Redis must cost a turn milliseconds, not seconds: the cache falls back


class _Resource(Generic[Client]):
    def __init__(
        self,
        name: str,
        *,
        create: Callable[[], Awaitable[Client]],
        close: Callable[[Client], Awaitable[None]],
        check: Callable[[Client], Awaitable[None]],
        gauges: Callable[[Client], tuple[int | None, int | None]] = lambda _: (None, None),
    ) -> None:
        self.name = name
        self._create, self._close, self._check, self._gauges = create, close, check, gauges
        self._lock = asyncio.Lock()
        self.client: Client | None = None
        self.closed = False
        self.created = self.reused = self.errors = 0
        self.last_health: HealthResult | None = None

    async def get(self) -> Client:
        if self.closed:
            raise ClosedError("the connection pool is closed")
        if self.client is not None:
            self.reused += 1
            return self.client
        async with self._lock:
            if self.client is None:
                try:
                    self.client = await self._create()
                except Exception:
                    self.errors += 1
                    raise
                self.created += 1
            else:
                self.reused += 1
            return self.client

    async def health_check(self) -> HealthResult:
        started = time.perf_counter()
        if self.closed:
            raise ClosedError("the connection pool is closed")
        try:
            await self._check(self.client if self.client is not None else await self.get())
            result = HealthResult(ok=True, checked_at=time.time(), latency_ms=_ms_since(started))
        except (CompanionError, RedisError, httpx.HTTPError, openai.OpenAIError, OSError) as exc:
            self.errors += 1
            result = HealthResult(
                ok=False, checked_at=time.time(), latency_ms=_ms_since(started), error=type(exc).__name__
            )
        self.last_health = result
        return result

    async def aclose(self) -> None:
        self.closed = True
        async with self._lock:
            client, self.client = self.client, None
        if client is not None:
            await self._close(client)

    def stats(self) -> ResourceStats:
        in_use, idle = self._gauges(self.client) if self.client is not None else (None, None)
        return ResourceStats(
            name=self.name,
            open=self.client is not None,
            created=self.created,
            reused=self.reused,
            in_use=in_use,
            idle=idle,
            errors=self.errors,
            last_health=self.last_health,
        )


class ConnectionPool:
    """One per process. Resources that are not configured (no Redis URL) are simply absent."""

    def __init__(self, *, settings: Settings, params: PoolParams | None = None) -> None:
        self._settings = settings
        self._params = params or PoolParams()
        self._http = _Resource("http", create=self._create_http, close=_close_http, check=_check_http,
                               gauges=_http_gauges)  # fmt: skip
        self._openai = _Resource("openai", create=self._create_openai, close=_noop_close, check=_check_openai)
        self._storage = _Resource("storage", create=self._create_storage, close=_close_storage,
                                  check=_check_storage, gauges=_storage_gauges)  # fmt: skip
        self._redis = _Resource("redis", create=self._create_redis, close=_close_redis, check=_check_redis,
                                gauges=_redis_gauges)  # fmt: skip
        self._closed = False

    @property
    def _resources(self) -> list[_Resource[Any]]:
        resources: list[_Resource[Any]] = [self._http, self._openai, self._storage]
        return [*resources, self._redis] if self._settings.cache_uses_redis else resources

    async def http(self) -> httpx.AsyncClient:
        return await self._get(self._http)

    async def openai(self) -> openai.AsyncOpenAI:
        return await self._get(self._openai)

    async def storage(self) -> Storage:
        return await self._get(self._storage)

    async def redis(self) -> aioredis.Redis | None:
        """The Redis client, or None when Redis is not configured (the cache then lives in memory)."""
        return await self._get(self._redis) if self._settings.cache_uses_redis else None

    async def _get(self, resource: _Resource[Client]) -> Client:
        return await resource.get()  # a closed resource raises ClosedError

    async def open_all(self) -> None:
        """Create every configured resource now (prewarm), so the first session does not pay for it."""
        for resource in self._resources:
            await resource.get()

    async def health_check(self) -> dict[str, HealthResult]:
        return {resource.name: await resource.health_check() for resource in self._resources}

    def stats(self) -> dict[str, ResourceStats]:
        return {resource.name: resource.stats() for resource in self._resources}

    async def aclose(self) -> None:
        """Close every resource once, dependants first (storage and OpenAI use the HTTP client). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for resource in (self._storage, self._openai, self._redis, self._http):
            try:
                await resource.aclose()
            except Exception:  # closing the others matters more than this one's failure
                logger.exception("closing a pooled resource failed", extra={"resource": resource.name})

    # Factories --------------------------------------------------------------------------------------------

    async def _create_http(self) -> httpx.AsyncClient:
        p = self._params
        limits = httpx.Limits(
            max_connections=p.http_max_connections,
            max_keepalive_connections=p.http_max_keepalive,
            keepalive_expiry=p.http_keepalive_expiry,
        )
        return httpx.AsyncClient(limits=limits, timeout=p.http_timeout)

    async def _create_openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self._settings.openai_key_for_client,
            base_url=self._settings.openai_base_url,
            http_client=await self.http(),
        )

    async def _create_storage(self) -> Storage:
        return await open_storage(self._settings.storage, http_client=await self.http())

    async def _create_redis(self) -> aioredis.Redis:
        assert self._settings.redis_url is not None  # cache_uses_redis guarantees it
        return redis_client(self._settings.redis_url, timeout=self._params.redis_timeout)


def redis_client(url: str, *, timeout: float) -> aioredis.Redis:
    """A Redis client for the cache: short timeouts and no client-side retries, because on an error the cache
    switches to memory at once and probes in the background."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


async def _close_http(client: httpx.AsyncClient) -> None:
    await client.aclose()


async def _noop_close(_: Any) -> None:
    """The OpenAI client's connections belong to the shared HTTP client, closed with it."""


async def _close_storage(storage: Storage) -> None:
    await storage.aclose()


async def _close_redis(client: aioredis.Redis) -> None:
    await client.aclose()


async def _check_http(client: httpx.AsyncClient) -> None:
    if client.is_closed:
        raise httpx.TransportError("the HTTP client is closed")


async def _check_openai(client: openai.AsyncOpenAI) -> None:
    # A request would cost money and time; the client is healthy when its transport is.
    await _check_http(client._client)


async def _check_storage(storage: Storage) -> None:
    await storage.ping()


async def _check_redis(client: aioredis.Redis) -> None:
    await client.ping()


def _http_gauges(client: httpx.AsyncClient) -> tuple[int | None, int | None]:
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    connections = getattr(pool, "connections", None)
    if connections is None:
        return None, None
    idle = sum(1 for c in connections if c.is_idle())
    return len(connections) - idle, idle


def _storage_gauges(storage: Storage) -> tuple[int | None, int | None]:
    pool = getattr(storage, "pool", None)
    if pool is None:
        return None, None
    size, idle = pool.get_size(), pool.get_idle_size()
    return size - idle, idle


def _redis_gauges(client: aioredis.Redis) -> tuple[int | None, int | None]:
    pool = client.connection_pool
    in_use = getattr(pool, "_in_use_connections", None)
    available = getattr(pool, "_available_connections", None)
    if in_use is None or available is None:
        return None, None
    return len(in_use), len(available)


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
