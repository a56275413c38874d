"""UserMemory of one user in two job processes at once (each with its own storage connection and batcher), on
SQLite (one file) and PostgreSQL: catching up, compare-and-set writes, forgetting and erasure across sessions."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConflictError, StorageUnavailableError, WriteCancelledError
from core.validators import WriteGuard
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher
from infrastructure.embeddings import CachedEmbedder, Embedder
from infrastructure.storage import MemoryWrite, SavedMemory, Storage, UserChanges
from infrastructure.storage.postgres import PostgresStorage
from infrastructure.storage.sqlite import SqliteStorage
from rag_system import analyzer_for
from services.memory_service import NewMemory
from services.rag_service import RagService
from services.user_memory import UserMemory
from tests.services.test_memory_and_retrieval import NOW, encoder


@dataclass
class Worker:
    """One job process: its own storage connection and batcher."""

    storage: Storage
    batcher: DatabaseBatcher

    def memory(self, user: uuid.UUID) -> UserMemory:
        return UserMemory(user_id=user, guard=WriteGuard(user_id=user), storage=self.storage, batcher=self.batcher,
                          embedder=CachedEmbedder(embedder=encoder()), analyzer=analyzer_for("en"),
                          clock=lambda: NOW)  # fmt: skip


async def open_worker(backend: str, where: str | Path) -> Worker:
    if backend == "sqlite":
        storage: Storage = await SqliteStorage.open(where)
    else:
        storage = await PostgresStorage.open(str(where), migrate=False)
    batcher = DatabaseBatcher(storage=storage, params=BatcherParams(max_delay=0.005))
    batcher.start()
    return Worker(storage=storage, batcher=batcher)


@pytest.fixture(params=["sqlite", "postgres"])
async def workers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Worker, Worker]]:
    where = tmp_path / "shared.db" if request.param == "sqlite" else request.getfixturevalue("migrated_database")
    pair = (await open_worker(request.param, where), await open_worker(request.param, where))
    yield pair
    for worker in pair:
        await worker.batcher.aclose()
        await worker.storage.aclose()


async def two_sessions(workers: tuple[Worker, Worker]) -> tuple[UserMemory, UserMemory]:
    user = uuid.uuid4()
    one, two = workers[0].memory(user), workers[1].memory(user)
    await one.load()
    await two.load()
    return one, two


async def test_a_memory_saved_in_one_session_is_found_by_the_other_after_it_catches_up(workers) -> None:
    one, two = await two_sessions(workers)
    assert await two.catch_up() is None  # nothing changed: one query, nothing applied

    saved = await one.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    assert saved.won
    caught = await two.catch_up()

    assert caught is not None
    assert caught.changed == 1
    assert two.get("RELATIONSHIP", "sister_city") == saved.memory
    found = await RagService(memory=two, embedder=CachedEmbedder(embedder=encoder()), clock=lambda: NOW).recall(
        "where does my sister live?"
    )
    assert [r.memory.key for r in found] == ["sister_city"]
    assert await two.catch_up() is None  # applied once


async def test_a_forget_in_one_session_leaves_the_other_and_names_what_left(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await one.save_memory("PREFERENCE", "drink", "Prefers green tea")
    await two.catch_up()
    assert len(two) == 2

    assert [m.key for m in await one.forget("my bank PIN")] == ["pin"]
    caught = await two.catch_up()

    assert caught is not None
    assert [m.value for m in caught.removed] == ["Bank PIN is 4921"]  # so that session scrubs its own chat
    assert two.get("HEALTH", "pin") is None
    assert [m.key for m in await two.list_memories()] == ["drink"]


async def test_two_sessions_writing_one_key_end_with_one_value_and_only_the_winner_hears_saved(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("PREFERENCE", "drink", "Prefers tea")
    await two.catch_up()

    outcomes = await asyncio.gather(
        one.save_memory("PREFERENCE", "drink", "Prefers coffee"),
        two.save_memory("PREFERENCE", "drink", "Prefers water"),
    )

    assert sorted(o.won for o in outcomes) == [False, True]
    [winner] = [o.memory.value for o in outcomes if o.won]
    [told] = [o.memory.value for o in outcomes if not o.won]
    assert told == winner  # the loser is told what holds, not "saved"
    await one.catch_up()
    await two.catch_up()
    stored = await workers[0].storage.get_memory(one.user_id, "PREFERENCE", "drink")
    assert one.get("PREFERENCE", "drink").value == two.get("PREFERENCE", "drink").value == stored.value == winner


async def test_a_save_that_missed_a_change_loses_and_the_next_one_wins(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("FACT", "job", "Works as a nurse")
    stale = await two.save_memory("FACT", "job", "Works as a teacher")  # two has not caught up

    assert not stale.won
    assert stale.memory.value == "Works as a nurse"
    assert two.get("FACT", "job").value == "Works as a nurse"  # it took what holds
    assert (await two.save_memory("FACT", "job", "Works as a teacher")).won  # against what it now knows
    await one.catch_up()
    assert one.get("FACT", "job").value == "Works as a teacher"


async def test_an_erasure_in_one_session_empties_the_other(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("FACT", "job", "Works as a nurse")
    await workers[0].storage.update_profile(one.user_id, {"name": "Ana"}, at=NOW)
    await two.catch_up()

    await one.forget_everything()
    caught = await two.catch_up()

    assert caught is not None
    assert caught.erased
    assert caught.profile_changed
    assert caught.profile is None
    assert len(two) == 0
    assert [m.value for m in caught.removed] == ["Works as a nurse"]


async def test_a_rename_in_one_session_reaches_the_other_as_a_changed_profile(workers) -> None:
    one, two = await two_sessions(workers)
    await workers[0].storage.update_profile(one.user_id, {"preferred_name": "Ana"}, at=NOW)
    caught = await two.catch_up()
    assert caught is not None
    assert caught.profile_changed
    assert caught.profile.preferred_name == "Ana"
    await one.save_memory("FACT", "job", "Works as a nurse")
    assert not (await two.catch_up()).profile_changed  # a memory alone is no rename


async def test_work_begun_before_a_forget_in_any_session_saves_nothing(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await two.catch_up()
    local, remote = one.ticket(), two.ticket()

    await one.forget("my bank PIN")
    await two.catch_up()

    with pytest.raises(WriteCancelledError):
        await one.save_memory("HEALTH", "pin", "Bank PIN is 4921", ticket=local)
    with pytest.raises(WriteCancelledError):
        await two.save_memory("HEALTH", "pin", "Bank PIN is 4921", ticket=remote)
    assert await workers[0].storage.get_memory(one.user_id, "HEALTH", "pin") is None
    assert (await two.save_memory("FACT", "job", "Works as a nurse", ticket=two.ticket())).won  # a new one may


async def test_a_session_behind_a_pruned_tombstone_still_drops_what_was_forgotten_and_keeps_its_own_news(
    workers,
) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await one.save_memory("PREFERENCE", "drink", "Prefers green tea")
    await two.catch_up()
    await one.forget("my bank PIN")
    await one.save_memory("PREFERENCE", "drink", "Prefers rooibos now")
    # Session two sleeps past the retention: the tombstone that named the forgotten PIN is pruned.
    assert await workers[0].storage.prune_tombstones(before=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) >= 1
    assert (await two.save_memory("GOAL", "marathon", "Training for the Porto half")).won  # newer than the prune

    caught = await two.catch_up()

    assert caught is not None
    assert [m.value for m in caught.removed] == ["Bank PIN is 4921"]
    assert {(m.key, m.value) for m in await two.list_memories()} == {
        ("drink", "Prefers rooibos now"),
        ("marathon", "Training for the Porto half"),
    }
    assert await two.catch_up() is None  # past the horizon now: the next catch-up reads only what changes


async def test_a_tombstone_is_applied_only_to_the_memory_its_whole_hash_names(workers, monkeypatch) -> None:
    """The index keeps 64 bits of each memory's key hash; two keys sharing them (every key, here) are told apart by
    the whole hash: a tombstone forgets its own memory only."""
    monkeypatch.setattr("services.user_memory._hash_prefix", lambda key_hash: 7)
    one, two = await two_sessions(workers)
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await one.save_memory("PREFERENCE", "drink", "Prefers green tea")
    await two.catch_up()
    assert await one.delete("HEALTH", "pin")

    caught = await two.catch_up()

    assert caught is not None
    assert [m.key for m in caught.removed] == ["pin"]
    assert [m.key for m in await two.list_memories()] == ["drink"]


async def test_memories_saved_in_a_batch_take_their_versions_from_the_next_catch_up(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_many([NewMemory("FACT", "job", "Works as a nurse", source="onboarding")])
    await two.catch_up()
    assert (await one.save_memory("FACT", "job", "Works as a midwife")).won  # learns the batched row's version
    await two.catch_up()
    assert two.get("FACT", "job").value == "Works as a midwife"
    await one.catch_up()  # a session's version moves only by catching up (its own writes too), never skipping one
    assert one.version == two.version


async def test_two_sessions_saving_the_same_value_at_once_are_both_told_it_is_saved(workers) -> None:
    one, two = await two_sessions(workers)
    outcomes = await asyncio.gather(
        one.save_memory("PREFERENCE", "drink", "Prefers tea"), two.save_memory("PREFERENCE", "drink", "prefers tea")
    )
    assert [o.won for o in outcomes] == [True, True]  # the value each wanted is the one that holds
    assert len({o.memory.value.casefold() for o in outcomes}) == 1


async def test_a_memory_forgotten_in_one_session_is_not_saved_again_by_the_other_before_it_catches_up(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await two.catch_up()
    extraction = two.ticket()

    assert [m.key for m in await one.forget("my bank PIN")] == ["pin"]
    with pytest.raises(WriteCancelledError):  # background work (extraction) holding the old value
        await two.save_memory("HEALTH", "pin", "Bank PIN is 4922", ticket=extraction)
    told = await two.save_memory("HEALTH", "pin", "Bank PIN is 4922")  # the remember tool

    assert told.forgotten
    assert not told.won
    assert await workers[0].storage.get_memory(one.user_id, "HEALTH", "pin") is None
    caught = await two.catch_up()
    assert [m.value for m in caught.removed] == ["Bank PIN is 4921"]  # still named, for the chat to be scrubbed
    assert two.get("HEALTH", "pin") is None
    assert (await two.save_memory("HEALTH", "pin", "Bank PIN is 4922")).won  # asked again: a new memory


class GatedEmbedder(Embedder):
    """The real encoder, held at a gate while ``hold`` is set: the moment a catch-up awaits an embedding."""

    def __init__(self) -> None:
        self._inner = encoder()
        self.name, self.dimension = self._inner.name, self._inner.dimension
        self.hold = False
        self.entered = asyncio.Event()

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.hold:
            self.entered.set()
            await asyncio.Event().wait()  # until cancelled
        return await self._inner.embed(texts)


async def test_a_catch_up_cancelled_halfway_still_hands_over_what_was_forgotten_elsewhere(workers) -> None:
    user = uuid.uuid4()
    one = workers[0].memory(user)
    embedder = GatedEmbedder()
    two = UserMemory(user_id=user, guard=WriteGuard(user_id=user), storage=workers[1].storage,
                     batcher=workers[1].batcher, embedder=embedder, analyzer=analyzer_for("en"), clock=lambda: NOW)  # fmt: skip
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await two.load()
    await one.forget("my bank PIN")
    await workers[0].storage.upsert_memories(  # a change without an embedding: the catch-up must embed it
        [MemoryWrite(user, "FACT", "job", "Works as a nurse", 0.5, "tool", NOW)]
    )

    embedder.hold = True
    cut = asyncio.create_task(two.catch_up())
    await embedder.entered.wait()
    cut.cancel()  # a turn's time budget, or a generation LiveKit threw away
    with pytest.raises(asyncio.CancelledError):
        await cut
    assert two.get("HEALTH", "pin") is None  # already out of the index

    embedder.hold = False
    caught = await two.catch_up()
    assert caught is not None
    assert [m.value for m in caught.removed] == ["Bank PIN is 4921"]  # still named, for the chat to be scrubbed
    assert two.get("FACT", "job").value == "Works as a nurse"
    assert await two.catch_up() is None  # handed over once


async def test_a_sessions_own_erasure_is_not_caught_up_with_as_an_erasure_elsewhere(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("FACT", "job", "Works as a nurse")

    await one.forget_everything()

    assert await one.catch_up() is None  # nothing to hide again: what is said after it stays in the chat
    assert (await two.catch_up()).erased


async def test_a_sessions_own_saves_are_no_change_to_catch_up_with(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("FACT", "job", "Works as a nurse")
    await one.save_memory("PREFERENCE", "drink", "Prefers tea")

    assert one.version == await workers[0].storage.user_version(one.user_id)  # nothing came between: moved on
    assert await one.catch_up() is None
    await one.save_many([NewMemory("FACT", "city", "Lives in Porto", source="onboarding")])
    assert await one.catch_up() is None  # its own batched write: its version learnt, nothing changed
    assert (await two.catch_up()).changed == 3


async def test_a_save_answered_after_a_newer_value_was_caught_up_with_does_not_put_the_older_one_back(
    workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("FACT", "job", "Works as a nurse")
    await two.catch_up()
    save_memory_if = workers[0].storage.save_memory_if

    async def then_a_newer_write_arrives(write: MemoryWrite, *, expected_version: int | None) -> SavedMemory:
        outcome = await save_memory_if(write, expected_version=expected_version)
        await two.catch_up()
        assert (await two.save_memory("FACT", "job", "Works as a surgeon")).won
        await one.catch_up()  # while the save below still awaits its answer
        return outcome

    monkeypatch.setattr(workers[0].storage, "save_memory_if", then_a_newer_write_arrives)
    assert (await one.save_memory("FACT", "job", "Works as a midwife")).won

    assert one.get("FACT", "job").value == "Works as a surgeon"


async def test_a_memory_read_before_its_tombstone_in_one_change_feed_is_not_brought_back(workers) -> None:
    one, two = await two_sessions(workers)
    await one.save_memory("HEALTH", "pin", "Bank PIN is 4921")
    await two.catch_up()
    saved = await one.save_memory("HEALTH", "pin", "Bank PIN is 4922")
    stored = await workers[0].storage.get_memory(one.user_id, "HEALTH", "pin")
    await one.delete("HEALTH", "pin")
    changes = await workers[1].storage.changes_since(two.user_id, two.version)
    assert changes.memories == ()
    torn = dataclasses.replace(changes, memories=(stored,))  # what a feed read in several steps can hold
    changes_since = workers[1].storage.changes_since

    async def torn_feed(user_id: uuid.UUID, version: int) -> UserChanges:
        await changes_since(user_id, version)
        return torn

    workers[1].storage.changes_since = torn_feed  # type: ignore[method-assign]
    caught = await two.catch_up()

    assert saved.won
    assert two.get("HEALTH", "pin") is None
    assert [m.value for m in caught.removed] == ["Bank PIN is 4921"]


async def test_a_save_that_keeps_losing_to_other_sessions_is_a_retryable_conflict_not_an_outage(
    workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = await two_sessions(workers)

    async def created_and_deleted_by_others_each_time(write: MemoryWrite, *, expected_version: int | None):
        return SavedMemory(won=False, memory=None)  # absent when looked at, present at the insert, gone when read

    monkeypatch.setattr(workers[0].storage, "save_memory_if", created_and_deleted_by_others_each_time)
    with pytest.raises(ConflictError) as raised:
        await one.save_memory("FACT", "job", "Works as a nurse")
    assert raised.value.retryable
    assert not isinstance(raised.value, StorageUnavailableError)  # the database answered: no outbox fallback
