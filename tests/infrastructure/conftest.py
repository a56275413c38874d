"""Fixtures of the infrastructure tests: a real database (SQLite file or PostgreSQL) that can be made to refuse."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from infrastructure.storage import Storage
from infrastructure.storage.postgres import PostgresStorage
from infrastructure.storage.sqlite import SqliteStorage


@dataclass
class Database:
    """A storage backend plus a way to make the real database refuse writes for a while (a held lock)."""

    storage: Storage
    lock: Callable[[], contextlib.AbstractAsyncContextManager[None]]
    refuse_value: Callable[[str], contextlib.AbstractAsyncContextManager[None]]


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "batcher.db"
        storage = await SqliteStorage.open(path, busy_timeout=0.05)

        @contextlib.asynccontextmanager
        async def lock() -> AsyncIterator[None]:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("begin immediate")  # another process holds the write lock
            try:
                yield
            finally:
                other.execute("rollback")
                other.close()

        @contextlib.asynccontextmanager
        async def refuse_value(value: str) -> AsyncIterator[None]:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute(
                "create trigger refuse before insert on memories when new.value = ? "
                "begin select raise(abort, 'refused'); end".replace("?", "'" + value + "'")
            )
            try:
                yield
            finally:
                other.execute("drop trigger refuse")
                other.close()

    else:
        dsn = request.getfixturevalue("migrated_database")
        storage = await PostgresStorage.open(dsn, migrate=False, command_timeout=0.2)

        @contextlib.asynccontextmanager
        async def lock() -> AsyncIterator[None]:
            other = await asyncpg.connect(dsn)
            transaction = other.transaction()
            await transaction.start()
            await other.execute("lock table public.memories, public.messages in access exclusive mode")
            try:
                yield
            finally:
                await transaction.rollback()
                await other.close()

        @contextlib.asynccontextmanager
        async def refuse_value(value: str) -> AsyncIterator[None]:
            other = await asyncpg.connect(dsn)
            constraint = f"refuse_{uuid.uuid4().hex[:8]}"
            await other.execute(
                f"alter table public.memories add constraint {constraint} check (value <> '{value}') not valid"
            )
            try:
                yield
            finally:
                await other.execute(f"alter table public.memories drop constraint {constraint}")
                await other.close()

    try:
        yield Database(storage=storage, lock=lock, refuse_value=refuse_value)
    finally:
        await storage.aclose()
