"""The process-wide pool: one client per resource, reused, health-checked, closed once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from core.config import Settings
from core.errors import ClosedError
from infrastructure.connection_pool import ConnectionPool
from tests.net import free_port
from tests.redis_servers import shared_redis_url


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/pool.db", **overrides)  # type: ignore[call-arg]


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def local_http_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/", _ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    await runner.cleanup()


async def test_one_client_is_created_and_reused_across_many_calls(tmp_path: Path, local_http_server: str) -> None:
    pool = ConnectionPool(settings=settings(tmp_path))
    try:
        clients = {id(await pool.http()) for _ in range(50)}
        for _ in range(5):
            assert (await (await pool.http()).get(local_http_server)).text == "ok"
        storage_a, storage_b = await pool.storage(), await pool.storage()

        assert len(clients) == 1
        assert storage_a is storage_b
        http = pool.stats()["http"]
        assert (http.created, http.reused) == (1, 55)  # 49 + 5 above, and once more by the storage backend
        assert (http.in_use, http.idle) == (0, 1)  # one kept-alive connection served all five requests
        assert (await pool.openai())._client is await pool.http()  # OpenAI rides the same connections
    finally:
        await pool.aclose()


async def test_aclose_closes_each_resource_once_and_the_pool_refuses_use_after(tmp_path: Path) -> None:
    pool = ConnectionPool(settings=settings(tmp_path, redis_url=shared_redis_url()))
    await pool.open_all()
    http, storage, redis = await pool.http(), await pool.storage(), await pool.redis()
    assert await redis.ping()

    await pool.aclose()
    await pool.aclose()  # idempotent

    assert http.is_closed
    assert all(not resource.open for resource in pool.stats().values())
    with pytest.raises(ClosedError):
        await pool.storage()
    with pytest.raises(Exception, match="closed"):
        await storage.get_profile("123e4567-e89b-12d3-a456-426614174000")


async def test_a_failing_health_check_shows_in_the_stats(tmp_path: Path) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    pool = ConnectionPool(settings=settings(tmp_path, redis_url=nothing_listens))
    try:
        results = await pool.health_check()
        assert results["storage"].ok
        assert not results["redis"].ok
        assert results["redis"].error is not None
        redis_stats = pool.stats()["redis"]
        assert redis_stats.errors == 1
        assert redis_stats.last_health == results["redis"]
    finally:
        await pool.aclose()


async def test_redis_is_absent_when_not_configured(tmp_path: Path) -> None:
    pool = ConnectionPool(settings=settings(tmp_path))
    try:
        assert await pool.redis() is None
        assert "redis" not in pool.stats()
    finally:
        await pool.aclose()


async def test_a_closed_pool_creates_nothing_again(tmp_path: Path) -> None:
    pool = ConnectionPool(settings=settings(tmp_path))
    await pool.open_all()
    await pool.aclose()
    with pytest.raises(ClosedError):
        await pool.health_check()
    with pytest.raises(ClosedError):
        await pool.open_all()
    assert all(not resource.open for resource in pool.stats().values())
