"""The cache on a real Redis, and its fallback when a Redis server that the test started is killed."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.errors import CacheError
from infrastructure.connection_pool import redis_client
from infrastructure.redis_cache import CacheParams, RedisCache
from tests.redis_servers import OwnRedisServer, shared_redis_url
from tests.waiting import eventually


@pytest.fixture
def prefix() -> str:
    return f"test{secrets.token_hex(4)}"


@pytest.fixture
async def shared(prefix: str) -> AsyncIterator:
    client = redis_client(shared_redis_url(), timeout=1.0)
    yield client
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[OwnRedisServer]:
    server = OwnRedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_values_round_trip_as_json_and_expire_with_their_ttl(shared, prefix) -> None:
    cache = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    user = uuid.uuid4()
    await cache.set("profile", {"name": "Zoë", "langs": ["pt", "en"]}, user_id=user)
    await cache.set_many({"a": 1, "b": [1, 2]}, ttl=0.2)

    assert await cache.get("profile", user_id=user) == {"name": "Zoë", "langs": ["pt", "en"]}
    assert await cache.get_many(["a", "b", "c"]) == {"a": 1, "b": [1, 2]}
    assert await cache.get("profile") is None  # a user's key is not a global key
    await asyncio.sleep(0.3)
    assert await cache.get_many(["a", "b"]) == {}
    await cache.delete("profile", user_id=user)
    assert await cache.get("profile", user_id=user) is None
    assert cache.mode == "redis"


async def test_two_prefixes_do_not_see_each_other(shared, prefix) -> None:
    ours = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    theirs = RedisCache(redis=shared, params=CacheParams(prefix=prefix + "x"))
    user = uuid.uuid4()
    await ours.set("k", "ours", user_id=user)
    await theirs.set("k", "theirs", user_id=user)
    await theirs.invalidate_user(user)

    assert await ours.get("k", user_id=user) == "ours"
    assert await theirs.get("k", user_id=user) is None
    async for key in shared.scan_iter(match=f"{prefix}x:*"):
        await shared.delete(key)


async def test_a_version_bump_on_one_worker_invalidates_the_user_everywhere(shared, prefix) -> None:
    worker_a = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    worker_b = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    user, other = uuid.uuid4(), uuid.uuid4()
    await worker_a.set_many({"profile": {"n": 1}, "memories": ["x"]}, user_id=user)
    await worker_a.set("profile", {"n": 2}, user_id=other)

    await worker_b.invalidate_user(user)

    assert await worker_a.get_many(["profile", "memories"], user_id=user) == {}
    assert await worker_a.get("profile", user_id=other) == {"n": 2}


async def test_a_load_that_races_an_invalidation_is_not_cached(shared, prefix) -> None:
    worker_a = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    worker_b = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    user = uuid.uuid4()

    async def load_then_someone_writes() -> list[str]:
        await worker_b.invalidate_user(user)  # another worker saves a memory while we read the old list
        return ["old list"]

    assert await worker_a.get_or_load("memories", load_then_someone_writes, user_id=user) == ["old list"]
    assert await worker_a.get("memories", user_id=user) is None

    async def load() -> list[str]:
        return ["fresh list"]

    await worker_a.get_or_load("memories", load, user_id=user)
    assert await worker_b.get("memories", user_id=user) == ["fresh list"]


async def test_when_redis_dies_the_cache_falls_back_and_returns_when_it_is_back(own_server: OwnRedisServer) -> None:
    client = redis_client(own_server.url, timeout=0.25)
    cache = RedisCache(redis=client, params=CacheParams(prefix="fallback", probe_interval=0.05))
    user = uuid.uuid4()
    try:
        await cache.set("memories", ["before"], user_id=user)
        own_server.stop()

        assert await cache.get("memories", user_id=user) is None  # no exception reaches the caller
        assert cache.mode == "memory"
        await cache.set("profile", {"name": "Ana"}, user_id=user)
        assert await cache.get("profile", user_id=user) == {"name": "Ana"}
        await cache.invalidate_user(user)  # a memory saved during the outage
        stats = cache.stats()
        assert (stats.fallbacks, stats.mode) == (1, "memory")
        assert stats.errors >= 1

        own_server.start()  # same port, empty: stands for a Redis that kept its old entries too
        await client.set(f"fallback:u:{user}:0:memories", '["stale"]')
        await eventually(lambda: cache.mode == "redis")

        assert await cache.get("memories", user_id=user) is None  # the outage's invalidation was replayed
        await cache.set("memories", ["after"], user_id=user)
        assert await cache.get("memories", user_id=user) == ["after"]
        assert cache.stats().recoveries == 1
    finally:
        await cache.aclose()
        await client.aclose()


async def test_without_redis_a_bounded_in_process_lru_serves() -> None:
    now = [0.0]
    cache = RedisCache(redis=None, params=CacheParams(memory_max_entries=2), clock=lambda: now[0])
    await cache.set("a", 1)
    await cache.set("b", 2, ttl=5)
    assert await cache.get("a") == 1  # "a" is now the most recently used
    await cache.set("c", 3)
    assert await cache.get_many(["a", "b", "c"]) == {"a": 1, "c": 3}
    now[0] = 601.0
    assert await cache.get("a") is None  # the default TTL passed
    assert cache.mode == "memory"
    assert cache.stats().fallbacks == 0


async def test_hit_rate_and_latency_are_reported(shared, prefix) -> None:
    cache = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    await cache.set("k", "v")
    for _ in range(3):
        await cache.get("k")
    await cache.get("missing")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_rate) == (3, 1, 0.75)
    assert 0 < stats.p50_ms <= stats.p95_ms


async def test_a_value_that_is_not_json_is_refused_and_nothing_is_stored(shared, prefix) -> None:
    cache = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    with pytest.raises(CacheError):
        await cache.set_many({"ok": 1, "bad": {1, 2}})
    assert await cache.get("ok") is None


async def test_a_load_that_races_a_delete_is_not_cached(shared, prefix) -> None:
    worker_a = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    worker_b = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    user = uuid.uuid4()

    async def load_then_someone_deletes() -> list[str]:
        await worker_b.delete("memories", user_id=user)  # a save on another worker drops the list key
        return ["old list"]

    await worker_a.get_or_load("memories", load_then_someone_deletes, user_id=user)
    assert await worker_a.get("memories", user_id=user) is None


async def test_a_ttl_that_is_not_positive_is_refused_without_leaving_redis_mode(shared, prefix) -> None:
    cache = RedisCache(redis=shared, params=CacheParams(prefix=prefix))
    for ttl in (0, -1.0):
        with pytest.raises(CacheError):
            await cache.set("k", "v", ttl=ttl)
    await cache.set("k", "v", ttl=0.0005)  # under a millisecond: kept for the smallest time Redis allows
    assert cache.mode == "redis"
    assert cache.stats().errors == 0


async def test_the_in_process_cache_honours_deletes_during_a_load() -> None:
    cache = RedisCache(redis=None)

    async def load_then_delete() -> str:
        await cache.delete("profile")
        return "stale"

    await cache.get_or_load("profile", load_then_delete)
    assert await cache.get("profile") is None
