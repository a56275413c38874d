"""SQLite backend (the embedded default) through aiosqlite; the schema is created on first use.

One connection per process, in WAL mode with a busy timeout so that several job processes can share the file.
Writes that take more than one statement run under a lock in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import aiosqlite

from core.errors import InvalidInputError, StorageError, StorageUnavailableError
from infrastructure.storage import wire
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
    memory_key_hash,
)

SCHEMA = Path(__file__).with_name("sqlite_schema.sql")
# SQLite allows 32,766 bound parameters per statement; 9 per memory row keeps a chunk well inside that.
_ROWS_PER_STATEMENT = 500
_MEMORY_COLUMNS = ", ".join(wire.MEMORY_COLUMNS)


class SqliteStorage(Storage):
    backend_name = "sqlite"

    def __init__(self, *, connection: aiosqlite.Connection) -> None:
        super().__init__()
        self._db = connection
        self._write_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: str | Path, *, busy_timeout: float = 5.0) -> SqliteStorage:
        """Open (creating the file, its folder and the schema if needed) the database at ``path``.

        ``busy_timeout``: how long a write waits for another process's write lock before failing (retryably)."""
        path = Path(path)
        try:
            await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
            connection = await aiosqlite.connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailableError("could not open the SQLite database (check DATABASE_URL)") from exc
        connection.row_factory = sqlite3.Row
        storage = cls(connection=connection)
        try:
            with storage._translate():
                await connection.execute("pragma journal_mode = wal")
                # In WAL mode NORMAL loses no committed write on a crash of the process, only on power loss,
                # and spares an fsync per commit.
                await connection.execute("pragma synchronous = normal")
                await connection.execute(f"pragma busy_timeout = {int(busy_timeout * 1000)}")
                await connection.execute("pragma foreign_keys = on")
                await _add_missing_columns(connection)
                await connection.executescript(await asyncio.to_thread(SCHEMA.read_text, encoding="utf-8"))
        except BaseException:
            await connection.close()
            raise
        return storage

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._db.close()

    async def ping(self) -> None:
        await self._fetchall("select 1")

    # Round trips ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        if self._closed:
            raise StorageUnavailableError("the SQLite storage is closed")
        try:
            yield
        except sqlite3.Error as exc:
            # Only a lock held by another connection passes; a disk error or a bad statement does not.
            busy = getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
            raise StorageError(f"sqlite error {getattr(exc, 'sqlite_errorname', '')}", retryable=busy) from None
        except ValueError as exc:
            if "no active connection" in str(exc):  # aiosqlite, after close
                raise StorageUnavailableError("the SQLite connection is closed") from None
            raise StorageError("sqlite refused a value") from None

    async def _fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        self.stats.queries += 1
        with self._translate():
            async with self._db.execute(sql, tuple(params)) as cursor:
                return list(await cursor.fetchall())

    async def _fetchone(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Row | None:
        rows = await self._fetchall(sql, params)
        return rows[0] if rows else None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """Serialise writers of this process and commit (or roll back) what ran inside."""
        async with self._write_lock:
            try:
                yield
            except BaseException:
                if not self._closed:
                    await self._db.rollback()
                raise
            with self._translate():
                await self._db.commit()

    async def _write(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._transaction():
            return await self._fetchall(sql, params)

    # Profiles ---------------------------------------------------------------------------------------------

    async def _ensure_profile(self, user_id: uuid.UUID, at: dt.datetime) -> Profile:
        stamp = _time(at)
        async with self._transaction():
            await self._fetchall(
                "insert into profiles (user_id, created_at, updated_at) values (?, ?, ?) on conflict do nothing",
                (str(user_id), stamp, stamp),
            )
            row = await self._fetchone("select * from profiles where user_id = ?", (str(user_id),))
        assert row is not None
        return wire.profile_from_row(_decoded(row))

    async def _get_profile(self, user_id: uuid.UUID) -> Profile | None:
        row = await self._fetchone("select * from profiles where user_id = ?", (str(user_id),))
        return None if row is None else wire.profile_from_row(_decoded(row))

    async def _recent_profiles(self, limit: int) -> list[Profile]:
        rows = await self._fetchall("select * from profiles order by updated_at desc, user_id limit ?", (limit,))
        return [wire.profile_from_row(_decoded(r)) for r in rows]

    async def _update_profile(self, user_id: uuid.UUID, changes: dict[str, str | None], at: dt.datetime) -> Profile:
        names = sorted(changes)  # validated against PROFILE_FIELDS by the port
        stamp = _time(at)
        rows = await self._write(
            f"insert into profiles (user_id, created_at, updated_at, {', '.join(names)}) "
            f"values (?, ?, ?, {', '.join('?' for _ in names)}) on conflict (user_id) do update set "
            + ", ".join(f"{n} = excluded.{n}" for n in names)
            + ", updated_at = excluded.updated_at returning *",
            (str(user_id), stamp, stamp, *(changes[n] for n in names)),
        )
        return wire.profile_from_row(_decoded(rows[0]))

    # Onboarding -------------------------------------------------------------------------------------------

    async def _save_onboarding(self, user_id: uuid.UUID, answers: dict[str, Any], at: dt.datetime) -> OnboardingAnswers:
        rows = await self._write(
            "insert into onboarding_answers (user_id, answers, submitted_at) values (?, ?, ?) "
            "on conflict (user_id) do update set answers = excluded.answers, submitted_at = excluded.submitted_at "
            "returning *",
            (str(user_id), json.dumps(answers), _time(at)),
        )
        return wire.onboarding_from_row(_decoded(rows[0]))

    async def _get_onboarding(self, user_id: uuid.UUID) -> OnboardingAnswers | None:
        row = await self._fetchone("select * from onboarding_answers where user_id = ?", (str(user_id),))
        return None if row is None else wire.onboarding_from_row(_decoded(row))

    async def _claim_onboarding(self, user_id: uuid.UUID, at: dt.datetime) -> bool:
        rows = await self._write(
            "update onboarding_answers set processed_at = ? where user_id = ? and processed_at is null returning 1",
            (_time(at), str(user_id)),
        )
        return len(rows) == 1

    # Memories ---------------------------------------------------------------------------------------------

    async def _upsert_memories(self, writes: list[MemoryWrite], read_back: bool) -> list[Memory]:
        stored: list[sqlite3.Row] = []
        async with self._transaction():
            for start in range(0, len(writes), _ROWS_PER_STATEMENT):
                chunk = writes[start : start + _ROWS_PER_STATEMENT]
                params: list[Any] = []
                for w in chunk:
                    stamp = _time(w.at)
                    params += [str(uuid.uuid4()), str(w.user_id), w.category, w.key, w.value, float(w.importance),
                               w.source, wire.embedding_bytes(w.embedding), stamp, stamp]  # fmt: skip
                rows = await self._fetchall(
                    "insert into memories (id, user_id, category, key, value, importance, source, embedding, "
                    "created_at, updated_at) values "
                    + ", ".join("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)" for _ in chunk)
                    + " on conflict (user_id, category, key) do update set value = excluded.value, "
                    "importance = excluded.importance, source = excluded.source, embedding = excluded.embedding, "
                    "updated_at = excluded.updated_at" + (" returning id" if read_back else _KEEP_NEWER),
                    params,
                )
                if read_back:  # read again: RETURNING shows the row before the triggers stamped its version
                    ids = [r["id"] for r in rows]
                    stored += await self._fetchall(
                        f"select {_MEMORY_COLUMNS} from memories where id in ({', '.join('?' for _ in ids)})", ids
                    )
        return wire.in_write_order(writes, stored) if read_back else []

    async def _save_memory_if(self, write: MemoryWrite, expected_version: int | None) -> SavedMemory:
        # "Only if absent": an insert that does nothing on a conflict; "only at version v": an update of the row at
        # v, never an insert (a row gone was deleted by another session: that write loses).
        stamp = _time(write.at)
        ident = (str(write.user_id), write.category, write.key)
        async with self._transaction():  # the write takes the write lock: the read after it sees what holds
            if expected_version is None:
                won = await self._fetchall(
                    "insert into memories (id, user_id, category, key, value, importance, source, embedding, "
                    "created_at, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) on conflict do nothing returning 1",
                    (str(uuid.uuid4()), *ident, write.value, float(write.importance), write.source,
                     wire.embedding_bytes(write.embedding), stamp, stamp),
                )  # fmt: skip
            else:
                won = await self._fetchall(
                    "update memories set value = ?, importance = ?, source = ?, embedding = ?, updated_at = ? "
                    "where user_id = ? and category = ? and key = ? and version = ? returning 1",
                    (write.value, float(write.importance), write.source, wire.embedding_bytes(write.embedding),
                     stamp, *ident, expected_version),
                )  # fmt: skip
            row = await self._fetchone(
                f"select {_MEMORY_COLUMNS}{'' if won else ', embedding'} from memories "
                "where user_id = ? and category = ? and key = ?",
                ident,
            )
        memory = None if row is None else wire.memory_from_row(_decoded(row))
        if won and memory is not None:
            return SavedMemory(won=True, memory=dataclasses.replace(memory, embedding=write.embedding))
        return SavedMemory(won=False, memory=memory)

    async def _get_memory(self, user_id: uuid.UUID, category: str, key: str) -> Memory | None:
        row = await self._fetchone(
            f"select {_MEMORY_COLUMNS}, embedding from memories where user_id = ? and category = ? and key = ?",
            (str(user_id), category, key),
        )
        return None if row is None else wire.memory_from_row(_decoded(row))

    async def _list_memories(
        self, user_id: uuid.UUID, category: str | None, include_embeddings: bool, limit: int | None
    ) -> list[Memory]:
        columns = _MEMORY_COLUMNS + (", embedding" if include_embeddings else "")
        rows = await self._fetchall(
            f"select {columns} from memories where user_id = ? and (? is null or category = ?) "
            "order by updated_at desc, id limit ?",
            (str(user_id), category, category, -1 if limit is None else limit),
        )
        return [wire.memory_from_row(_decoded(r)) for r in rows]

    async def _delete_memories(self, user_id: uuid.UUID, keys: list[tuple[str, str]]) -> int:
        async with self._transaction():
            rows = await self._fetchall(
                "delete from memories where user_id = ? and (category, key) in (values "
                + ", ".join("(?, ?)" for _ in keys)
                + ") returning category, key",
                (str(user_id), *(part for pair in keys for part in pair)),
            )
            await self._leave_tombstones(user_id, [(r["category"], r["key"]) for r in rows])
        return len(rows)

    async def _leave_tombstones(self, user_id: uuid.UUID, keys: list[tuple[str, str]]) -> None:
        """In the deleting transaction (the triggers have bumped the version): a tombstone for each deleted memory
        at the version the deletion brought, as 0005's trigger does on PostgreSQL."""
        if keys:
            await self._fetchall(
                "insert into memory_tombstones (user_id, key_hash, version, created_at) select ?, h.value, "
                "(select version from user_versions where user_id = ?), ? from json_each(?) as h where true "
                "on conflict (user_id, key_hash) do update set version = excluded.version, "
                "created_at = excluded.created_at",
                (
                    str(user_id),
                    str(user_id),
                    _time(dt.datetime.now(dt.UTC)),
                    json.dumps([memory_key_hash(user_id, c, k) for c, k in keys]),
                ),  # fmt: skip
            )

    async def _record_memory_access(self, accesses: list[MemoryAccess]) -> None:
        # Aggregate first so that one statement per distinct memory adds the right count; n updates, one commit.
        totals: dict[tuple[str, str, str], tuple[int, str]] = {}
        for access in accesses:
            stamp = _time(access.at)
            for category, key in access.keys:
                ident = (str(access.user_id), category, key)
                count, latest = totals.get(ident, (0, stamp))
                totals[ident] = (count + 1, max(latest, stamp))
        async with self._transaction():
            self.stats.queries += 1
            with self._translate():
                await self._db.executemany(
                    "update memories set access_count = access_count + ?, "
                    "last_accessed_at = max(coalesce(last_accessed_at, ?), ?) "
                    "where user_id = ? and category = ? and key = ?",
                    [(n, at, at, *ident) for ident, (n, at) in totals.items()],
                )

    async def _memory_history(self, user_id: uuid.UUID, category: str, key: str) -> list[MemoryChange]:
        rows = await self._fetchall(
            "select user_id, category, key, old_value, new_value, changed_at from memory_history "
            "where user_id = ? and category = ? and key = ? order by changed_at, id",
            (str(user_id), category, key),
        )
        return [wire.memory_change_from_row(r) for r in rows]

    async def _all_memory_history(self, user_id: uuid.UUID) -> list[MemoryChange]:
        rows = await self._fetchall(
            "select user_id, category, key, old_value, new_value, changed_at from memory_history "
            "where user_id = ? order by changed_at, id",
            (str(user_id),),
        )
        return [wire.memory_change_from_row(r) for r in rows]

    # Conversations ----------------------------------------------------------------------------------------

    async def _start_conversation(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, at: dt.datetime
    ) -> Conversation:
        async with self._transaction():
            await self._fetchall(
                "insert into conversations (id, user_id, started_at) values (?, ?, ?) on conflict do nothing",
                (str(conversation_id), str(user_id), _time(at)),
            )
            row = await self._fetchone(
                "select * from conversations where id = ? and user_id = ?", (str(conversation_id), str(user_id))
            )
        if row is None:
            raise InvalidInputError("conversation id is already used by another user")
        return wire.conversation_from_row(_decoded(row))

    async def _finish_conversation(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        at: dt.datetime,
        summary: str | None,
        open_threads: tuple[str, ...],
    ) -> None:
        stamp = _time(at)
        await self._write(
            "insert into conversations (id, user_id, started_at, ended_at, summary, open_threads) "
            "values (?, ?, ?, ?, ?, ?) on conflict (id) do update set ended_at = excluded.ended_at, "
            "summary = excluded.summary, open_threads = excluded.open_threads "
            "where conversations.user_id = excluded.user_id",
            (str(conversation_id), str(user_id), stamp, stamp, summary, json.dumps(list(open_threads))),
        )

    async def _recent_conversations(self, user_id: uuid.UUID, limit: int) -> list[Conversation]:
        rows = await self._fetchall(
            "select * from conversations where user_id = ? order by started_at desc, id limit ?",
            (str(user_id), limit),
        )
        return [wire.conversation_from_row(_decoded(r)) for r in rows]

    async def _append_messages(self, messages: list[MessageWrite]) -> int:
        inserted = 0
        async with self._transaction():
            for start in range(0, len(messages), _ROWS_PER_STATEMENT):
                chunk = messages[start : start + _ROWS_PER_STATEMENT]
                rows = await self._fetchall(
                    "insert into messages (id, conversation_id, user_id, role, content, created_at) values "
                    + ", ".join("(?, ?, ?, ?, ?, ?)" for _ in chunk)
                    + " on conflict (id) do nothing returning 1",
                    [
                        v
                        for m in chunk
                        for v in (str(m.id), str(m.conversation_id), str(m.user_id), m.role, m.content, _time(m.at))
                    ],
                )
                inserted += len(rows)
        return inserted

    async def _recent_messages(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID | None, limit: int
    ) -> list[Message]:
        cid = None if conversation_id is None else str(conversation_id)
        rows = await self._fetchall(
            "select * from messages where user_id = ? and (? is null or conversation_id = ?) "
            "order by created_at desc, id desc limit ?",
            (str(user_id), cid, cid, limit),
        )
        return [wire.message_from_row(r) for r in reversed(rows)]

    async def _delete_user_data(self, user_id: uuid.UUID) -> DeletedCounts:
        counts: dict[str, int] = {}
        tables = {
            "messages": "messages",
            "conversations": "conversations",
            "memory_history": "memory_history",
            "memories": "memories",
            "onboarding": "onboarding_answers",
            "profiles": "profiles",
        }
        async with self._transaction():
            for name, table in tables.items():
                rows = await self._fetchall(f"delete from {table} where user_id = ? returning 1", (str(user_id),))
                counts[name] = len(rows)
            # No tombstone outlives an erasure: the erasure's version tells sessions to drop everything instead.
            await self._fetchall("delete from memory_tombstones where user_id = ?", (str(user_id),))
            await self._fetchall(
                "insert into user_versions (user_id, version, erased_version) values (?, 1, 1) on conflict (user_id) "
                "do update set version = version + 1, erased_version = version + 1",
                (str(user_id),),
            )
            erased = await self._fetchone("select erased_version from user_versions where user_id = ?", (str(user_id),))
        assert erased is not None
        return DeletedCounts(**counts, version=int(erased["erased_version"]))

    async def _user_version(self, user_id: uuid.UUID) -> int:
        row = await self._fetchone("select version from user_versions where user_id = ?", (str(user_id),))
        return 0 if row is None else int(row["version"])

    async def _changes_since(self, user_id: uuid.UUID, version: int) -> UserChanges:
        uid = str(user_id)
        # One snapshot: the reads run in one read transaction (in WAL mode it sees the database as of its first
        # read, whatever other processes commit meanwhile), under the lock that keeps this process's writes out.
        async with self._write_lock:
            with self._translate():
                await self._db.execute("begin")
            try:
                versions = await self._fetchone(
                    "select version, erased_version, pruned_version from user_versions where user_id = ?", (uid,)
                )
                everything = versions is not None and version < int(versions["pruned_version"])
                memories = await self._fetchall(
                    f"select {_MEMORY_COLUMNS}, embedding from memories where user_id = ? and version > ? "
                    "order by version",
                    (uid, -1 if everything else version),
                )
                deleted = [] if everything else await self._fetchall(
                    "select key_hash, version from memory_tombstones where user_id = ? and version > ?", (uid, version)
                )  # fmt: skip
                profile = await self._fetchone("select * from profiles where user_id = ?", (uid,))
            finally:
                if not self._closed:
                    with self._translate():
                        await self._db.rollback()  # it wrote nothing
        return UserChanges(
            version=0 if versions is None else int(versions["version"]),
            erased_version=0 if versions is None else int(versions["erased_version"]),
            memories=tuple(wire.memory_from_row(_decoded(r)) for r in memories),
            deleted=tuple(Tombstone(r["key_hash"], int(r["version"])) for r in deleted),
            profile=None if profile is None else wire.profile_from_row(_decoded(profile)),
            everything=everything,
        )

    async def _prune_tombstones(self, before: dt.datetime) -> int:
        async with self._transaction():  # as 0007's companion_prune_tombstones: the horizons move with the deletes
            await self._fetchall(
                "update user_versions set pruned_version = max(pruned_version, p.version) from (select user_id, "
                "max(version) as version from memory_tombstones where created_at < ? group by user_id) as p "
                "where user_versions.user_id = p.user_id",
                (_time(before),),
            )
            pruned = await self._fetchall(
                "delete from memory_tombstones where created_at < ? returning 1", (_time(before),)
            )
        return len(pruned)

    async def _record_forgetting(self, user_id: uuid.UUID, at: dt.datetime) -> None:
        async with self._transaction():
            await self._fetchall(
                "insert into forgettings (user_id, forgotten_at) values (?, ?) on conflict (user_id) do update "
                "set forgotten_at = max(forgotten_at, excluded.forgotten_at)",
                (str(user_id), _time(at)),
            )

    async def _forgotten_at(self, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dt.datetime]:
        marks = ", ".join("?" for _ in user_ids)
        rows = await self._fetchall(
            f"select user_id, forgotten_at from forgettings where user_id in ({marks})", [str(u) for u in user_ids]
        )
        return {uuid.UUID(r["user_id"]): dt.datetime.fromisoformat(r["forgotten_at"]) for r in rows}

    async def _rewrite_texts(
        self,
        user_id: uuid.UUID,
        conversations: dict[uuid.UUID, tuple[str | None, tuple[str, ...]]],
        messages: dict[uuid.UUID, str],
    ) -> int:
        changed = 0
        async with self._transaction():
            for cid, (summary, threads) in conversations.items():
                changed += len(await self._fetchall(
                    "update conversations set summary = ?, open_threads = ? where id = ? and user_id = ? returning 1",
                    (summary, json.dumps(list(threads)), str(cid), str(user_id)),
                ))  # fmt: skip
            for mid, content in messages.items():
                changed += len(await self._fetchall(
                    "update messages set content = ? where id = ? and user_id = ? returning 1",
                    (content, str(mid), str(user_id)),
                ))  # fmt: skip
        return changed


# A batched upsert (a replay from the outbox among them) never replaces a newer value with an older one.
_KEEP_NEWER = " where excluded.updated_at >= memories.updated_at"


# Columns added to tables after a file was first created (executescript's "create table if not exists" keeps an
# existing table as it is): (table, column, definition).
_ADDED_COLUMNS = (
    ("memories", "version", "integer not null default 0"),
    ("profiles", "version", "integer not null default 0"),
    ("user_versions", "erased_version", "integer not null default 0"),
    ("user_versions", "pruned_version", "integer not null default 0"),
    ("memory_tombstones", "created_at", "text not null default ''"),  # older than any time: pruned at once
)


async def _add_missing_columns(connection: aiosqlite.Connection) -> None:
    for table, column, definition in _ADDED_COLUMNS:
        async with connection.execute(f"pragma table_info({table})") as cursor:
            present = {row[1] for row in await cursor.fetchall()}
        if present and column not in present:  # an empty set: the table is new, the script creates it whole
            await connection.execute(f"alter table {table} add column {column} {definition}")
    await connection.commit()


def _time(at: dt.datetime) -> str:
    # Fixed width (always microseconds, always +00:00) so that text order is time order.
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def _decoded(row: sqlite3.Row) -> dict[str, Any]:
    """A row with its JSON text decoded, ready for the ``wire.*_from_row`` functions."""
    values = dict(row)
    for column in ("answers", "open_threads"):
        if column in values:
            values[column] = json.loads(values[column])
    return values
