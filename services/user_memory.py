"""UserMemory: one user's memory as one session holds it. The only owner of the user's index: writes, search,
forgetting, and keeping up with the user's other sessions all go through it.

Versions. The database stamps every change of a user's memories and profile with the user's next version
(``Storage.user_version``), and leaves a tombstone for each deleted memory. The index knows the version of each
memory it holds and the user version it has applied (``version``). :meth:`catch_up` (called by the agent at the
start of each turn) reads the user's version, one cheap query, and only when it moved reads what changed since and
applies it: memories saved, changed or forgotten by another session, on any worker, an erasure, a renamed profile.

Compare-and-set. :meth:`save_memory` writes one memory directly (not through the write batcher) on the condition
that its stored version is the one this index holds (absent, if the index holds none). Of two sessions writing one
key at once exactly one wins; the other is handed the value that holds, which its index takes, and its caller is
told so (:class:`Saved`), so no two sessions are both told "saved" for values that disagree. Why not the batcher:
a batched write is acknowledged before the database has judged it, so "saved" could not be said truthfully. Only
when the database cannot be reached does a save fall back to the batcher's durable outbox (``Saved.queued``: kept,
and stored when the database is back, where the newer write wins). ``save_many`` (onboarding seeds, imports) stays
batched: its rows are new, from one claimed source, and the next catch-up brings their versions.

Cancellation. Background work that may write (extraction, the profile refresh) takes a :class:`WriteTicket` when it
begins; every forget, here or seen from another session, revokes the tickets taken before it, and a save under a
revoked ticket is refused (:class:`~core.errors.WriteCancelledError`): what was being forgotten is not saved again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.categories import MAX_VALUE_LENGTH
from core.errors import (
    CompanionError,
    ConflictError,
    InvalidInputError,
    StorageUnavailableError,
    WriteCancelledError,
)
from core.validators import WriteGuard, clean_text, clean_value, normalize_key, parse_category, parse_importance
from infrastructure.cache import Cache
from infrastructure.database_batcher import DatabaseBatcher
from infrastructure.embeddings import Embedder
from infrastructure.storage import (
    DeletedCounts,
    Memory,
    MemoryAccess,
    MemoryChange,
    MemoryWrite,
    Profile,
    Storage,
    UserChanges,
    memory_key_hash,
)
from rag_system import GateParams, IndexedMemory, MemoryIndex, Query, RankingParams, SearchResult, TextAnalyzer, analyze
from services.memory_service import SOURCES, MemoryStats, NewMemory, index_text

logger = logging.getLogger("companion.memory")

_UNKNOWN = -1  # a memory saved through the batcher: its stored version arrives with the next catch-up


@dataclass(frozen=True, slots=True)
class Saved:
    """What a save did. ``won``: the value given is the one stored, and ``memory`` is it. Otherwise another
    session's write to the key got there first and ``memory`` is the value that holds (which the index now has).
    ``queued``: the database was away; the write is kept in the outbox and stored when it is back.
    ``forgotten``: another session forgot this memory since this index saw it, so nothing was saved (a value that
    updates a forgotten one must not bring it back); ``memory`` is what this session still holds of it, until the
    next catch-up takes it out of the index and the chat. A save of the key after that is a new memory."""

    memory: IndexedMemory
    won: bool = True
    queued: bool = False
    forgotten: bool = False


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one :meth:`UserMemory.catch_up` applied. ``removed``: memories this session held that were deleted
    elsewhere (their text, for the session to keep out of its own chat); ``profile`` is the current one when
    ``profile_changed``; ``erased``: everything of the user was erased elsewhere."""

    version: int
    changed: int
    removed: tuple[IndexedMemory, ...]
    profile: Profile | None
    profile_changed: bool
    erased: bool


@dataclass(slots=True)
class _Caught:
    """What catch-ups applied since a caller last took it (see :meth:`UserMemory.catch_up`)."""

    changed: int = 0
    removed: list[IndexedMemory] = field(default_factory=list)
    profile: Profile | None = None
    profile_changed: bool = False
    erased: bool = False


class WriteTicket:
    """Permission for background work to write; revoked by any forget after it was taken."""

    __slots__ = ("__weakref__", "_valid")

    def __init__(self) -> None:
        self._valid = True

    @property
    def valid(self) -> bool:
        return self._valid

    def revoke(self) -> None:
        self._valid = False


