"""UserMemory and RagService through the real storage (SQLite, PostgreSQL), batcher, embedder and Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.errors import EmbeddingError, InvalidInputError, WriteForbiddenError
from core.validators import WriteGuard, normalize_key
from infrastructure.cache import CacheParams, RedisCache
from infrastructure.clients import redis_client
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher
from infrastructure.embeddings import CachedEmbedder
from infrastructure.embeddings.minilm import MiniLMEmbedder
from infrastructure.storage import Storage
from infrastructure.storage.postgres import PostgresStorage
from infrastructure.storage.sqlite import SqliteStorage
from rag_system import analyzer_for
from services.rag_service import RagService
from services.turn_retrieval import TurnRetrieval
from services.user_memory import UserMemory
from tests.redis_servers import shared_redis_url

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
_ENCODER: MiniLMEmbedder | None = None


def encoder() -> MiniLMEmbedder:
    global _ENCODER
    if _ENCODER is None:
        _ENCODER = MiniLMEmbedder.load()
    return _ENCODER


@dataclass
class World:
    """What one job process holds: storage, batcher, embedder. Sessions are built on it."""

    storage: Storage
    batcher: DatabaseBatcher
    embedder: CachedEmbedder

    def session(self, user: uuid.UUID, *, cache: RedisCache | None = None, guard: WriteGuard | None = None):
        memories = UserMemory(user_id=user, guard=guard or WriteGuard(user_id=user), storage=self.storage,
                              batcher=self.batcher, embedder=self.embedder, analyzer=analyzer_for("en"), cache=cache,
                              clock=lambda: NOW)  # fmt: skip
        return memories, RagService(memory=memories, embedder=self.embedder, clock=lambda: NOW)


@pytest.fixture(params=["sqlite", "postgres"])
async def world(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[World]:
    if request.param == "sqlite":
        storage = await SqliteStorage.open(tmp_path / "services.db")
    else:
        storage = await PostgresStorage.open(request.getfixturevalue("migrated_database"), migrate=False)
    batcher = DatabaseBatcher(storage=storage, params=BatcherParams(max_delay=0.005))
    batcher.start()
    yield World(storage=storage, batcher=batcher, embedder=CachedEmbedder(embedder=encoder()))
    await batcher.aclose()
    await storage.aclose()


async def test_a_fact_told_in_one_session_is_found_first_in_the_next(world: World) -> None:
    user = uuid.uuid4()
    memories, _ = world.session(user)
    await memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    await memories.save_memory("PREFERENCE", "drink", "Prefers green tea to coffee")
    await memories.save_memory("FACT", "job", "Works as a nurse at a community clinic")

    later, rag = world.session(user)  # a new session: a fresh index, loaded from the database
    assert await later.load() == 3
    context = await rag.context_for_turn("where does my sister live?")

    assert context.memories[0].key == "sister_city"
    assert "Maya lives in Lisbon" in context.text.splitlines()[1]


async def test_a_changed_fact_updates_the_memory_and_keeps_the_old_value_in_its_history(world: World) -> None:
    user = uuid.uuid4()
    memories, rag = world.session(user)
    await memories.save_memory("FACT", "home city", "Lives in Braga")
    await memories.save_memory("FACT", "home_city", "Lives in Porto")

    [current] = await memories.list_memories()
    assert current.value == "Lives in Porto"
    assert [(h.old_value, h.new_value) for h in await memories.history("FACT", "home_city")] == [
        ("Lives in Braga", "Lives in Porto")
    ]
    assert [r.memory.value for r in await rag.recall("which city do I live in?")] == ["Lives in Porto"]


async def test_the_write_guard_refuses_a_write_for_another_user_before_any_query(world: World) -> None:
    served, other = uuid.uuid4(), uuid.uuid4()
    memories, _ = world.session(other, guard=WriteGuard(user_id=served))
    before = world.storage.stats.queries
    with pytest.raises(WriteForbiddenError):
        await memories.save_memory("FACT", "job", "nurse")
    with pytest.raises(WriteForbiddenError):
        await memories.forget_everything()
    assert world.storage.stats.queries == before
    assert await world.storage.list_memories(other) == []


async def test_bad_memories_get_clear_errors_and_nothing_is_written(world: World) -> None:
    user = uuid.uuid4()
    memories, _ = world.session(user)
    with pytest.raises(InvalidInputError, match="category must be one of"):
        await memories.save_memory("HOBBY", "k", "v")
    with pytest.raises(InvalidInputError, match="longer than"):
        await memories.save_memory("FACT", "essay", "x" * 1001)
    with pytest.raises(InvalidInputError, match="letters or digits"):
        await memories.save_memory("FACT", "!!!", "v")
    assert await world.storage.list_memories(user) == []
    assert normalize_key("  Sister's City (Lisbon) ") == "sisters_city_lisbon"


async def test_forget_everything_leaves_nothing_in_retrieval_listings_or_any_workers_cache(world: World) -> None:
    user, neighbour = uuid.uuid4(), uuid.uuid4()
    client = redis_client(shared_redis_url(), timeout=1.0)
    prefix = f"test{secrets.token_hex(4)}"
    worker_a = RedisCache(redis=client, params=CacheParams(prefix=prefix))
    worker_b = RedisCache(redis=client, params=CacheParams(prefix=prefix))  # another job process, same Redis
    try:
        memories, rag = world.session(user, cache=worker_a)
        await memories.save_memory("HEALTH", "allergy", "Allergic to penicillin")
        kept, _ = world.session(neighbour)
        await kept.save_memory("HEALTH", "allergy", "Allergic to peanuts")
        await worker_b.set("profile", {"name": "Ana"}, user_id=user)

        counts = await memories.forget_everything()

        assert counts.memories == 1
        assert await rag.recall("what am I allergic to?") == []
        assert await memories.list_memories() == []
        assert await world.storage.list_memories(user) == []
        assert await worker_b.get("profile", user_id=user) is None
        again, rag_again = world.session(user)
        assert await again.load() == 0
        assert len(await world.storage.list_memories(neighbour)) == 1
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


async def test_forgetting_one_memory_removes_it_from_retrieval(world: World) -> None:
    user = uuid.uuid4()
    memories, rag = world.session(user)
    await memories.save_memory("PREFERENCE", "drink", "Prefers green tea to coffee")
    found = await rag.recall("what do I like to drink?")
    assert [m.key for m in await memories.forget_matching([r.memory for r in found])] == ["drink"]
    assert await rag.recall("what do I like to drink?") == []
    assert await world.storage.get_memory(user, "PREFERENCE", "drink") is None


async def test_forgetting_what_the_user_describes_removes_that_memory_only(world: World) -> None:
    user = uuid.uuid4()
    memories, rag = world.session(user)
    await memories.save_memory("PREFERENCE", "drink", "Prefers green tea to coffee")
    await memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    forgotten = await memories.forget("forget what I told you about tea")
    assert [m.key for m in forgotten] == ["drink"]
    assert await memories.forget("my favourite football team") == []  # nothing like it: nothing forgotten
    assert [m.key for m in await memories.list_memories()] == ["sister_city"]


async def test_the_turn_context_fits_its_token_budget(world: World) -> None:
    user = uuid.uuid4()
    memories, _ = world.session(user)
    for n in range(8):
        await memories.save_memory("FACT", f"run {n}", f"Ran a {n + 5} km race by the river in spring number {n}")
    rag = RagService(memory=memories, embedder=world.embedder, token_budget=40, clock=lambda: NOW)
    context = await rag.context_for_turn("what races have I run?")
    assert context.memories
    assert len(context.text) // 4 <= 40
    assert len(context.text.splitlines()) < 1 + len(context.memories)  # some lines did not fit


async def test_a_bad_character_in_a_turn_costs_nothing_and_never_reaches_a_later_turn(world: World) -> None:
    user = uuid.uuid4()
    memories, rag = world.session(user)
    await memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon \ud800\x07")
    [stored] = await world.storage.list_memories(user)
    assert stored.value == "My sister Maya lives in Lisbon \ufffd"  # cleaned where it entered

    broken = "where does my sister live \udc00?"  # a lone surrogate: no UTF-8 encoder takes it
    first = await rag.context_for_turn(broken)
    later = await rag.context_for_turn("and what does she do?", [broken, "Lisbon, I think!"])
    assert first.memories[0].key == "sister_city"
    assert later.memories[0].key == "sister_city"


def test_the_local_embedder_translates_what_its_tokenizer_refuses() -> None:
    with pytest.raises(EmbeddingError) as caught:
        encoder().encode(["fine", "not \ud800 fine"])
    assert not caught.value.retryable


async def test_a_recall_or_forget_of_a_document_is_refused_and_a_long_turn_is_searched_by_its_beginning(
    world: World,
) -> None:
    user = uuid.uuid4()
    memories, rag = world.session(user)
    await memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    with pytest.raises(InvalidInputError, match="fewer than 500"):
        await rag.recall("x" * 501)
    with pytest.raises(InvalidInputError, match="fewer than 1000"):
        await memories.forget("my sister " * 200)
    pasted = "where does my sister live? " + "lorem ipsum dolor " * 50_000  # about 900,000 characters
    assert (await rag.context_for_turn(pasted)).memories[0].key == "sister_city"
    assert len(memories) == 1


class SlowAfter(CachedEmbedder):
    """The real embedder, slowed down on demand: a busy machine in one switch."""

    delay = 0.0

    async def embed(self, texts):  # type: ignore[no-untyped-def]
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super().embed(texts)


async def test_a_turn_embeds_one_text_and_earlier_turns_shape_it_with_their_own_vectors(world: World) -> None:
    user = uuid.uuid4()
    memories, rag = world.session(user)
    await memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    earlier = ["Tell me about my sister Maya", "Maya sounds lovely!"]
    await rag.context_for_turn(earlier[0])
    await rag.prepare(earlier[1])  # the agent's reply, embedded after it was said
    misses = world.embedder.stats.misses
    context = await rag.context_for_turn("where does she live again?", earlier)
    assert world.embedder.stats.misses == misses + 1  # only the turn itself
    assert context.memories[0].key == "sister_city"


async def test_a_late_turn_gets_the_previous_turns_memories_then_the_prefetch_never_nothing(world: World) -> None:
    user = uuid.uuid4()
    memories, _ = world.session(user)
    await memories.save_memory("HEALTH", "allergy", "Allergic to peanuts", importance=0.9)
    await memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    await memories.save_memory("OTHER", "weather", "Likes rainy days", importance=0.1)
    slow = SlowAfter(embedder=encoder())
    rag = RagService(memory=memories, embedder=slow, clock=lambda: NOW)
    retrieval = TurnRetrieval(
        rag=rag, memories=memories, deadline=1.0, prefetch_size=1
    )  # live: well within it, even on a busy machine
    retrieval.prefetch()

    slow.delay = 2.0
    first = await retrieval.context("tell me something")
    assert (first.source, [m.key for m in first.memories]) == ("prefetch", ["allergy"])
    assert retrieval.stats.deadline_misses == 1

    slow.delay = 0.0
    live = await retrieval.context("where does my sister live?")
    assert (live.source, live.memories[0].key) == ("live", "sister_city")

    slow.delay = 2.0
    late = await retrieval.context("and her job?")
    assert (late.source, late.memories[0].key) == ("previous", "sister_city")
    assert "Lisbon" in late.text

    await memories.delete("RELATIONSHIP", "sister city")
    await memories.delete("HEALTH", "allergy")
    after_forget = await retrieval.context("and her kids?")  # nothing forgotten comes back through a fallback
    assert {m.key for m in after_forget.memories} <= {"weather"}
    assert "Lisbon" not in after_forget.text
    await memories.delete("OTHER", "weather")
    nothing_left = await retrieval.context("and her kids, again?")
    assert (nothing_left.source, nothing_left.memories) == ("none", ())
    assert retrieval.stats.last_source == "none"
