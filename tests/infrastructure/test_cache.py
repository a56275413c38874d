"""The cache: Redis alone (typed errors), the in-process cache, and the fallback between them, on the shared
Redis and on a redis-server the test starts, kills and restarts."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry

from core.errors import CacheError, CacheUnavailableError, CacheValueError
from infrastructure.cache import AvailabilityChanged, CacheParams, FallbackCache, LocalCache, RedisCache
from infrastructure.clients import redis_client
from infrastructure.metrics import CacheReading, Metrics
from tests.redis_servers import OwnRedisServer, shared_redis_url
from tests.waiting import eventually


@pytest.fixture
def prefix() -> str:
    return f"test{secrets.token_hex(4)}"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


@pytest.fixture
async def shared(prefix: str) -> AsyncIterator:
    client = redis_client(shared_redis_url(), timeout=1.0)
    yield client
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()


def fallback_on(client, metrics: Metrics, *, prefix: str = "fallback", events: list | None = None) -> FallbackCache:
    params = CacheParams(prefix=prefix, probe_interval=0.05)
    return FallbackCache(
        primary=RedisCache(redis=client, params=params, metrics=metrics),
        fallback=LocalCache(params=params, metrics=metrics),
        params=params,
        metrics=metrics,
        on_availability_changed=None if events is None else events.append,
    )


async def test_values_round_trip_as_json_and_expire_with_their_ttl(shared, prefix, metrics) -> None:
    cache = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    user = uuid.uuid4()
    await cache.set("profile", {"name": "Zoë", "langs": ["pt", "en"]}, user_id=user)
    await cache.set("a", [1, 2], ttl=0.2)

    assert await cache.get("profile", user_id=user) == {"name": "Zoë", "langs": ["pt", "en"]}
    assert await cache.get("a") == [1, 2]
    assert await cache.get("profile") is None  # a user's key is not a global key
    await asyncio.sleep(0.3)
    assert await cache.get("a") is None
    await cache.delete("profile", user_id=user)
    assert await cache.get("profile", user_id=user) is None


async def test_two_prefixes_do_not_see_each_other(shared, prefix, metrics) -> None:
    ours = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    theirs = RedisCache(redis=shared, params=CacheParams(prefix=prefix + "x"), metrics=metrics)
    user = uuid.uuid4()
    await ours.set("k", "ours", user_id=user)
    await theirs.set("k", "theirs", user_id=user)
    await theirs.invalidate_user(user)

    assert await ours.get("k", user_id=user) == "ours"
    assert await theirs.get("k", user_id=user) is None
    async for key in shared.scan_iter(match=f"{prefix}x:*"):
        await shared.delete(key)


async def test_a_version_bump_on_one_worker_invalidates_the_user_everywhere(shared, prefix, metrics) -> None:
    worker_a = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    worker_b = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    user, other = uuid.uuid4(), uuid.uuid4()
    await worker_a.set("profile@3", {"n": 1}, user_id=user)
    await worker_a.set("profile@3", {"n": 2}, user_id=other)

    await worker_b.invalidate_user(user)

    assert await worker_a.get("profile@3", user_id=user) is None
    assert await worker_a.get("profile@3", user_id=other) == {"n": 2}


async def test_a_load_that_races_an_invalidation_is_not_cached(shared, prefix, metrics) -> None:
    worker_a = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    worker_b = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    user = uuid.uuid4()

    async def load_then_someone_forgets() -> dict:
        await worker_b.invalidate_user(user)  # another worker forgets everything while we read the old profile
        return {"name": "old"}

    assert await worker_a.get_or_load("profile@1", load_then_someone_forgets, user_id=user) == {"name": "old"}
    assert await worker_a.get("profile@1", user_id=user) is None

    async def load() -> dict:
        return {"name": "fresh"}

    await worker_a.get_or_load("profile@1", load, user_id=user)
    assert await worker_b.get("profile@1", user_id=user) == {"name": "fresh"}


async def test_a_load_that_races_a_delete_is_not_cached(shared, prefix, metrics) -> None:
    worker_a = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    worker_b = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    user = uuid.uuid4()

    async def load_then_someone_deletes() -> str:
        await worker_b.delete("profile@1", user_id=user)
        return "old"

    await worker_a.get_or_load("profile@1", load_then_someone_deletes, user_id=user)
    assert await worker_a.get("profile@1", user_id=user) is None


async def test_redis_alone_raises_a_retryable_error_when_it_is_gone(own_redis: OwnRedisServer, metrics) -> None:
    client = redis_client(own_redis.url, timeout=0.25)
    cache = RedisCache(redis=client, params=CacheParams(prefix="alone"), metrics=metrics)
    try:
        own_redis.stop()
        with pytest.raises(CacheUnavailableError) as raised:
            await cache.get("k")
        assert raised.value.retryable
        assert metrics.value("companion_cache_errors_total", backend="redis", retryable="true") == 1
    finally:
        await client.aclose()


async def test_misuse_is_refused_before_any_round_trip_and_no_retry_helps(shared, prefix, metrics) -> None:
    cache = RedisCache(redis=shared, params=CacheParams(prefix=prefix), metrics=metrics)
    with pytest.raises(CacheValueError) as raised:
        await cache.set("bad", {1, 2})
    assert not raised.value.retryable
    for ttl in (0, -1.0):
        with pytest.raises(CacheError):
            await cache.set("k", "v", ttl=ttl)
    await cache.set("k", "v", ttl=0.0005)  # under a millisecond: kept for the smallest time Redis allows
    assert await cache.get("bad") is None
    assert metrics.total("companion_cache_errors_total") == 0


async def test_when_redis_dies_the_fallback_serves_and_returns_when_it_is_back(
    own_redis: OwnRedisServer, metrics: Metrics
) -> None:
    client = redis_client(own_redis.url, timeout=0.25)
    events: list[AvailabilityChanged] = []
    cache = fallback_on(client, metrics, events=events)
    user = uuid.uuid4()
    try:
        await cache.set("profile@1", {"name": "before"}, user_id=user)
        own_redis.stop()

        assert await cache.get("profile@1", user_id=user) is None  # no exception reaches the caller
        assert cache.mode == "memory"
        await cache.set("profile@2", {"name": "Ana"}, user_id=user)
        assert await cache.get("profile@2", user_id=user) == {"name": "Ana"}
        await cache.invalidate_user(user)  # a forget during the outage
        assert await cache.get("profile@2", user_id=user) is None
        assert events == [AvailabilityChanged(backend="redis", available=False)]
        assert metrics.value("companion_cache_primary_available") == 0
        assert metrics.value("companion_cache_fallbacks_total") == 1
        assert metrics.total("companion_cache_errors_total", retryable="true") >= 1

        own_redis.start()  # same port, empty: stands for a Redis that kept its old entries too
        await client.set(f"fallback:u:{user}:0:profile@1", '{"name":"stale"}')
        await eventually(lambda: cache.mode == "redis")

        assert await cache.get("profile@1", user_id=user) is None  # the outage's invalidation was replayed
        await cache.set("profile@3", {"name": "after"}, user_id=user)
        assert await cache.get("profile@3", user_id=user) == {"name": "after"}
        assert events[-1] == AvailabilityChanged(backend="redis", available=True)
        assert metrics.value("companion_cache_recoveries_total") == 1
        assert metrics.value("companion_cache_primary_available") == 1
    finally:
        await cache.aclose()
        await client.aclose()


async def test_a_read_only_redis_is_an_outage_and_the_probe_writes_before_trusting_it(
    own_redis: OwnRedisServer, metrics: Metrics
) -> None:
    client = redis_client(own_redis.url, timeout=0.25)
    cache = fallback_on(client, metrics)
    user = uuid.uuid4()
    try:
        await client.execute_command("REPLICAOF", "127.0.0.1", "1")  # a replica of nothing: answers, refuses writes
        await cache.set("profile@1", {"name": "Ana"}, user_id=user)
        assert cache.mode == "memory"
        assert await cache.get("profile@1", user_id=user) == {"name": "Ana"}  # served from the process
        await asyncio.sleep(0.2)
        assert cache.mode == "memory"  # pings would pass; the probe's write does not
        await client.execute_command("REPLICAOF", "NO", "ONE")
        await eventually(lambda: cache.mode == "redis")
    finally:
        await cache.aclose()
        await client.aclose()


async def test_a_load_under_way_when_redis_dies_runs_once_and_is_not_stored(
    own_redis: OwnRedisServer, metrics: Metrics
) -> None:
    client = redis_client(own_redis.url, timeout=0.25)
    cache = fallback_on(client, metrics)
    loads = 0

    async def load_while_redis_dies() -> dict:
        nonlocal loads
        loads += 1
        own_redis.stop()
        return {"name": "Ana"}

    try:
        assert await cache.get_or_load("profile@1", load_while_redis_dies) == {"name": "Ana"}
        assert loads == 1
        assert cache.mode == "memory"
        assert await cache.get("profile@1") is None
    finally:
        await cache.aclose()
        await client.aclose()


async def test_the_in_process_cache_is_a_bounded_lru_with_a_ttl_per_entry(metrics) -> None:
    now = [0.0]
    cache = LocalCache(params=CacheParams(memory_max_entries=2), metrics=metrics, clock=lambda: now[0])
    await cache.set("a", 1)
    await cache.set("b", 2, ttl=5)
    assert await cache.get("a") == 1  # "a" is now the most recently used
    await cache.set("c", 3)
    assert [await cache.get(k) for k in ("a", "b", "c")] == [1, None, 3]
    now[0] = 601.0
    assert await cache.get("a") is None  # the default TTL passed
    assert len(cache) <= 2


async def test_the_in_process_cache_honours_deletes_and_forgets_during_a_load(metrics) -> None:
    cache = LocalCache(metrics=metrics)
    user = uuid.uuid4()

    async def load_then_delete() -> str:
        await cache.delete("profile@1")
        return "stale"

    async def load_then_forget() -> str:
        await cache.invalidate_user(user)
        return "stale"

    await cache.get_or_load("profile@1", load_then_delete)
    await cache.get_or_load("profile@1", load_then_forget, user_id=user)
    assert await cache.get("profile@1") is None
    assert await cache.get("profile@1", user_id=user) is None


async def test_hits_misses_and_latency_are_prometheus_series_the_reading_repeats(shared, prefix, metrics) -> None:
    cache = fallback_on(shared, metrics, prefix=prefix)
    await cache.set("k", "v")
    for _ in range(3):
        await cache.get("k")
    await cache.get("missing")

    reading = CacheReading.read(metrics)
    assert (reading.mode, reading.hits, reading.misses, reading.hit_rate) == ("redis", 3, 1, 0.75)
    assert metrics.value("companion_cache_hits_total", backend="redis") == 3
    assert metrics.value("companion_cache_operation_seconds_count", backend="redis", operation="get") == 4
    assert reading.mean_ms > 0