class UserMemory:
    def __init__(
        self,
        *,
        user_id: uuid.UUID,
        guard: WriteGuard,
        storage: Storage,
        batcher: DatabaseBatcher,
        embedder: Embedder,
        analyzer: TextAnalyzer,
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
        self._index = MemoryIndex(dimension=embedder.dimension, analyzer=analyzer)
        self._cache = cache
        self._clock = clock
        self._write_timeout = write_timeout
        self._confirm_within = confirm_within  # a queued write waits this long for the database, then moves on
        self.ranking = ranking or RankingParams()  # one set for search and forget: forget finds what search finds
        self.gate = gate or GateParams()
        self.version = 0  # the user version this index has applied
        # Each held memory's stored version, and the first 64 bits of the hash tombstones name it by, are columns
        # of the index (MemoryIndex.upsert's version and key_hash): no Python object per memory.
        self._tickets: weakref.WeakSet[WriteTicket] = weakref.WeakSet()
        self._sync = asyncio.Lock()
        self._caught = _Caught()  # applied by catch-ups, not yet handed to a caller

    # Reading (the index, never the database) -------------------------------------------------------------

    @property
    def can_write(self) -> bool:
        return self._guard.can_write

    @property
    def analyzer(self) -> TextAnalyzer:
        return self._index.analyzer

    def __len__(self) -> int:
        return len(self._index)

    def get(self, category: str, key: str) -> IndexedMemory | None:
        return self._index.get(category, key)

    def holds(self, memory: IndexedMemory) -> bool:
        """Whether the index still holds exactly this memory (not forgotten or changed since it was found)."""
        return self._index.get(memory.category, memory.key) == memory

    async def list_memories(self, category: str | None = None, *, limit: int | None = None) -> list[IndexedMemory]:
        """Newest first, at most ``limit`` (all when None)."""
        wanted = None if category is None else parse_category(category).value
        return self._index.newest(limit, category=wanted)

    def most_important(self, k: int) -> list[IndexedMemory]:
        return self._index.most_important(k)

    def nearest(self, vector: np.ndarray, *, k: int) -> list[tuple[IndexedMemory, float]]:
        return self._index.nearest(vector, k=k)

    def search(
        self,
        query: Query,
        vector: np.ndarray,
        *,
        now: dt.datetime,
        k: int,
        history_vectors: list[np.ndarray] | None = None,
    ) -> SearchResult:
        return self._index.search(query, vector, now=now, k=k, history_vectors=history_vectors,
                                  params=self.ranking, gate=self.gate)  # fmt: skip

    def stats(self) -> MemoryStats:
        return MemoryStats(count=len(self._index), by_category=self._index.count_by_category())

    async def get_stored(self, category: str, key: str) -> Memory | None:
        return await self._storage.get_memory(self.user_id, parse_category(category).value, normalize_key(key))

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

    def ticket(self) -> WriteTicket:
        """For background work about to write: revoked by the next forget (here or in another session)."""
        ticket = WriteTicket()
        self._tickets.add(ticket)
        return ticket

    # Loading and keeping up ------------------------------------------------------------------------------

    async def load(self) -> int:
        """Fill the index from the database (once per session); memories stored without an embedding get one."""
        async with self._sync:
            version = await self._storage.user_version(self.user_id)  # first: what is listed is at least this new
            memories = await self._storage.list_memories(self.user_id)
            self._index.reserve(len(self._index) + len(memories))
            await self._apply(memories)
            self._index.compact()  # the first turn's search then scans no unsorted postings
            self.version = max(self.version, version)
        return len(memories)

    async def catch_up(self) -> CatchUp | None:
        """Apply what changed for the user since :attr:`version`, from any session: one query when nothing did
        (None), one more to read the changes when something did. None too when the changes were this session's own
        (nothing it holds changed).

        What a catch-up took out of the index (memories forgotten elsewhere, an erasure) and a changed profile are
        kept here until a call returns them: a call cancelled halfway (a turn's time budget, a generation LiveKit
        threw away) loses none of it; the next call, here or by :meth:`save_memory`, hands it over."""
        async with self._sync:
            if await self._storage.user_version(self.user_id) > self.version:
                await self._apply_changes(await self._storage.changes_since(self.user_id, self.version))
            return self._take_caught()

    async def _apply_changes(self, changes: UserChanges) -> None:
        # Everything that takes something out of the index is done, and noted, before the first await below.
        seen = self.version
        if changes.erased_version > self.version:
            self._caught.removed.extend(self._index.memories())
            self._caught.erased = True
            self._clear()
            self.version = changes.erased_version  # the index holds what the database held then: nothing
        # Rows whose hash begins as a tombstone's; the whole hash decides (two keys may share the first 64 bits).
        candidates = self._index.with_key_hashes([_hash_prefix(t.key_hash) for t in changes.deleted])
        held = {memory_key_hash(self.user_id, *ident): ident for ident in candidates}
        gone = [
            ident
            for tombstone in changes.deleted
            if (ident := held.get(tombstone.key_hash)) is not None and self._version(*ident) < tombstone.version
        ]
        if changes.everything:  # deletions no tombstone names any more: what is held, stored then, and not listed
            listed = {(m.category, m.key) for m in changes.memories}
            stored = self._index.with_versions(above=_UNKNOWN, up_to=changes.version)
            gone += [ident for ident in stored if ident not in listed]
        removed = False
        for ident in gone:
            held = self._index.get(*ident)
            if held is not None:
                self._caught.removed.append(held)
                removed = True
            self._remove(*ident)
        if removed:
            self._revoke_tickets()  # a forget elsewhere: work begun before it must not save it again here
        if changes.erased_version > seen or (changes.profile is not None and changes.profile.version > seen):
            self._caught.profile_changed = True
        self._caught.profile = changes.profile
        # A memory read before its deletion was (a change feed that is no snapshot) is not brought back.
        deleted_at = {t.key_hash: t.version for t in changes.deleted}
        memories = [m for m in changes.memories
                    if deleted_at.get(memory_key_hash(self.user_id, m.category, m.key), -1) < m.version]  # fmt: skip
        self._caught.changed += await self._apply(memories)
        self.version = max(self.version, changes.version)

    def _take_caught(self) -> CatchUp | None:
        caught, self._caught = self._caught, _Caught()
        if not (caught.changed or caught.removed or caught.erased or caught.profile_changed):
            return None
        return CatchUp(version=self.version, changed=caught.changed, removed=tuple(caught.removed),
                       profile=caught.profile, profile_changed=caught.profile_changed,
                       erased=caught.erased)  # fmt: skip

    async def _apply(self, memories: Sequence[Memory]) -> int:
        """Index stored memories newer than what the index holds of them; those without an embedding get one.
        Returns how many changed what the index holds (learning the version of a write of its own is no change)."""
        fresh = [m for m in memories if self._version(m.category, m.key) < m.version or m.version == 0]
        missing = [m for m in fresh if m.embedding is None or m.embedding.shape != (self._embedder.dimension,)]
        vectors = await self._embedder.embed([index_text(m.key, m.value) for m in missing]) if missing else []
        embedded = {(m.category, m.key): v for m, v in zip(missing, vectors, strict=True)}
        changed = 0
        for memory in fresh:
            ident = (memory.category, memory.key)
            if self._version(*ident) >= memory.version > 0:  # a save won meanwhile: it is newer
                continue
            held = self._index.get(*ident)
            self._put(_indexed(memory), embedded.get(ident, memory.embedding), version=memory.version)
            if held is None or held.value != memory.value or abs(held.importance - memory.importance) > 1e-6:
                changed += 1  # (importance is a float32 in PostgreSQL)
        return changed

    # Writing ---------------------------------------------------------------------------------------------

    async def save_memory(
        self,
        category: str,
        key: str,
        value: str,
        importance: float | None = None,
        *,
        source: str = "tool",
        ticket: WriteTicket | None = None,
    ) -> Saved:
        """Store (or update) one memory if no other session changed it since this index saw it (see the module
        docstring). A changed value keeps its old one in the history. A memory another session forgot meanwhile is
        not saved again: work under a ``ticket`` is cancelled (:class:`~core.errors.WriteCancelledError`), any other
        caller is told so (``Saved.forgotten``)."""
        self._guard.check(self.user_id)
        category, key, value, importance = _checked(category, key, value, importance, source)
        embedding = (await self._embedder.embed([index_text(key, value)]))[0]
        for _ in range(2):  # a second attempt only when the key was deleted under the first
            if ticket is not None and not ticket.valid:
                raise WriteCancelledError("something was forgotten since this work began; it saves nothing")
            write = MemoryWrite(self.user_id, category, key, value, importance, source, self._clock(),
                                embedding=embedding)  # fmt: skip
            try:
                async with asyncio.timeout(self._write_timeout):
                    held = self._index.get(category, key)
                    expected = await self._expected_version(category, key)
                    outcome = await self._storage.save_memory_if(write, expected_version=expected)
            except (StorageUnavailableError, TimeoutError):
                if not self._batcher.durable_writes:
                    raise StorageUnavailableError("the database is not answering; the memory was not saved") from None
                return await self._queue(write)
            if outcome.won and outcome.memory is not None:
                indexed = self._put(_indexed(outcome.memory), embedding, version=outcome.memory.version)
                if outcome.memory.version == self.version + 1:  # no other change came between: nothing to catch up
                    self.version = outcome.memory.version
                return Saved(indexed)
            if outcome.memory is not None:
                await self._apply([outcome.memory])
                # Another session saved the same value first: what the caller wanted is what holds.
                same = outcome.memory.value.casefold() == value.casefold()
                return Saved(_indexed(outcome.memory), won=same)
            if expected is not None and held is not None:  # deleted by another session since this index saw it
                self._revoke_tickets()  # a forget elsewhere; the next catch-up takes it out of the index and the chat
                if ticket is not None:
                    raise WriteCancelledError("something was forgotten since this work began; it saves nothing")
                return Saved(held, won=False, forgotten=True)
            # Absent when looked at, present at the insert, gone when read: try once more as a new memory.
        raise ConflictError("the memory kept changing while it was saved; try again")

    async def _expected_version(self, category: str, key: str) -> int | None:
        """The stored version this index holds of the memory (None: it holds none, so the write must find none)."""
        if (category, key) not in self._index:
            return None
        version = self._version(category, key)
        if version == _UNKNOWN:  # saved through the batcher: its version is learnt from the database
            stored = await self._storage.get_memory(self.user_id, category, key)
            version = stored.version if stored is not None else _UNKNOWN
        return None if version == _UNKNOWN else version

    async def _queue(self, write: MemoryWrite) -> Saved:
        """The database is away: keep the write in the durable outbox; it is stored when the database is back."""
        future = self._batcher.upsert_memory(write)
        await self._batcher.durable()
        if future.done():
            await future  # refused by the outbox (full, unwritable): raises
        await self._batcher.flush(within=self._confirm_within)
        if future.done():
            await future  # the database refused it for good (a retry would not help): raises
        return Saved(self._put_queued(write), queued=True)

    async def save_many(self, items: Sequence[NewMemory]) -> list[IndexedMemory]:
        """Store many memories at once (onboarding seeds, imports) through the batcher: one embedding call, batched
        writes, then the index. Each item may carry its own time (``at``); invalid items raise before anything is
        written."""
        self._guard.check(self.user_id)
        prepared = []
        for item in items:
            checked = _checked(item.category, item.key, item.value, item.importance, item.source)
            prepared.append((*checked, item.source, item.at or self._clock()))
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
        saved = [self._put_queued(write) for write in stored]
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

    async def delete(self, category: str, key: str) -> bool:
        self._guard.check(self.user_id)
        category, key = parse_category(category).value, normalize_key(key)
        await self._batcher.flush(within=self._write_timeout)  # a queued upsert of it must not land after
        deleted = await self._storage.delete_memories(self.user_id, [(category, key)]) > 0
        self._remove(category, key)
        return deleted

    async def forget(self, description: str, *, limit: int = 1) -> list[IndexedMemory]:
        """Forget what the user describes ("forget what I said about my ex"): the best matches by the same ranking
        and relevance gate as retrieval, at most ``limit`` of them; nothing when nothing matches."""
        self._guard.check(self.user_id)
        description = clean_text(description)
        if not description.strip():
            raise InvalidInputError("say what to forget")
        if len(description) > MAX_VALUE_LENGTH:
            raise InvalidInputError(f"say what to forget in fewer than {MAX_VALUE_LENGTH} characters")
        self._revoke_tickets()  # an extraction under way must not save again what is being forgotten
        now = self._clock()
        query = analyze(description, now=now, analyzer=self._index.analyzer)
        vector = (await self._embedder.embed([query.topic]))[0]
        found = self.search(query, vector, now=now, k=limit)
        return await self.forget_matching([r.memory for r in found.memories])

    async def forget_matching(self, memories: Sequence[IndexedMemory]) -> list[IndexedMemory]:
        """Delete the given memories (as retrieval found them for "forget that ...")."""
        self._revoke_tickets()
        forgotten = []
        for memory in memories:
            if await self.delete(memory.category, memory.key):
                forgotten.append(memory)
        return forgotten

    async def forget_everything(self) -> DeletedCounts:
        """Remove all of this user's data: database rows, index, and cache on every worker sharing the Redis."""
        self._guard.check(self.user_id)
        self._revoke_tickets()
        await self._batcher.flush(within=self._write_timeout)
        counts = await self._storage.delete_user_data(self.user_id)
        self._clear()
        self.version = max(self.version, counts.version)  # its own erasure is no erasure elsewhere to catch up with
        if self._cache is not None:
            await self._cache.invalidate_user(self.user_id)
        return counts

    def record_access(self, memories: Sequence[IndexedMemory]) -> None:
        """Count a turn's use of these memories; batched, never awaited by the turn, never raising into it."""
        if memories and self._guard.can_write:
            keys = tuple((m.category, m.key) for m in memories)
            try:
                self._batcher.record_access(MemoryAccess(self.user_id, keys, self._clock()))
            except CompanionError as exc:
                logger.warning("memory access not recorded", extra={"error": type(exc).__name__})

    # The index and what is known of it, changed together ---------------------------------------------------

    def _put(self, memory: IndexedMemory, embedding: np.ndarray, *, version: int) -> IndexedMemory:
        """Hold ``memory`` at its stored ``version`` (``_UNKNOWN``: a write of this session's own on its way), unless
        the index holds a newer version of it (a catch-up ran while a save awaited the database): an index never
        goes back. Returns ``memory`` as given (with the first ``created_at``)."""
        ident = (memory.category, memory.key)
        existing = self._index.get(*ident)
        if existing is not None and existing.created_at < memory.created_at:
            memory = IndexedMemory(memory.category, memory.key, memory.value, memory.importance,
                                   existing.created_at, memory.updated_at)  # fmt: skip
        if version != _UNKNOWN and self._version(*ident) > version:
            return memory
        key_hash = _hash_prefix(memory_key_hash(self.user_id, *ident))
        self._index.upsert(memory, embedding, version=version, key_hash=key_hash)
        return memory

    def _version(self, category: str, key: str) -> int:
        """The stored version of the memory held (``_UNKNOWN`` when none is, or its write is on its way)."""
        version = self._index.version_of(category, key)
        return _UNKNOWN if version is None else version

    def _put_queued(self, write: MemoryWrite) -> IndexedMemory:
        """A write of this session's own on its way through the batcher: indexed now, its version learnt later."""
        memory = IndexedMemory(write.category, write.key, write.value, write.importance, write.at, write.at)
        return self._put(memory, write.embedding, version=_UNKNOWN)  # type: ignore[arg-type]

    def _remove(self, category: str, key: str) -> None:
        self._index.remove(category, key)

    def _clear(self) -> None:
        self._index.clear()
        self._revoke_tickets()

    def _revoke_tickets(self) -> None:
        for ticket in list(self._tickets):
            ticket.revoke()
        self._tickets.clear()


def _checked(category: str, key: str, value: str, importance: float | None, source: str) -> tuple[str, str, str, float]:
    """A memory as it is stored: the category's name, the key normalised, the value cleaned, the importance within
    bounds (the category's default for None). Raises :class:`~core.errors.InvalidInputError`, before any write."""
    kind = parse_category(category)
    key, value = normalize_key(key), clean_value(value)
    if source not in SOURCES:
        raise InvalidInputError(f"memory source must be one of {sorted(SOURCES)}")
    return kind.value, key, value, parse_importance(importance, kind)


def _hash_prefix(key_hash: str) -> int:
    """The first 64 bits of a memory's key hash (hex), as the index keeps them."""
    return int(key_hash[:16], 16)


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
