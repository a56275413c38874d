"""Fixtures shared by the suite: PostgreSQL databases of this run's own, and storage on every backend."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import os
import secrets
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from infrastructure.storage.migrations import apply_migrations
from infrastructure.storage.port import Storage
from infrastructure.storage.postgres import PostgresStorage
from infrastructure.storage.sqlite import SqliteStorage
from infrastructure.storage.supabase import SupabaseStorage
from tests.fakes.postgrest import PostgrestStub
from tests.redis_servers import OwnRedisServer

REPO = Path(__file__).resolve().parents[1]
SERVICE_ROLE_KEY = "test-service-role-key"
T = TypeVar("T")
T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def own_outbox_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's processes keep their outbox in its own folder: a write one test left must not replay in another."""
    folder = tmp_path / "outbox"
    monkeypatch.setenv("OUTBOX_DIR", str(folder))
    return folder


def admin_dsn() -> str:
    """The server the test command started (or the one TEST_DATABASE_URL names); tests make databases on it."""
    dsn = os.environ.get("TEST_DATABASE_URL")
    if not dsn:
        pytest.fail(
            "PostgreSQL tests need TEST_DATABASE_URL. `make test` starts a local server and sets it; to run pytest "
            'by hand: eval "$(scripts/test-services.sh)" && .venv/bin/pytest'
        )
    return dsn


def dsn_for(database: str) -> str:
    base, _, query = admin_dsn().partition("?")
    return base.rsplit("/", 1)[0] + "/" + database + (f"?{query}" if query else "")


async def create_database(*, migrate: bool) -> str:
    """A new empty database owned by the test role (migrated with ``migrate``); returns its name."""
    name = f"companion_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin_dsn())
    try:
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    if migrate:
        conn = await asyncpg.connect(dsn_for(name))
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
    return name


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(admin_dsn())
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


def run_in_thread(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on a loop of its own: session fixtures may be set up from inside a test's running loop."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedisServer]:
    """A redis-server of the test's own, on a port of its own: the test may stop, restart or snapshot it."""
    server = OwnRedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def migrated_database() -> Iterator[str]:
    """One migrated database for the whole run (tests isolate themselves with fresh user ids); dropped at the end."""
    name = run_in_thread(create_database(migrate=True))
    try:
        yield dsn_for(name)
    finally:
        run_in_thread(drop_database(name))


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    """A database of this test's own with no schema at all; dropped afterwards."""
    name = await create_database(migrate=False)
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


@pytest.fixture
async def postgrest_stub() -> AsyncIterator[PostgrestStub]:
    stub = PostgrestStub(service_role_key=SERVICE_ROLE_KEY)
    await stub.start()
    try:
        yield stub
    finally:
        await stub.aclose()


@dataclass
class Backend:
    name: str
    storage: Storage
    stub: PostgrestStub | None = None


@pytest.fixture(params=["sqlite", "postgres", "supabase"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The same storage contract on each backend: SQLite file, real PostgreSQL, Supabase client on the stub."""
    stub = None
    storage: Storage
    if request.param == "sqlite":
        storage = await SqliteStorage.open(tmp_path / "companion.db")
    elif request.param == "postgres":
        storage = await PostgresStorage.open(request.getfixturevalue("migrated_database"), migrate=False)
    else:
        stub = PostgrestStub(service_role_key=SERVICE_ROLE_KEY)
        await stub.start()
        storage = await SupabaseStorage.open(stub.url, SERVICE_ROLE_KEY)
    try:
        yield Backend(name=request.param, storage=storage, stub=stub)
    finally:
        await storage.aclose()
        if stub is not None:
            await stub.aclose()
