"""The storage contract: the same tests, unchanged, on SQLite, PostgreSQL and Supabase (PostgREST stub)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import numpy as np
import pytest

from core.errors import InvalidInputError, InvalidUserIdError
from infrastructure.storage import MemoryAccess, MemoryWrite, MessageWrite, memory_key_hash
from tests.conftest import T0, Backend


def memory(user: uuid.UUID, key: str, value: str, *, category: str = "FACT", at: dt.datetime = T0, **extra):
    return MemoryWrite(
        user_id=user,
        category=category,
        key=key,
        value=value,
        importance=extra.pop("importance", 0.5),
        source=extra.pop("source", "tool"),
        at=at,
        **extra,
    )


def minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


async def test_upsert_of_the_same_key_updates_the_memory_instead_of_duplicating(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    [first] = await store.upsert_memories([memory(user, "sister_city", "Maya lives in Porto", importance=0.4)])
    [second] = await store.upsert_memories(
        [memory(user, "sister_city", "Maya lives in Lisbon", importance=0.8, at=T0 + minutes(5), source="extraction")]
    )

    listed = await store.list_memories(user)
    assert [m.value for m in listed] == ["Maya lives in Lisbon"]
    assert second.id == first.id
    assert second.created_at == first.created_at == T0
    assert second.updated_at == T0 + minutes(5)
    assert (second.importance, second.source) == (pytest.approx(0.8), "extraction")


async def test_a_changed_value_is_kept_in_the_memory_history(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.upsert_memories([memory(user, "job", "nurse")])
    await store.upsert_memories([memory(user, "job", "nurse", importance=0.9, at=T0 + minutes(1))])  # same value
    await store.upsert_memories([memory(user, "job", "midwife", at=T0 + minutes(2))])

    history = await store.memory_history(user, "FACT", "job")
    assert [(h.old_value, h.new_value, h.changed_at) for h in history] == [("nurse", "midwife", T0 + minutes(2))]


async def test_all_of_a_users_memory_history_comes_in_one_call_oldest_first(backend: Backend) -> None:
    store, user, other = backend.storage, uuid.uuid4(), uuid.uuid4()
    await store.upsert_memories([memory(user, "city", "Lisbon"), memory(user, "drink", "tea"), memory(other, "x", "a")])
    await store.upsert_memories([memory(user, "city", "Porto", at=T0 + minutes(1))])
    await store.upsert_memories([memory(user, "drink", "coffee", at=T0 + minutes(2))])
    await store.upsert_memories([memory(other, "x", "b", at=T0 + minutes(3))])

    changes = await store.all_memory_history(user)

    assert [(c.key, c.old_value, c.new_value) for c in changes] == [
        ("city", "Lisbon", "Porto"),
        ("drink", "tea", "coffee"),
    ]
    assert await store.all_memory_history(uuid.uuid4()) == []


async def test_embeddings_come_back_as_the_same_float32_vectors(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    vector = np.random.default_rng(7).standard_normal(384).astype(np.float32)
    written = await store.upsert_memories(
        [memory(user, "a", "with a vector", embedding=vector), memory(user, "b", "without one")]
    )

    assert [m.key for m in written] == ["a", "b"]  # the order given
    fetched = await store.get_memory(user, "FACT", "a")
    assert fetched is not None
    assert fetched.embedding is not None
    assert fetched.embedding.dtype == np.float32
    np.testing.assert_array_equal(fetched.embedding, vector)
    assert (await store.get_memory(user, "FACT", "b")).embedding is None
    [light, _] = await store.list_memories(user, include_embeddings=False)
    assert light.embedding is None


async def test_user_a_never_sees_user_b_rows(backend: Backend) -> None:
    store, alice, bob = backend.storage, uuid.uuid4(), uuid.uuid4()
    conversation = uuid.uuid4()
    await store.update_profile(bob, {"name": "Bob"}, at=T0)
    await store.save_onboarding(bob, {"occupation": "baker"}, at=T0)
    await store.upsert_memories([memory(bob, "pet", "a cat named Miso")])
    await store.upsert_memories([memory(bob, "pet", "a dog named Miso", at=T0 + minutes(1))])
    await store.start_conversation(bob, conversation, at=T0)
    await store.append_messages([MessageWrite(uuid.uuid4(), conversation, bob, "user", "hello", T0)])

    assert await store.get_profile(alice) is None
    assert await store.get_onboarding(alice) is None
    assert await store.list_memories(alice) == []
    assert await store.get_memory(alice, "FACT", "pet") is None
    assert await store.memory_history(alice, "FACT", "pet") == []
    assert await store.recent_conversations(alice) == []
    assert await store.recent_messages(alice) == []
    assert await store.recent_messages(alice, conversation_id=conversation) == []
    assert await store.delete_memories(alice, [("FACT", "pet")]) == 0
    assert (await store.get_memory(bob, "FACT", "pet")) is not None


@pytest.mark.parametrize("text", ["Zoë’s café in Kraków 🌍 — 北京 · שלום", "é" * 10_240, "x" * 10_240])
async def test_unicode_and_10kb_values_survive_a_round_trip(backend: Backend, text: str) -> None:
    store, user, conversation = backend.storage, uuid.uuid4(), uuid.uuid4()
    await store.upsert_memories([memory(user, "note", text, category="OTHER")])
    await store.update_profile(user, {"summary": text}, at=T0)
    await store.append_messages([MessageWrite(uuid.uuid4(), conversation, user, "user", text, T0)])
    await store.save_onboarding(user, {"goals": text}, at=T0)

    assert (await store.get_memory(user, "OTHER", "note")).value == text
    assert (await store.get_profile(user)).summary == text
    assert [m.content for m in await store.recent_messages(user)] == [text]
    assert (await store.get_onboarding(user)).answers == {"goals": text}


async def test_a_malformed_user_id_is_refused_before_any_query(backend: Backend) -> None:
    store, bad = backend.storage, "not-a-uuid"
    good = uuid.uuid4()
    calls = [
        lambda: store.ensure_profile(bad, at=T0),
        lambda: store.get_profile(bad),
        lambda: store.update_profile(bad, {"name": "x"}, at=T0),
        lambda: store.save_onboarding(bad, {}, at=T0),
        lambda: store.claim_onboarding(bad, at=T0),
        lambda: store.upsert_memories([memory(good, "k", "v"), memory(bad, "k", "v")]),  # type: ignore[arg-type]
        lambda: store.list_memories("123e4567-e89b-12d3-a456-42661417400"),  # one digit short
        lambda: store.get_memory("{123e4567-e89b-12d3-a456-426614174000}", "FACT", "k"),
        lambda: store.delete_memories(bad, [("FACT", "k")]),
        lambda: store.record_memory_access([MemoryAccess(bad, (("FACT", "k"),), T0)]),  # type: ignore[arg-type]
        lambda: store.memory_history(bad, "FACT", "k"),
        lambda: store.start_conversation(bad, uuid.uuid4(), at=T0),
        lambda: store.recent_conversations(bad),
        lambda: store.append_messages([MessageWrite(uuid.uuid4(), uuid.uuid4(), bad, "user", "hi", T0)]),  # type: ignore[arg-type]
        lambda: store.recent_messages(bad),
        lambda: store.delete_user_data("'; drop table memories; --"),
    ]
    for call in calls:
        with pytest.raises(InvalidUserIdError):
            await call()
    assert store.stats.queries == 0
    if backend.stub is not None:
        assert backend.stub.requests == []
    assert await store.list_memories(good) == []  # and the good half of the bad batch was not written


@pytest.mark.parametrize(
    "bad_write",
    [
        {"value": ""},
        {"value": "a\x00b"},
        {"value": "x" * 64_001},
        {"importance": 1.5},
        {"importance": True},
        {"key": ""},
        {"key": "k" * 121},
        {"embedding": np.array([0.1, np.nan], dtype=np.float32)},
        {"at": dt.datetime(2026, 1, 1)},  # naive
    ],
    ids=[
        "empty",
        "nul",
        "too-long",
        "importance",
        "bool-importance",
        "empty-key",
        "long-key",
        "nan-embedding",
        "naive-time",
    ],
)
async def test_invalid_memory_writes_are_refused_whole_before_any_query(backend: Backend, bad_write: dict) -> None:
    store, user = backend.storage, uuid.uuid4()
    fields = {"key": "k2", "value": "fine", "importance": 0.5, "at": T0} | bad_write
    with pytest.raises(InvalidInputError):  # a write record checks itself: no batch can hold it
        await store.upsert_memories(
            [memory(user, "k1", "good"), MemoryWrite(user_id=user, category="FACT", source="tool", **fields)]
        )
    assert store.stats.queries == 0
    assert await store.list_memories(user) == []


async def test_deleting_a_user_removes_all_of_their_data_and_nothing_of_anyone_else(backend: Backend) -> None:
    store = backend.storage
    doomed, kept = uuid.uuid4(), uuid.uuid4()
    for user in (doomed, kept):
        conversation = uuid.uuid4()
        await store.ensure_profile(user, at=T0)
        await store.save_onboarding(user, {"name": "x"}, at=T0)
        await store.upsert_memories([memory(user, "a", "one"), memory(user, "b", "two")])
        await store.upsert_memories([memory(user, "a", "uno", at=T0 + minutes(1))])
        await store.start_conversation(user, conversation, at=T0)
        await store.finish_conversation(user, conversation, at=T0 + minutes(9), summary="s", open_threads=["t"])
        await store.append_messages(
            [MessageWrite(uuid.uuid4(), conversation, user, role, "hi", T0) for role in ("user", "assistant")]
        )

    counts = await store.delete_user_data(doomed)

    assert (counts.profiles, counts.onboarding, counts.memories, counts.memory_history) == (1, 1, 2, 1)
    assert (counts.conversations, counts.messages) == (1, 2)
    assert await store.get_profile(doomed) is None
    assert await store.get_onboarding(doomed) is None
    assert await store.list_memories(doomed) == []
    assert await store.memory_history(doomed, "FACT", "a") == []
    assert await store.recent_conversations(doomed) == []
    assert await store.recent_messages(doomed) == []
    assert (await store.delete_user_data(doomed)).total == 0

    assert await store.get_profile(kept) is not None
    assert await store.get_onboarding(kept) is not None
    assert len(await store.list_memories(kept)) == 2
    assert len(await store.memory_history(kept, "FACT", "a")) == 1
    assert len(await store.recent_conversations(kept)) == 1
    assert len(await store.recent_messages(kept)) == 2


async def test_ensure_profile_is_idempotent_when_sessions_race(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    profiles = await asyncio.gather(*(store.ensure_profile(user, at=T0 + minutes(i)) for i in range(5)))
    assert {p.created_at for p in profiles} == {profiles[0].created_at}
    assert profiles[0].name is None

    await store.update_profile(user, {"name": "Ana", "preferred_name": "Ani"}, at=T0 + minutes(10))
    again = await store.ensure_profile(user, at=T0 + minutes(20))
    assert (again.name, again.preferred_name, again.updated_at) == ("Ana", "Ani", T0 + minutes(10))


async def test_update_profile_changes_only_the_fields_given(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    created = await store.update_profile(user, {"name": "Ana", "timezone": "Europe/Lisbon"}, at=T0)
    updated = await store.update_profile(user, {"language": "pt", "name": None}, at=T0 + minutes(1))

    assert (updated.name, updated.timezone, updated.language) == (None, "Europe/Lisbon", "pt")
    assert updated.created_at == created.created_at == T0
    with pytest.raises(InvalidInputError, match="unknown profile fields"):
        await store.update_profile(user, {"is_admin": "yes"}, at=T0)


async def test_recent_profiles_lists_every_user_newest_first(backend: Backend) -> None:
    store, first, second = backend.storage, uuid.uuid4(), uuid.uuid4()
    await store.update_profile(first, {"name": "Ana"}, at=T0 + minutes(1))
    await store.update_profile(second, {"name": "Bo"}, at=T0 + minutes(2))

    listed = [p.user_id for p in await store.recent_profiles(limit=1_000) if p.user_id in (first, second)]
    assert listed == [second, first]
    assert len(await store.recent_profiles(limit=1)) == 1
    with pytest.raises(InvalidInputError, match="limit"):
        await store.recent_profiles(limit=0)


async def test_onboarding_is_claimed_by_exactly_one_of_several_racing_sessions(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    assert await store.claim_onboarding(user, at=T0) is False  # nothing to claim yet
    await store.save_onboarding(user, {"name": "Ana", "interests": ["climbing", "jazz"]}, at=T0)

    claims = await asyncio.gather(*(store.claim_onboarding(user, at=T0 + minutes(1)) for _ in range(6)))

    assert claims.count(True) == 1
    answers = await store.get_onboarding(user)
    assert answers.processed_at == T0 + minutes(1)
    assert answers.answers == {"name": "Ana", "interests": ["climbing", "jazz"]}
    await store.save_onboarding(user, {"name": "Ana B."}, at=T0 + minutes(2))  # the app edits the answers
    assert (await store.get_onboarding(user)).processed_at == T0 + minutes(1)


async def test_memory_access_is_counted_per_use_in_one_call(backend: Backend) -> None:
    store, user, other = backend.storage, uuid.uuid4(), uuid.uuid4()
    await store.upsert_memories([memory(user, "a", "one"), memory(user, "b", "two"), memory(other, "a", "x")])
    before = store.stats.queries
    await store.record_memory_access(
        [
            MemoryAccess(user, (("FACT", "a"), ("FACT", "b")), T0 + minutes(1)),
            MemoryAccess(user, (("FACT", "a"), ("FACT", "missing")), T0 + minutes(3)),
        ]
    )
    assert store.stats.queries - before == 1
    a, b = await store.get_memory(user, "FACT", "a"), await store.get_memory(user, "FACT", "b")
    assert (a.access_count, a.last_accessed_at) == (2, T0 + minutes(3))
    assert (b.access_count, b.last_accessed_at) == (1, T0 + minutes(1))
    assert (await store.get_memory(other, "FACT", "a")).access_count == 0


async def test_listing_is_newest_first_and_filters_by_category(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.upsert_memories(
        [
            memory(user, "old", "1", at=T0),
            memory(user, "new", "2", at=T0 + minutes(2)),
            memory(user, "likes", "3", category="PREFERENCE", at=T0 + minutes(1)),
        ]
    )
    assert [m.key for m in await store.list_memories(user)] == ["new", "likes", "old"]
    assert [m.key for m in await store.list_memories(user, limit=2)] == ["new", "likes"]
    assert [m.key for m in await store.list_memories(user, category="PREFERENCE")] == ["likes"]


async def test_delete_memories_removes_only_the_named_ones(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.upsert_memories(
        [memory(user, "a", "1"), memory(user, "b", "2"), memory(user, "a", "3", category="GOAL")]
    )
    await store.upsert_memories([memory(user, "a", "1b", at=T0 + minutes(1))])
    assert await store.delete_memories(user, [("FACT", "a"), ("GOAL", "a"), ("FACT", "nope")]) == 2
    assert [m.key for m in await store.list_memories(user)] == ["b"]
    assert await store.memory_history(user, "FACT", "a") == []  # the history goes with its memory


async def test_messages_are_stored_once_and_read_back_in_order(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    first, second = uuid.uuid4(), uuid.uuid4()
    said = [
        MessageWrite(uuid.uuid4(), first, user, "user", "I have an interview on Friday", T0),
        MessageWrite(uuid.uuid4(), first, user, "assistant", "Good luck!", T0 + minutes(1)),
        MessageWrite(uuid.uuid4(), second, user, "user", "It went well", T0 + dt.timedelta(days=3)),
    ]
    assert await store.append_messages(said) == 3
    assert await store.append_messages(said[1:]) == 0  # a retried batch

    assert [m.content for m in await store.recent_messages(user)] == [m.content for m in said]
    assert [m.content for m in await store.recent_messages(user, limit=2)] == ["Good luck!", "It went well"]
    in_first = await store.recent_messages(user, conversation_id=first)
    assert [(m.role, m.created_at) for m in in_first] == [("user", T0), ("assistant", T0 + minutes(1))]
    with pytest.raises(InvalidInputError):
        MessageWrite(uuid.uuid4(), first, user, "robot", "beep", T0)  # type: ignore[arg-type]


async def test_conversations_record_their_summary_and_open_threads(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    older, newer = uuid.uuid4(), uuid.uuid4()
    await store.start_conversation(user, older, at=T0)
    again = await store.start_conversation(user, older, at=T0 + minutes(1))  # idempotent
    assert again.started_at == T0
    await store.finish_conversation(
        user, older, at=T0 + minutes(30), summary="Talked about the interview.", open_threads=["interview on Friday"]
    )
    await store.finish_conversation(user, newer, at=T0 + dt.timedelta(days=1), summary="Short chat.")  # never started

    latest, previous = await store.recent_conversations(user)
    assert (latest.id, latest.summary, latest.open_threads) == (newer, "Short chat.", ())
    assert (previous.id, previous.ended_at, previous.open_threads) == (
        older,
        T0 + minutes(30),
        ("interview on Friday",),
    )
    assert await store.recent_conversations(user, limit=1) == [latest]
    with pytest.raises(InvalidInputError):
        await store.start_conversation(uuid.uuid4(), older, at=T0)  # someone else's conversation id


async def test_the_user_version_grows_with_every_change_and_never_goes_back(backend: Backend) -> None:
    store, user, other = backend.storage, uuid.uuid4(), uuid.uuid4()
    assert await store.user_version(user) == 0
    await store.ensure_profile(user, at=T0)
    seen = [await store.user_version(user)]
    await store.update_profile(user, {"summary": "Dave's PIN is 4821"}, at=T0 + minutes(1))
    seen.append(await store.user_version(user))
    await store.upsert_memories([memory(user, "pin", "Their PIN is 4821")])
    seen.append(await store.user_version(user))
    await store.record_memory_access([MemoryAccess(user, (("FACT", "pin"),), T0 + minutes(2))])
    assert await store.user_version(user) == seen[-1]  # an access count is nothing a cache holds
    await store.delete_user_data(user)
    seen.append(await store.user_version(user))
    await store.ensure_profile(user, at=T0 + minutes(3))  # a new start never reuses an old number
    seen.append(await store.user_version(user))
    assert seen == sorted(set(seen))
    assert seen[0] > 0
    assert await store.user_version(other) == 0


async def test_the_user_version_moves_only_when_something_changed(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.ensure_profile(user, at=T0)
    saved = await store.save_memory_if(memory(user, "drink", "Prefers tea"), expected_version=None)
    version = await store.user_version(user)

    await store.ensure_profile(user, at=T0 + minutes(1))  # every session start
    lost = await store.save_memory_if(memory(user, "drink", "Prefers coffee"), expected_version=None)
    stale = await store.save_memory_if(
        memory(user, "drink", "Prefers water"), expected_version=saved.memory.version - 1
    )
    await store.upsert_memories([memory(user, "drink", "Prefers tea", at=T0 + minutes(2))])  # the same value

    assert not lost.won
    assert not stale.won
    assert await store.user_version(user) == version
    await store.upsert_memories([memory(user, "drink", "Prefers juice", at=T0 + minutes(3))])
    assert await store.user_version(user) == version + 1  # a real change moves it, by one


async def test_rewriting_texts_changes_only_the_named_rows_of_that_user(backend: Backend) -> None:
    store, user, other = backend.storage, uuid.uuid4(), uuid.uuid4()
    conversation, foreign = uuid.uuid4(), uuid.uuid4()
    await store.finish_conversation(user, conversation, at=T0, summary="Dave's PIN is 4821.", open_threads=["PIN"])
    await store.finish_conversation(other, foreign, at=T0, summary="Kept.", open_threads=[])
    said, kept = uuid.uuid4(), uuid.uuid4()
    await store.append_messages([
        MessageWrite(said, conversation, user, "user", "My PIN is 4821. I like tea.", T0),
        MessageWrite(kept, foreign, other, "user", "My PIN is 1111.", T0),
    ])  # fmt: skip
    changed = await store.rewrite_texts(
        user,
        conversations={conversation: ("[forgotten]", []), foreign: ("stolen", [])},
        messages={said: "[forgotten] I like tea.", kept: "stolen"},
    )
    assert changed == 2
    [mine] = await store.recent_conversations(user)
    assert (mine.summary, list(mine.open_threads)) == ("[forgotten]", [])
    assert [m.content for m in await store.recent_messages(user)] == ["[forgotten] I like tea."]
    [theirs] = await store.recent_conversations(other)
    assert theirs.summary == "Kept."
    assert [m.content for m in await store.recent_messages(other)] == ["My PIN is 1111."]


async def test_the_latest_forgetting_of_each_user_is_kept(backend: Backend) -> None:
    store, user, other = backend.storage, uuid.uuid4(), uuid.uuid4()
    assert await store.forgotten_at([user, other]) == {}
    await store.record_forgetting(user, at=T0 + minutes(5))
    await store.record_forgetting(user, at=T0 + minutes(9))
    await store.delete_user_data(user)  # the mark outlives the erasure
    assert await store.forgotten_at([user, other]) == {user: T0 + minutes(9)}


async def test_of_two_compare_and_set_writes_to_one_key_exactly_one_wins(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    first = await store.save_memory_if(memory(user, "drink", "Prefers tea"), expected_version=None)
    assert first.won
    assert first.memory is not None
    assert first.memory.value == "Prefers tea"
    seen = first.memory.version
    assert seen == await store.user_version(user)

    racing = [memory(user, "drink", "Prefers coffee", at=T0 + minutes(1)),
              memory(user, "drink", "Prefers water", at=T0 + minutes(1))]  # fmt: skip
    outcomes = await asyncio.gather(*(store.save_memory_if(w, expected_version=seen) for w in racing))

    assert sorted(o.won for o in outcomes) == [False, True]
    [winner] = [o for o in outcomes if o.won]
    [loser] = [o for o in outcomes if not o.won]
    assert loser.memory is not None
    assert loser.memory.value == winner.memory.value
    assert loser.memory.version == winner.memory.version > seen
    assert [m.value for m in await store.list_memories(user)] == [winner.memory.value]
    late = await store.save_memory_if(memory(user, "drink", "Prefers juice"), expected_version=None)
    assert not late.won
    assert late.memory.value == winner.memory.value


async def test_a_compare_and_set_on_a_deleted_memory_loses_and_does_not_create_it_again(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    first = await store.save_memory_if(memory(user, "pin", "Bank PIN is 4921"), expected_version=None)
    await store.delete_memories(user, [("FACT", "pin")])  # forgotten by another session
    version = await store.user_version(user)

    stale = await store.save_memory_if(memory(user, "pin", "Bank PIN is 4922"), expected_version=first.memory.version)

    assert not stale.won
    assert stale.memory is None
    assert await store.get_memory(user, "FACT", "pin") is None
    assert await store.user_version(user) == version


async def test_the_change_feed_holds_what_changed_after_a_version_and_tombstones_without_keys(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.ensure_profile(user, at=T0)
    await store.upsert_memories([memory(user, "job", "nurse"), memory(user, "city", "Lisbon")])
    start = await store.user_version(user)
    assert (await store.changes_since(user, start)).memories == ()

    await store.upsert_memories([memory(user, "job", "midwife", at=T0 + minutes(1))])
    await store.delete_memories(user, [("FACT", "city")])
    await store.update_profile(user, {"preferred_name": "Ana"}, at=T0 + minutes(2))
    changes = await store.changes_since(user, start)

    assert changes.version == await store.user_version(user) > start
    assert [(m.key, m.value) for m in changes.memories] == [("job", "midwife")]
    assert changes.memories[0].embedding is not None or changes.memories[0].version > start
    assert [t.key_hash for t in changes.deleted] == [memory_key_hash(user, "FACT", "city")]
    assert "city" not in str(changes.deleted)
    assert changes.profile is not None
    assert changes.profile.preferred_name == "Ana"
    assert changes.profile.version > start
    assert (await store.changes_since(user, changes.version)).memories == ()


async def test_pruned_tombstones_send_a_reader_behind_them_to_read_every_memory(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.upsert_memories([memory(user, "job", "nurse"), memory(user, "pin", "4921")])
    behind = await store.user_version(user)
    await store.delete_memories(user, [("FACT", "pin")])
    caught_up = await store.user_version(user)
    assert await store.prune_tombstones(before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)) == 0  # too young
    assert (await store.changes_since(user, behind)).deleted != ()

    assert await store.prune_tombstones(before=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)) >= 1
    changes = await store.changes_since(user, behind)

    assert changes.everything
    assert changes.deleted == ()
    assert [(m.key, m.value) for m in changes.memories] == [("job", "nurse")]
    assert changes.version == caught_up
    ahead = await store.changes_since(user, caught_up)  # a reader past the pruned tombstone reads changes as ever
    assert not ahead.everything
    assert (ahead.memories, ahead.deleted) == ((), ())


async def test_an_erasure_leaves_no_tombstone_and_notes_its_version(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.upsert_memories([memory(user, "job", "nurse")])
    await store.delete_memories(user, [("FACT", "job")])
    await store.upsert_memories([memory(user, "city", "Lisbon")])
    await store.delete_user_data(user)

    changes = await store.changes_since(user, 0)
    assert changes.deleted == ()
    assert changes.memories == ()
    assert changes.profile is None
    assert changes.erased_version == changes.version == await store.user_version(user) > 0


async def test_an_erasure_returns_the_version_it_took(backend: Backend) -> None:
    store, user = backend.storage, uuid.uuid4()
    await store.upsert_memories([memory(user, "job", "nurse")])
    counts = await store.delete_user_data(user)
    await store.upsert_memories([memory(user, "city", "Lisbon")])  # said after it

    assert counts.memories == 1
    assert counts.version == (await store.changes_since(user, 0)).erased_version > 0
