"""The migrations and row-level security on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from core.errors import StorageUnavailableError
from infrastructure.storage import MemoryWrite, MessageWrite, UserChanges, wire
from infrastructure.storage.migrations import apply_migrations, discover
from infrastructure.storage.postgres import PostgresStorage
from tests.conftest import T0

TABLES = ("profiles", "onboarding_answers", "memories", "memory_history", "conversations", "messages")


async def _seed(store: PostgresStorage, user: uuid.UUID) -> None:
    conversation = uuid.uuid4()
    await store.update_profile(user, {"name": "someone"}, at=T0)
    await store.save_onboarding(user, {"goal": "sleep better"}, at=T0)
    await store.upsert_memories([MemoryWrite(user, "FACT", "k", "v1", 0.5, "tool", T0)])
    await store.upsert_memories([MemoryWrite(user, "FACT", "k", "v2", 0.5, "tool", T0)])
    await store.start_conversation(user, conversation, at=T0)
    await store.append_messages([MessageWrite(uuid.uuid4(), conversation, user, "user", "hi", T0)])


async def _visible_users(conn: asyncpg.Connection, table: str) -> set[uuid.UUID]:
    return {r["user_id"] for r in await conn.fetch(f"select user_id from public.{table}")}


async def _as(conn: asyncpg.Connection, role: str, sub: uuid.UUID | None = None) -> None:
    """Become ``role`` for the current transaction, with the JWT claims PostgREST would set."""
    await conn.execute(f"set local role {role}")
    claims = {"role": role} | ({"sub": str(sub)} if sub else {})
    await conn.execute("select set_config('request.jwt.claims', $1, true)", json.dumps(claims))


async def test_an_end_user_reads_only_their_own_rows_and_the_service_role_reads_all(migrated_database: str) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    async with await PostgresStorage.open(migrated_database, migrate=False) as store:
        await _seed(store, alice)
        await _seed(store, bob)
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("grant anon, authenticated, service_role to current_user")
        for table in TABLES:
            async with conn.transaction():
                await _as(conn, "authenticated", alice)
                assert await _visible_users(conn, table) == {alice}, table
            async with conn.transaction():
                await _as(conn, "service_role")
                assert {alice, bob} <= await _visible_users(conn, table), table
            async with conn.transaction():
                await _as(conn, "anon")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await _visible_users(conn, table)
    finally:
        await conn.close()


async def test_an_end_user_writes_only_their_own_onboarding_answers(migrated_database: str) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    conn = await asyncpg.connect(migrated_database)
    try:
        await conn.execute("grant authenticated to current_user")
        async with conn.transaction():
            await _as(conn, "authenticated", alice)
            await conn.execute(
                'insert into public.onboarding_answers (user_id, answers) values ($1, \'{"name": "Alice"}\')', alice
            )
        async with conn.transaction():
            await _as(conn, "authenticated", alice)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # row-level security: not her row
                await conn.execute("insert into public.onboarding_answers (user_id) values ($1)", bob)
        async with conn.transaction():
            await _as(conn, "authenticated", alice)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # no grant: memories are the worker's
                await conn.execute(
                    "insert into public.memories (user_id, category, key, value) values ($1, 'FACT', 'k', 'v')", alice
                )
        assert await conn.fetchval("select count(*) from public.onboarding_answers where user_id = $1", alice) == 1
    finally:
        await conn.close()


async def test_migrations_apply_once_and_reapplying_them_is_harmless(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        versions = [m.version for m in discover()]
        assert await apply_migrations(conn) == versions
        assert await apply_migrations(conn) == []
        async with await PostgresStorage.open(empty_database, migrate=False) as store:
            user = uuid.uuid4()
            await _seed(store, user)
            assert await apply_migrations(conn, force=True) == versions  # every statement again, over live data
            [kept] = await store.list_memories(user)
            assert kept.value == "v2"
            assert len(await store.memory_history(user, "FACT", "k")) == 1
    finally:
        await conn.close()


async def test_workers_starting_together_migrate_an_empty_database_once(empty_database: str) -> None:
    stores = await asyncio.gather(*(PostgresStorage.open(empty_database) for _ in range(3)))
    try:
        user = uuid.uuid4()
        await stores[0].ensure_profile(user, at=T0)
        assert await stores[2].get_profile(user) is not None
        conn = await asyncpg.connect(empty_database)
        try:
            recorded = await conn.fetch("select version from public.companion_schema_migrations order by version")
        finally:
            await conn.close()
        assert [r["version"] for r in recorded] == [m.version for m in discover()]
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


def test_a_migration_file_without_a_number_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("select 1;")
    (tmp_path / "add_things.sql").write_text("select 1;")
    with pytest.raises(ValueError, match="NNNN_description.sql"):
        discover(tmp_path)


async def test_an_unreachable_server_is_reported_as_retryable() -> None:
    with pytest.raises(StorageUnavailableError) as caught:
        await PostgresStorage.open("postgresql://nobody:secret@127.0.0.1:9/companion", migrate=False)
    assert caught.value.retryable
    assert "secret" not in str(caught.value)


async def test_calls_after_close_raise_a_storage_error_not_a_driver_error(migrated_database: str) -> None:
    store = await PostgresStorage.open(migrated_database, migrate=False)
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StorageUnavailableError):
        await store.get_profile(uuid.uuid4())


@pytest.mark.parametrize(("cache_size", "prepares_named"), [(0, False), (100, True)])
async def test_statement_cache_size_zero_leaves_no_named_prepared_statement_on_the_connection(
    migrated_database: str, cache_size: int, prepares_named: bool
) -> None:
    # Behind a pooler in transaction mode (Supavisor on 6543, PgBouncer before 1.21) the next transaction may run on
    # another server connection, where a statement asyncpg prepared by name does not exist.
    store = await PostgresStorage.open(migrated_database, migrate=False, max_size=1, statement_cache_size=cache_size)
    try:
        user = uuid.uuid4()
        await _seed(store, user)
        await store.get_profile(user)
        await store.list_memories(user)
        async with store._pool.acquire() as conn:  # the pool's one connection: the one that ran them
            named = await conn.fetchval("select count(*) from pg_prepared_statements")
    finally:
        await store.aclose()
    assert (named > 0) is prepares_named


async def test_the_one_request_change_feed_function_reads_what_the_postgres_backend_reads(
    migrated_database: str,
) -> None:
    """0007's companion_changes_since, which the Supabase backend calls, on the real server: decoded as that backend
    decodes it, it equals PostgresStorage's own reading, embeddings and the pruned case included."""
    store = await PostgresStorage.open(migrated_database, migrate=False)
    conn = await asyncpg.connect(migrated_database)
    try:
        user = uuid.uuid4()
        vector = np.arange(384, dtype=np.float32) / 384
        await store.ensure_profile(user, at=T0)
        await store.upsert_memories([MemoryWrite(user, "FACT", "job", "nurse", 0.5, "tool", T0, embedding=vector),
                                     MemoryWrite(user, "FACT", "pin", "4921", 0.7, "tool", T0)])  # fmt: skip
        start = await store.user_version(user)
        await store.upsert_memories([MemoryWrite(user, "FACT", "job", "midwife", 0.5, "tool", T0, embedding=vector)])
        await store.delete_memories(user, [("FACT", "pin")])

        async def both(since: int) -> tuple[UserChanges, UserChanges]:
            feed = json.loads(await conn.fetchval("select public.companion_changes_since($1, $2)", user, since))
            return wire.changes_from_json(feed), await store.changes_since(user, since)

        for since in (0, start, await store.user_version(user)):
            called, read = await both(since)
            assert called == read
            assert [m.embedding.tobytes() for m in called.memories] == [m.embedding.tobytes() for m in read.memories]
        assert (await both(start))[0].deleted != ()
        await store.prune_tombstones(before=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))
        called, read = await both(start)
        assert called == read
        assert called.everything
        async with conn.transaction():
            await _as(conn, "authenticated", user)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # it reads every user's rows: the worker's only
                await conn.fetchval("select public.companion_changes_since($1, 0)", user)
    finally:
        await conn.close()
        await store.aclose()
