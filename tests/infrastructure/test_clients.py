"""The process's clients: opened once on one exit stack, shared, health-checked into the metrics, closed once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from core.config import Settings
from infrastructure.clients import open_clients
from infrastructure.metrics import ClientReading, Metrics
from tests.net import free_port
from tests.redis_servers import shared_redis_url


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/clients.db", **overrides)  # type: ignore[call-arg]


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


async def test_one_http_client_keeps_its_connection_alive_and_openai_rides_it(
    tmp_path: Path, local_http_server: str
) -> None:
    metrics = Metrics(CollectorRegistry())
    async with contextlib.AsyncExitStack() as stack:
        clients = await open_clients(settings(tmp_path), stack, metrics=metrics)
        for _ in range(5):
            assert (await clients.http.get(local_http_server)).text == "ok"
        assert clients.openai._client is clients.http  # OpenAI rides the same connections
        assert await clients.health_check() == {"http": True, "storage": True}

        [http, storage] = ClientReading.read_all(metrics)
        assert (http.name, http.up, http.in_use, http.idle) == ("http", True, 0, 1)  # one connection served all five
        assert (storage.name, storage.up, storage.in_use) == ("storage", True, None)  # SQLite: no pool to tell


async def test_the_exit_stack_closes_every_client_once(tmp_path: Path) -> None:
    stack = contextlib.AsyncExitStack()
    clients = await open_clients(settings(tmp_path, redis_url=shared_redis_url()), stack)
    assert await clients.redis.ping()  # type: ignore[union-attr]

    await stack.aclose()
    await stack.aclose()  # idempotent

    assert clients.http.is_closed
    with pytest.raises(Exception, match="closed"):
        await clients.storage.get_profile("123e4567-e89b-12d3-a456-426614174000")


async def test_a_failing_health_check_shows_in_the_metrics(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    async with contextlib.AsyncExitStack() as stack:
        clients = await open_clients(settings(tmp_path, redis_url=nothing_listens), stack, metrics=metrics)
        assert await clients.health_check() == {"http": True, "storage": True, "redis": False}
        assert metrics.value("companion_client_up", client="redis") == 0
        assert metrics.value("companion_client_check_failures_total", client="redis") == 1


async def test_redis_is_absent_when_not_configured(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        clients = await open_clients(settings(tmp_path), stack)
        assert clients.redis is None
