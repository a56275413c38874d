"""MemoryService: what the companion knows about one user, kept in the database and in the user's index.

Built once per session for the user it serves. Every write passes the write guard, then goes through the write
batcher, and updates the user's retrieval index in place, so the next turn's retrieval needs no database
round trip. When ``save_memory`` returns, the memory is kept: with the batcher's outbox, once it is fsynced there
(the database is given ``confirm_within`` more, and takes it later if it is away: a crash or an outage does not
lose it); without one, once the database stored it. A refused write (outbox full, bad input) raises and is never
indexed. Deletes are immediate statements
(the batcher only coalesces inserts and upserts).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.categories import MAX_VALUE_LENGTH
from core.errors import CompanionError, InvalidInputError, StorageUnavailableError
from core.validators import WriteGuard, clean_text, clean_value, normalize_key, parse_category, parse_importance
from infrastructure.cache import Cache
from infrastructure.database_batcher import DatabaseBatcher
from infrastructure.embeddings import Embedder
from infrastructure.storage import DeletedCounts, Memory, MemoryAccess, MemoryChange, MemoryWrite, Storage
from rag_system import GateParams, IndexedMemory, MemoryIndex, RankingParams, analyze

logger = logging.getLogger("companion.memory")

SOURCES = frozenset({"tool", "extraction", "onboarding", "import", "inspector"})


@dataclass(frozen=True, slots=True)
class NewMemory:
    category: str
    key: str
    value: str
    importance: float | None = None
    source: str = "import"
    at: dt.datetime | None = None  # when it was learned; now if not given


@dataclass(frozen=True, slots=True)
class MemoryStats:
    count: int
    by_category: dict[str, int]


def index_text(key: str, value: str) -> str:
    """What is embedded and indexed for a memory: its key in words, then its value."""
    return f"{key.replace('_', ' ')}: {value}"


class MemoryService:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        batcher: DatabaseBatcher,
        embedder: Embedder,
        index: MemoryIndex,
        cache: Cache | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        write_timeout: float = 5.0,
        confirm_within: float = 0.5,
        ranking: RankingParams | None = None,
        gate: GateParams | None = None,
    ) -> None:
        self.user_id = user_id
        self._guard = guard
        self._storage = storage
        self._batcher = batcher
        self._embedder = embedder
        self.index = index
        self._cache = cache
        self._clock = clock
        self._write_timeout = write_timeout
        self._confirm_within = confirm_within  # a durable write waits this long for the database, then moves on
        self._ranking = ranking or RankingParams()  # forget() finds what to forget as retrieval would
        self._gate = gate or GateParams()
        self.epoch = 0  # bumped by every forget: background work that began before it must not write

    @property
    def can_write(self) -> bool:
        return self._guard.can_write

    async def load_index(self) -> int:
        """Fill the index from the database (once per session); memories stored without an embedding get one."""
        memories = await self._storage.list_memories(self.user_id)
        missing = [m for m in memories if m.embedding is None or m.embedding.shape != (self._embedder.dimension,)]
        vectors = await self._embedder.embed([index_text(m.key, m.value) for m in missing]) if missing else []
        fresh = {(m.category, m.key): v for m, v in zip(missing, vectors, strict=True)}
        self.index.reserve(len(self.index) + len(memories))
        for memory in memories:
            embedding = fresh.get((memory.category, memory.key), memory.embedding)
            self.index.upsert(_indexed(memory), embedding)
        self.index.compact()  # the first turn's search then scans no unsorted postings
        return len(memories)

    async def save_memory(
        self,
        category: str,
        key: str,
        value: str,
        importance: float | None = None,
        *,
        source: str = "tool",
    ) -> IndexedMemory:
        """Store (or update) a memory; returns it as indexed. A changed value keeps its old one in the history."""
        self._guard.check(self.user_id)
        kind, key = parse_category(category), normalize_key(key)
        category, value = kind.value, clean_value(value)
        if source not in SOURCES:
            raise InvalidInputError(f"memory source must be one of {sorted(SOURCES)}")
        importance = parse_importance(importance, kind)
        at = self._clock()
        embedding = (await self._embedder.embed([index_text(key, value)]))[0]
        write = MemoryWrite(self.user_id, category, key, value, importance, source, at, embedding=embedding)
        await self._kept(self._batcher.upsert_memory(write))
        existing = self.index.get(category, key)
        created_at = existing.created_at if existing is not None else at
        indexed = IndexedMemory(category, key, value, importance, created_at=created_at, updated_at=at)
        self.index.upsert(indexed, embedding)
        return indexed

    async def save_many(self, items: Sequence[NewMemory]) -> list[IndexedMemory]:
        """Store many memories at once (onboarding seeds, imports): one embedding call, batched writes, then the
        index. Each item may carry its own time (``at``); invalid items raise before anything is written."""
        self._guard.check(self.user_id)
        prepared = []
        for item in items:
            kind, key = parse_category(item.category), normalize_key(item.key)
            category, value = kind.value, clean_value(item.value)
            importance = parse_importance(item.importance, kind)
            if item.source not in SOURCES:
                raise InvalidInputError(f"memory source must be one of {sorted(SOURCES)}")
            prepared.append((category, key, value, importance, item.source, item.at or self._clock()))
        vectors = await self._embedder.embed([index_text(p[1], p[2]) for p in prepared]) if prepared else []
        writes = [
            MemoryWrite(self.user_id, category, key, value, importance, source, at, embedding=vector)
            for (category, key, value, importance, source, at), vector in zip(prepared, vectors, strict=True)
        ]
        accepted: list[tuple[MemoryWrite, asyncio.Future[None]]] = []
        refused: CompanionError | None = None
        for write in writes:
            try:
                accepted.append((write, self._batcher.upsert_memory(write)))
            except CompanionError as exc:  # a full queue: what was accepted is still stored and indexed
                refused = exc
                break
        durable = self._batcher.durable_writes
        if durable:  # kept once in the outbox; the database gets a short wait, then takes them when it can
            await self._batcher.durable()
        await self._batcher.flush(within=self._confirm_within if durable else self._write_timeout)
        stored = [w for w, f in accepted if _succeeded(f) or (durable and not f.done())]
        saved = []
        for write in stored:
            existing = self.index.get(write.category, write.key)
            created_at = existing.created_at if existing is not None else write.at
            indexed = IndexedMemory(write.category, write.key, write.value, write.importance, created_at, write.at)
            self.index.upsert(indexed, write.embedding)  # type: ignore[arg-type]
            saved.append(indexed)
        if refused is not None:
            raise refused
        for _, future in accepted:
            if not future.done():
                if durable:
                    continue
                raise StorageUnavailableError("the database is not answering; the memories are queued")
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return saved

    async def get(self, category: str, key: str) -> Memory | None:
        return await self._storage.get_memory(self.user_id, parse_category(category).value, normalize_key(key))

    async def list_memories(self, category: str | None = None, *, limit: int | None = None) -> list[IndexedMemory]:
        """From the index: no database round trip. Newest first, at most ``limit`` (all when None)."""
        wanted = None if category is None else parse_category(category).value
        return self.index.newest(limit, category=wanted)

    async def get_stored(self, category: str, key: str) -> Memory | None:
        """The stored row of one memory (``get``'s name in UserMemory, where ``get`` reads the index)."""
        return await self.get(category, key)

    async def stored(self, category: str | None = None) -> list[Memory]:
        """The stored rows, with what the index does not keep (source, last use, use count); newest first. One
        query: for the inspector, never on a turn's path."""
        wanted = None if category is None else parse_category(category).value
        return await self._storage.list_memories(self.user_id, category=wanted, include_embeddings=False)

    async def all_history(self) -> list[MemoryChange]:
        """Every earlier value of every memory of the user, oldest first: one query."""
        return await self._storage.all_memory_history(self.user_id)

    async def history(self, category: str, key: str) -> list[MemoryChange]:
        return await self._storage.memory_history(self.user_id, parse_category(category).value, normalize_key(key))

    async def delete(self, category: str, key: str) -> bool:
        self._guard.check(self.user_id)
        category, key = parse_category(category).value, normalize_key(key)
        await self._batcher.flush(within=self._write_timeout)  # a queued upsert of it must not land after
        deleted = await self._storage.delete_memories(self.user_id, [(category, key)]) > 0
        self.index.remove(category, key)
        return deleted

    async def forget(self, description: str, *, limit: int = 1) -> list[IndexedMemory]:
        """Forget what the user describes ("forget what I said about my ex"): the best matches above the
        retrieval engine's relevance gate, at most ``limit`` of them; nothing when nothing matches."""
        self._guard.check(self.user_id)
        description = clean_text(description)
        if not description.strip():
            raise InvalidInputError("say what to forget")
        if len(description) > MAX_VALUE_LENGTH:
            raise InvalidInputError(f"say what to forget in fewer than {MAX_VALUE_LENGTH} characters")
        self.epoch += 1  # an extraction under way must not save again what is being forgotten
        now = self._clock()
        query = analyze(description, now=now, analyzer=self.index.analyzer)
        vector = (await self._embedder.embed([query.topic]))[0]
        found = self.index.search(query, vector, now=now, k=limit, params=self._ranking, gate=self._gate)
        return await self.forget_matching([r.memory for r in found.memories])

    async def forget_matching(self, memories: Sequence[IndexedMemory]) -> list[IndexedMemory]:
        """Delete the given memories (as retrieval found them for "forget that ...")."""
        forgotten = []
        for memory in memories:
            if await self.delete(memory.category, memory.key):
                forgotten.append(memory)
        return forgotten

    def record_access(self, memories: Sequence[IndexedMemory]) -> None:
        """Count a turn's use of these memories; batched, never awaited by the turn, never raising into it."""
        if memories and self._guard.can_write:
            keys = tuple((m.category, m.key) for m in memories)
            try:
                self._batcher.record_access(MemoryAccess(self.user_id, keys, self._clock()))
            except CompanionError as exc:
                logger.warning("memory access not recorded", extra={"error": type(exc).__name__})

    async def forget_everything(self) -> DeletedCounts:
        """Remove all of this user's data: database rows, index, and cache on every worker sharing the Redis."""
        self._guard.check(self.user_id)
        self.epoch += 1
        await self._batcher.flush(within=self._write_timeout)
        counts = await self._storage.delete_user_data(self.user_id)
        self.index.clear()
        if self._cache is not None:
            await self._cache.invalidate_user(self.user_id)
        return counts

    def stats(self) -> MemoryStats:
        return MemoryStats(count=len(self.index), by_category=self.index.count_by_category())

    async def _kept(self, write: asyncio.Future[None]) -> None:
        """Return once ``write`` is kept, raising if it was refused.

        With the outbox: kept once fsynced there; the database is then asked now (a saved memory does not wait
        for company) and given ``confirm_within``, and if it is away the write lands when it is back. Without: the
        database is given ``write_timeout``; past it the write stays queued and the caller hears so."""
        if self._batcher.durable_writes:
            await self._batcher.durable()
            if write.done():
                await write  # refused by the outbox (full, unwritable): raises
            await self._batcher.flush(within=self._confirm_within)
            if write.done():
                await write  # the database refused it for good (a retry would not help): raises
            return
        await self._batcher.flush(within=self._write_timeout)
        if not write.done():
            raise StorageUnavailableError("the database is not answering; the memory is queued")
        await write


def _succeeded(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _indexed(memory: Memory) -> IndexedMemory:
    return IndexedMemory(
        category=memory.category,
        key=memory.key,
        value=memory.value,
        importance=memory.importance,
        created_at=memory.created_at,
        updated_at=memory.updated_at,
    )
