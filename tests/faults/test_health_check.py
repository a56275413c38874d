"""A stalled database during a health tool: the tool answers that storage is down, in seconds, not never."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from prometheus_client import CollectorRegistry

from core.config import Settings
from infrastructure.clients import HEALTH_CHECK_TIMEOUT, open_clients
from infrastructure.metrics import ClientReading, Metrics
from tests.faults.servers import OwnPostgresServer


async def test_a_database_that_stops_answering_is_reported_down_within_the_check_timeout(
    tmp_path: Path, own_postgres: OwnPostgresServer
) -> None:
    metrics = Metrics(CollectorRegistry())
    settings = Settings(_env_file=None, database_url=own_postgres.dsn)  # type: ignore[call-arg]
    async with contextlib.AsyncExitStack() as stack:
        clients = await open_clients(settings, stack, metrics=metrics)
        assert (await clients.health_check())["storage"] is True
        own_postgres.pause()  # the host hangs: its connections stay open and nothing answers
        try:
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(HEALTH_CHECK_TIMEOUT * 3):
                results = await clients.health_check()
            waited = asyncio.get_running_loop().time() - started
        finally:
            own_postgres.resume()
        assert results["storage"] is False
        assert waited < HEALTH_CHECK_TIMEOUT * 3
        storage = next(c for c in ClientReading.read_all(metrics) if c.name == "storage")
        assert storage.up is False
        assert (await clients.health_check())["storage"] is True  # and up again once it answers
