"""UserMemory of one user in two job processes at once (each with its own storage connection and batcher), on
SQLite (one file) and PostgreSQL: catching up, compare-and-set writes, forgetting and erasure across sessions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.errors import WriteCancelledError
from core.validators import WriteGuard
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher
from infrastructure.embeddings import CachedEmbedder
from infrastructure.storage import Storage
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
