"""PostgreSQL backend through an asyncpg connection pool (a Supabase database's connection string works too).

Batches travel as one array per column through ``unnest``, in asyncpg's binary format, so N rows cost one round
trip and no text conversion. Driver errors are translated to :mod:`core.errors` here and nowhere else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg

from core.errors import InvalidInputError, StorageError, StorageUnavailableError
from infrastructure.storage import wire
from infrastructure.storage.migrations import apply_migrations
from infrastructure.storage.port import Storage
from infrastructure.storage.records import (
    Conversation,
    DeletedCounts,
    Memory,
    MemoryAccess,
    MemoryChange,
    MemoryWrite,
    Message,
    MessageWrite,
    OnboardingAnswers,
    Profile,
    SavedMemory,
    Tombstone,
    UserChanges,
)
from infrastructure.storage.retryable import is_retryable

_MEMORY_COLUMNS = ", ".join(wire.MEMORY_COLUMNS)


class PostgresStorage(Storage):
    backend_name = "postgres"

    def __init__(self, *, pool: asyncpg.Pool) -> None:
        super().__init__()
        self._pool = pool

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        migrate: bool = True,
        command_timeout: float = 10.0,
        statement_cache_size: int = 100,
    ) -> PostgresStorage:
        """Open a pool on ``dsn`` and, with ``migrate``, apply pending migrations first. ``statement_cache_size=0``
        behind a pooler in transaction mode: asyncpg then prepares no named statement that could outlive a
        transaction's server connection."""
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min(min_size, max_size),
                max_size=max_size,
                command_timeout=command_timeout,
                statement_cache_size=statement_cache_size,
                init=_init_connection,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StorageUnavailableError("could not connect to PostgreSQL (check DATABASE_URL)") from exc
        storage = cls(pool=pool)
        if migrate:
            try:
                with storage._translate():
                    async with pool.acquire() as conn:
                        await apply_migrations(conn)
            except BaseException:
                await pool.close()
                raise
        return storage

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def aclose(self) -> None:
        if not self._pool.is_closing():
            await self._pool.close()

    async def ping(self) -> None:
        await self._fetchval("select 1")

    # Round trips ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        # Causes are dropped (from None): asyncpg's messages quote the offending values, which are user data.
        try:
            yield
        except asyncpg.DataError:  # a value the driver could not encode: the row, not the database
            raise StorageError("postgres refused a value") from None
        except asyncpg.PostgresError as exc:
            sqlstate = exc.sqlstate or ""
            raise StorageError(f"postgres error {sqlstate}", retryable=is_retryable(sqlstate)) from None
        except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StorageUnavailableError("PostgreSQL is unreachable") from exc

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.stats.queries += 1
        with self._translate():
            return await self._pool.fetch(sql, *args)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        self.stats.queries += 1
        with self._translate():
            return await self._pool.fetchrow(sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        self.stats.queries += 1
        with self._translate():
            return await self._pool.fetchval(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> str:
        self.stats.queries += 1
        with self._translate():
            return await self._pool.execute(sql, *args)

    # Profiles ---------------------------------------------------------------------------------------------

    async def _ensure_profile(self, user_id: uuid.UUID, at: dt.datetime) -> Profile:
        # One round trip: the insert's row if it created one, else the row that was there.
        row = await self._fetchrow(
            """
            with created as (
                insert into public.profiles (user_id, created_at, updated_at) values ($1, $2, $2)
                on conflict (user_id) do nothing returning *
            )
            select * from created union all select * from public.profiles where user_id = $1 limit 1
            """,
            user_id,
            at,
        )
        if row is None:  # another session inserted it after this statement's snapshot: read it now
            row = await self._fetchrow("select * from public.profiles where user_id = $1", user_id)
        if row is None:
            raise StorageError("profile vanished while being ensured", retryable=True)
        return wire.profile_from_row(row)

    async def _get_profile(self, user_id: uuid.UUID) -> Profile | None:
        row = await self._fetchrow("select * from public.profiles where user_id = $1", user_id)
        return None if row is None else wire.profile_from_row(row)

    async def _recent_profiles(self, limit: int) -> list[Profile]:
        rows = await self._fetch("select * from public.profiles order by updated_at desc, user_id limit $1", limit)
        return [wire.profile_from_row(r) for r in rows]

    async def _update_profile(self, user_id: uuid.UUID, changes: dict[str, str | None], at: dt.datetime) -> Profile:
        names = sorted(changes)  # validated against PROFILE_FIELDS by the port
        columns = ", ".join(names)
        params = ", ".join(f"${i + 3}" for i in range(len(names)))
        updates = ", ".join(f"{n} = excluded.{n}" for n in names)
        row = await self._fetchrow(
            f"insert into public.profiles (user_id, created_at, updated_at, {columns}) values ($1, $2, $2, {params}) "
            f"on conflict (user_id) do update set {updates}, updated_at = excluded.updated_at returning *",
            user_id,
            at,
            *(changes[n] for n in names),
        )
        assert row is not None
        return wire.profile_from_row(row)

    # Onboarding -------------------------------------------------------------------------------------------

    async def _save_onboarding(self, user_id: uuid.UUID, answers: dict[str, Any], at: dt.datetime) -> OnboardingAnswers:
        row = await self._fetchrow(
            "insert into public.onboarding_answers (user_id, answers, submitted_at) values ($1, $2, $3) "
            "on conflict (user_id) do update set answers = excluded.answers, submitted_at = excluded.submitted_at "
            "returning *",
            user_id,
            answers,
            at,
        )
        assert row is not None
        return wire.onboarding_from_row(row)

    async def _get_onboarding(self, user_id: uuid.UUID) -> OnboardingAnswers | None:
        row = await self._fetchrow("select * from public.onboarding_answers where user_id = $1", user_id)
        return None if row is None else wire.onboarding_from_row(row)

    async def _claim_onboarding(self, user_id: uuid.UUID, at: dt.datetime) -> bool:
        status = await self._execute(
            "update public.onboarding_answers set processed_at = $2 where user_id = $1 and processed_at is null",
            user_id,
            at,
        )
        return status == "UPDATE 1"

    # Memories ---------------------------------------------------------------------------------------------

    async def _upsert_memories(self, writes: list[MemoryWrite], read_back: bool) -> list[Memory]:
        # One array per column, sent in asyncpg's binary format: no row is turned into text on either side.
        run = self._fetch if read_back else self._execute
        rows = await run(
            f"""
            insert into public.memories as m
                (user_id, category, key, value, importance, source, embedding, created_at, updated_at)
            select r.user_id, r.category, r.key, r.value, r.importance, r.source, r.embedding, r.at, r.at
              from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::real[], $6::text[], $7::bytea[],
                          $8::timestamptz[])
                   as r(user_id, category, key, value, importance, source, embedding, at)
            on conflict (user_id, category, key) do update
               set value = excluded.value, importance = excluded.importance, source = excluded.source,
                   embedding = excluded.embedding, updated_at = excluded.updated_at
            {"returning " + _MEMORY_COLUMNS if read_back else "where excluded.updated_at >= m.updated_at"}
            """,
            [w.user_id for w in writes],
            [w.category for w in writes],
            [w.key for w in writes],
            [w.value for w in writes],
            [w.importance for w in writes],
            [w.source for w in writes],
            [wire.embedding_bytes(w.embedding) for w in writes],
            [w.at for w in writes],
        )
        return wire.in_write_order(writes, rows) if read_back else []

    async def _save_memory_if(self, write: MemoryWrite, expected_version: int | None) -> SavedMemory:
        # "Only if absent" is an insert that does nothing on a conflict; "only at version v" an update of the row at
        # v, never an insert (a row gone was deleted by another session: that write loses). When it does not win,
        # the second branch reads the row that holds, in the same round trip.
        if expected_version is None:
            attempt = f"""
                insert into public.memories
                    (user_id, category, key, value, importance, source, embedding, created_at, updated_at)
                values ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                on conflict (user_id, category, key) do nothing
                returning {_MEMORY_COLUMNS}, null::bytea as embedding, true as won"""
        else:
            attempt = f"""
                update public.memories as m
                   set value = $4, importance = $5, source = $6, embedding = $7, updated_at = $8
                 where user_id = $1 and category = $2 and key = $3 and m.version = $9
                returning {_MEMORY_COLUMNS}, null::bytea as embedding, true as won"""
        rows = await self._fetch(
            f"""
            with won as ({attempt})
            select * from won
            union all
            select {_MEMORY_COLUMNS}, embedding, false from public.memories
             where user_id = $1 and category = $2 and key = $3 and not exists (select 1 from won)
            """,
            write.user_id,
            write.category,
            write.key,
            write.value,
            write.importance,
            write.source,
            wire.embedding_bytes(write.embedding),
            write.at,
            *(() if expected_version is None else (expected_version,)),
        )
        memory = wire.memory_from_row(rows[0]) if rows else None
        if rows and rows[0]["won"]:
            return SavedMemory(won=True, memory=dataclasses.replace(memory, embedding=write.embedding))  # type: ignore[arg-type]
        if memory is None or memory.version == expected_version:
            # Lost to a write committed after this statement's snapshot, which still shows the row as it was (or
            # no row): read what holds now.
            memory = await self._get_memory(write.user_id, write.category, write.key)
        return SavedMemory(won=False, memory=memory)

    async def _get_memory(self, user_id: uuid.UUID, category: str, key: str) -> Memory | None:
        row = await self._fetchrow(
            f"select {_MEMORY_COLUMNS}, embedding from public.memories where user_id = $1 and category = $2 and key = $3",
            user_id,
            category,
            key,
        )
        return None if row is None else wire.memory_from_row(row)

    async def _list_memories(
        self, user_id: uuid.UUID, category: str | None, include_embeddings: bool, limit: int | None
    ) -> list[Memory]:
        columns = _MEMORY_COLUMNS + (", embedding" if include_embeddings else "")
        rows = await self._fetch(
            f"select {columns} from public.memories where user_id = $1 and ($2::text is null or category = $2) "
            "order by updated_at desc, id limit $3",
            user_id,
            category,
            limit,
        )
        return [wire.memory_from_row(r) for r in rows]

    async def _delete_memories(self, user_id: uuid.UUID, keys: list[tuple[str, str]]) -> int:
        status = await self._execute(
            "delete from public.memories m using jsonb_to_recordset($2::jsonb) as k(category text, key text) "
            "where m.user_id = $1 and m.category = k.category and m.key = k.key",
            user_id,
            [{"category": c, "key": k} for c, k in keys],
        )
        return int(status.rsplit(" ", 1)[1])

    async def _record_memory_access(self, accesses: list[MemoryAccess]) -> None:
        await self._execute("select public.companion_record_memory_access($1::jsonb)", wire.access_rows(accesses))

    async def _memory_history(self, user_id: uuid.UUID, category: str, key: str) -> list[MemoryChange]:
        rows = await self._fetch(
            "select user_id, category, key, old_value, new_value, changed_at from public.memory_history "
            "where user_id = $1 and category = $2 and key = $3 order by changed_at, id",
            user_id,
            category,
            key,
        )
        return [wire.memory_change_from_row(r) for r in rows]

    async def _all_memory_history(self, user_id: uuid.UUID) -> list[MemoryChange]:
        rows = await self._fetch(
            "select user_id, category, key, old_value, new_value, changed_at from public.memory_history "
            "where user_id = $1 order by changed_at, id",
            user_id,
        )
        return [wire.memory_change_from_row(r) for r in rows]

    # Conversations ----------------------------------------------------------------------------------------

    async def _start_conversation(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, at: dt.datetime
    ) -> Conversation:
        row = await self._fetchrow(
            """
            with created as (
                insert into public.conversations (id, user_id, started_at) values ($1, $2, $3)
                on conflict (id) do nothing returning *
            )
            select * from created union all
            select * from public.conversations where id = $1 and user_id = $2 limit 1
            """,
            conversation_id,
            user_id,
            at,
        )
        if row is None:  # inserted concurrently after this statement's snapshot, or someone else's id
            row = await self._fetchrow(
                "select * from public.conversations where id = $1 and user_id = $2", conversation_id, user_id
            )
        if row is None:
            raise InvalidInputError("conversation id is already used by another user")
        return wire.conversation_from_row(row)

    async def _finish_conversation(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        at: dt.datetime,
        summary: str | None,
        open_threads: tuple[str, ...],
    ) -> None:
        await self._execute(
            """
            insert into public.conversations (id, user_id, started_at, ended_at, summary, open_threads)
            values ($1, $2, $3, $3, $4, $5)
            on conflict (id) do update
               set ended_at = excluded.ended_at, summary = excluded.summary, open_threads = excluded.open_threads
             where conversations.user_id = excluded.user_id
            """,
            conversation_id,
            user_id,
            at,
            summary,
            list(open_threads),
        )

    async def _recent_conversations(self, user_id: uuid.UUID, limit: int) -> list[Conversation]:
        rows = await self._fetch(
            "select * from public.conversations where user_id = $1 order by started_at desc, id limit $2",
            user_id,
            limit,
        )
        return [wire.conversation_from_row(r) for r in rows]

    async def _append_messages(self, messages: list[MessageWrite]) -> int:
        status = await self._execute(
            """
            insert into public.messages (id, conversation_id, user_id, role, content, created_at)
            select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::timestamptz[])
            on conflict (id) do nothing
            """,
            [m.id for m in messages],
            [m.conversation_id for m in messages],
            [m.user_id for m in messages],
            [m.role for m in messages],
            [m.content for m in messages],
            [m.at for m in messages],
        )
        return int(status.rsplit(" ", 1)[1])

    async def _recent_messages(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID | None, limit: int
    ) -> list[Message]:
        rows = await self._fetch(
            "select * from public.messages where user_id = $1 and ($2::uuid is null or conversation_id = $2) "
            "order by created_at desc, id desc limit $3",
            user_id,
            conversation_id,
            limit,
        )
        return [wire.message_from_row(r) for r in reversed(rows)]

    async def _delete_user_data(self, user_id: uuid.UUID) -> DeletedCounts:
        counts = await self._fetchval("select public.companion_delete_user_data($1)", user_id)
        return DeletedCounts(**counts)

    async def _user_version(self, user_id: uuid.UUID) -> int:
        version = await self._fetchval("select version from public.user_versions where user_id = $1", user_id)
        return 0 if version is None else int(version)

    async def _changes_since(self, user_id: uuid.UUID, version: int) -> UserChanges:
        self.stats.queries += 1
        with self._translate():  # one snapshot: the version read is the one the rows read belong to
            async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
                versions = await conn.fetchrow(
                    "select version, erased_version, pruned_version from public.user_versions where user_id = $1",
                    user_id,
                )
                everything = versions is not None and version < int(versions["pruned_version"])
                since = -1 if everything else version
                memories = await conn.fetch(
                    f"select {_MEMORY_COLUMNS}, embedding from public.memories where user_id = $1 and version > $2 "
                    "order by version",
                    user_id,
                    since,
                )
                deleted = [] if everything else await conn.fetch(
                    "select key_hash, version from public.memory_tombstones where user_id = $1 and version > $2",
                    user_id,
                    version,
                )  # fmt: skip
                profile = await conn.fetchrow("select * from public.profiles where user_id = $1", user_id)
        return UserChanges(
            version=0 if versions is None else int(versions["version"]),
            erased_version=0 if versions is None else int(versions["erased_version"]),
            memories=tuple(wire.memory_from_row(r) for r in memories),
            deleted=tuple(Tombstone(r["key_hash"], int(r["version"])) for r in deleted),
            profile=None if profile is None else wire.profile_from_row(profile),
            everything=everything,
        )

    async def _prune_tombstones(self, before: dt.datetime) -> int:
        return int(await self._fetchval("select public.companion_prune_tombstones($1)", before))

    async def _record_forgetting(self, user_id: uuid.UUID, at: dt.datetime) -> None:
        await self._execute(
            "insert into public.forgettings (user_id, forgotten_at) values ($1, $2) on conflict (user_id) do update "
            "set forgotten_at = greatest(forgettings.forgotten_at, excluded.forgotten_at)",
            user_id,
            at,
        )

    async def _forgotten_at(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dt.datetime]:
        rows = await self._fetch(
            "select user_id, forgotten_at from public.forgettings where user_id = any($1::uuid[])", user_ids
        )
        return {r["user_id"]: r["forgotten_at"] for r in rows}

    async def _rewrite_texts(
        self,
        user_id: uuid.UUID,
        conversations: dict[uuid.UUID, tuple[str | None, tuple[str, ...]]],
        messages: dict[uuid.UUID, str],
    ) -> int:
        self.stats.queries += 1
        with self._translate():
            async with self._pool.acquire() as conn, conn.transaction():
                notes = await conn.fetchval(
                    """
                    with changed as (
                        update public.conversations c set summary = n.summary, open_threads = n.open_threads::jsonb
                          from unnest($2::uuid[], $3::text[], $4::text[]) as n(id, summary, open_threads)
                         where c.id = n.id and c.user_id = $1
                        returning 1)
                    select count(*) from changed
                    """,
                    user_id,
                    list(conversations),
                    [summary for summary, _ in conversations.values()],
                    [json.dumps(list(threads)) for _, threads in conversations.values()],
                )
                texts = await conn.fetchval(
                    """
                    with changed as (
                        update public.messages m set content = n.content
                          from unnest($2::uuid[], $3::text[]) as n(id, content)
                         where m.id = n.id and m.user_id = $1
                        returning 1)
                    select count(*) from changed
                    """,
                    user_id,
                    list(messages),
                    list(messages.values()),
                )
        return int(notes) + int(texts)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
