"""The process's long-lived clients: HTTP (keep-alive), OpenAI on the same connections, the storage backend, Redis.

Each library pools its own connections (httpx, asyncpg, redis-py), so they are not wrapped in a second pool: they
are opened once per job process on the caller's ``contextlib.AsyncExitStack``, which closes them in reverse
order (storage and OpenAI before the HTTP client they ride on). Every session of the process shares them.

``health_check`` asks each client and records the answer in the metrics (``companion_client_up``, the connections
its pool holds), which is what the clients' health tool (``getConnectionPoolStats``) reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass

import httpx
import openai
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from core.config import Settings
from core.errors import CompanionError
from infrastructure.metrics import Metrics
from infrastructure.storage import Storage, open_storage

logger = logging.getLogger("companion.clients")


@dataclass(frozen=True, slots=True)
class ClientParams:
    http_max_connections: int = 100
    http_max_keepalive: int = 20
    http_keepalive_expiry: float = 30.0  # seconds
    http_timeout: float = 10.0  # seconds
    redis_timeout: float = 0.25  # seconds: a dead Redis must cost a turn milliseconds; the cache falls back

    def __post_init__(self) -> None:
        if self.http_max_connections < 1 or not 0 <= self.http_max_keepalive <= self.http_max_connections:
            raise ValueError("http_max_connections must be at least 1, keep-alive between 0 and it")
        if min(self.http_keepalive_expiry, self.http_timeout, self.redis_timeout) <= 0:
            raise ValueError("client timeouts must be positive")


@dataclass(frozen=True, slots=True)
class Clients:
    http: httpx.AsyncClient
    openai: openai.AsyncOpenAI  # rides ``http``'s connections
    storage: Storage
    redis: aioredis.Redis | None  # None: Redis is not configured (the cache lives in process)
    metrics: Metrics

    async def health_check(self) -> dict[str, bool]:
        """Ask each client (one round trip for storage and Redis); record and return whether each answered."""
        results = {"http": not self.http.is_closed}
        self._connections("http", _http_connections(self.http))
        results["storage"] = await _answers(self.storage.ping())
        self._connections("storage", _asyncpg_connections(self.storage))
        if self.redis is not None:
            results["redis"] = await _answers(self.redis.ping())
            self._connections("redis", _redis_connections(self.redis))
        for name, ok in results.items():
            self.metrics.client_up.labels(client=name).set(1 if ok else 0)
            if not ok:
                self.metrics.client_check_failures.labels(client=name).inc()
        return results

    def _connections(self, name: str, counts: tuple[int, int] | None) -> None:
        if counts is not None:
            in_use, idle = counts
            self.metrics.client_connections.labels(client=name, state="in_use").set(in_use)
            self.metrics.client_connections.labels(client=name, state="idle").set(idle)


async def open_clients(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    *,
    params: ClientParams | None = None,
    metrics: Metrics | None = None,
) -> Clients:
    """Open every configured client on ``stack``; closing the stack closes them, the last opened first."""
    p = params or ClientParams()
    limits = httpx.Limits(
        max_connections=p.http_max_connections,
        max_keepalive_connections=p.http_max_keepalive,
        keepalive_expiry=p.http_keepalive_expiry,
    )
    http = await stack.enter_async_context(httpx.AsyncClient(limits=limits, timeout=p.http_timeout))
    # No close of its own: its connections are the HTTP client's.
    client = openai.AsyncOpenAI(
        api_key=settings.openai_key_for_client, base_url=settings.openai_base_url, http_client=http
    )
    metrics = metrics or Metrics.process()
    storage = await stack.enter_async_context(await open_storage(settings.storage, http_client=http))
    storage.metrics = metrics  # its failed calls count here
    redis = None
    if settings.cache_uses_redis and settings.redis_url is not None:
        redis = redis_client(settings.redis_url, timeout=p.redis_timeout)  # connects on first use
        stack.push_async_callback(redis.aclose)
    return Clients(http=http, openai=client, storage=storage, redis=redis, metrics=metrics)


def redis_client(url: str, *, timeout: float) -> aioredis.Redis:
    """A Redis client for the cache: short timeouts and no client-side retries, because on an error the cache
    switches to the in-process one at once and probes in the background."""
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )


HEALTH_CHECK_TIMEOUT = 2.0  # seconds: the health tools run during a user's turn, and a stalled server must not hang it

# Checks given up on: cancelled, but not awaited (a client talking to a stalled host may take as long to cancel as
# it would have taken to answer); kept here until they end, so that they are not collected while running.
_ABANDONED: set[asyncio.Task[object]] = set()


async def _answers(check: Coroutine[object, object, object]) -> bool:
    task: asyncio.Task[object] = asyncio.ensure_future(check)
    done, _ = await asyncio.wait({task}, timeout=HEALTH_CHECK_TIMEOUT)
    if not done:
        task.cancel()
        _ABANDONED.add(task)
        task.add_done_callback(_forget_abandoned)
        logger.warning("client health check failed", extra={"error": "TimeoutError"})
        return False
    exc = task.exception()
    if exc is None:
        return True
    if isinstance(exc, CompanionError | RedisError | OSError):
        logger.warning("client health check failed", extra={"error": type(exc).__name__})
        return False
    raise exc


def _forget_abandoned(task: asyncio.Task[object]) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: the check's outcome no longer matters


def _http_connections(client: httpx.AsyncClient) -> tuple[int, int] | None:
    # httpx does not publish its pool's size; httpcore's pool lists its connections.
    connections = getattr(getattr(getattr(client, "_transport", None), "_pool", None), "connections", None)
    if connections is None:
        return None
    idle = sum(1 for c in connections if c.is_idle())
    return len(connections) - idle, idle


def _asyncpg_connections(storage: Storage) -> tuple[int, int] | None:
    pool = getattr(storage, "pool", None)  # PostgreSQL only; SQLite has one connection, Supabase rides HTTP
    if pool is None:
        return None
    size, idle = pool.get_size(), pool.get_idle_size()
    return size - idle, idle


def _redis_connections(client: aioredis.Redis) -> tuple[int, int] | None:
    pool = client.connection_pool
    in_use = getattr(pool, "_in_use_connections", None)
    available = getattr(pool, "_available_connections", None)
    if in_use is None or available is None:
        return None
    return len(in_use), len(available)
