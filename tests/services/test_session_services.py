"""Users, onboarding, conversations, profiles and extraction, wired as the container wires them, on SQLite and
PostgreSQL, with a local OpenAI-compatible fake standing in for the LLM provider."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.config import Settings
from core.errors import InvalidInputError, WriteForbiddenError
from infrastructure.background import BackgroundStats
from services.container import Process, open_process, open_session
from services.conversation_service import SUMMARY_PROMPT, elapsed_in_words
from services.memory_extraction import EXTRACTION_PROMPT
from services.profile_service import PROFILE_PROMPT
from tests.fakes.openai_server import FakeOpenAIServer
from tests.redis_servers import shared_redis_url
from tests.waiting import eventually


class Script:
    """What the fake LLM answers, by which of our prompts it was sent; every request is kept."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {"summary": "Talked about work.", "open_threads": []}
        self.extraction: str = '{"memories": []}'
        self.profile = "Ana is a nurse in Porto who loves jazz."

    def __call__(self, body: dict[str, Any]) -> str | None:
        system = body["messages"][0]["content"]
        if system == SUMMARY_PROMPT:
            return json.dumps(self.summary)
        if system == EXTRACTION_PROMPT:
            return self.extraction
        if system == PROFILE_PROMPT:
            return self.profile
        return None


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def fake_llm(script: Script) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=script) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path, fake_llm: FakeOpenAIServer) -> Settings:
    database = (
        f"sqlite:///{tmp_path}/companion.db"
        if request.param == "sqlite"
        else request.getfixturevalue("migrated_database")
    )
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=database,
        database_auto_migrate=False,
        openai_base_url=fake_llm.base_url,
        redis_url=shared_redis_url(),
        redis_key_prefix=f"t{uuid.uuid4().hex[:8]}",
        batch_max_delay_ms=5,
        llm_model="fake-model",
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def process(settings: Settings, clock: Clock) -> AsyncIterator[Process]:
    process = await open_process(settings, clock=clock)
    yield process
    redis = process.clients.redis
    async for key in redis.scan_iter(match=f"{settings.redis_key_prefix}:*"):
        await redis.delete(key)
    await process.aclose()


async def test_a_new_user_is_greeted_as_new_and_a_returning_one_about_last_time(
    process: Process, script: Script, clock: Clock
) -> None:
    user = uuid.uuid4()
    first = await open_session(process, user_id=user)
    greeting = await first.conversations.opening(await first.users.get_profile())
    assert greeting.kind == "first_time"
    assert "What should I call you?" in greeting.text
    assert "back" not in greeting.text.lower()

    await first.users.update_profile(name="Ana")
    await first.conversations.start()
    first.conversations.log_message("user", "I have a job interview at the clinic on Friday, I'm nervous")
    first.conversations.log_message("assistant", "You'll do great. What's the role?")
    script.summary = {"summary": "Ana is nervous about an interview.", "open_threads": ["the job interview on Friday"]}
    finished = await first.conversations.finish()
    assert finished is not None
    assert finished.open_threads == ("the job interview on Friday",)

    clock.now += dt.timedelta(days=3, hours=2)
    later = await open_session(process, user_id=user)
    opening = await later.conversations.opening(await later.users.get_profile())
    assert opening.kind == "returning"
    assert opening.text == (
        "Welcome back, Ana! It's been three days. Last time you mentioned the job interview on Friday. How did that go?"
    )
    await process.batcher.flush()
    said = await process.storage.recent_messages(user)
    assert [m.role for m in said] == ["user", "assistant"]


async def test_an_unusable_summary_is_dropped_and_the_conversation_still_ends(
    process: Process, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    user = uuid.uuid4()
    session = await open_session(process, user_id=user)
    await session.conversations.start()
    session.conversations.log_message("user", "secret diary words")
    script.summary = {"summary": "", "open_threads": "not a list"}  # type: ignore[dict-item]
    with caplog.at_level(logging.WARNING, logger="companion.conversation"):
        finished = await session.conversations.finish()
    assert finished is not None
    assert (finished.summary, finished.ended_at) == (None, process.clock())
    assert "conversation summary dropped" in caplog.text
    assert "secret diary" not in caplog.text


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (dt.timedelta(hours=3), "earlier today"),
        (dt.timedelta(days=1, hours=2), "yesterday"),
        (dt.timedelta(days=5), "five days"),
        (dt.timedelta(days=16), "about two weeks"),
        (dt.timedelta(days=95), "about three months"),
        (dt.timedelta(days=500), "over a year"),
    ],
)
def test_time_since_last_time_in_words(delta: dt.timedelta, words: str) -> None:
    assert elapsed_in_words(delta) == words


async def test_onboarding_runs_once_even_when_two_sessions_start_together(process: Process) -> None:
    user = uuid.uuid4()
    answers = {
        "name": "Ana Silva",
        "preferred_name": "Ana",
        "timezone": "Not/AZone",  # skipped, the rest goes on
        "occupation": "a nurse",
        "interests": ["jazz", "running", "film photography"],
        "goals": "run a half marathon",
        "favourite_season": "autumn",
    }
    await process.storage.save_onboarding(user, answers, at=process.clock())
    one, two = await open_session(process, user_id=user), await open_session(process, user_id=user)

    results = await asyncio.gather(one.onboarding.run(), two.onboarding.run())

    assert sorted(r.ran for r in results) == [False, True]
    assert max(r.memories for r in results) == 4
    profile = await one.users.get_profile()
    assert (profile.name, profile.preferred_name, profile.timezone) == ("Ana Silva", "Ana", None)
    stored = {m.key: m.value for m in await process.storage.list_memories(user)}
    assert stored["interests"] == "Is interested in jazz, running and film photography"
    assert stored["favourite_season"] == "autumn"
    assert len(stored) == 4
    again = await open_session(process, user_id=user)
    assert (await again.onboarding.run()).reason == "already done"


async def test_extraction_output_that_is_not_json_is_dropped_with_a_log_line(
    process: Process, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    session = await open_session(process, user_id=uuid.uuid4())
    script.extraction = "Sure! The user likes jazz."
    with caplog.at_level(logging.WARNING, logger="companion.extraction"):
        result = await session.extractor.extract([("user", "I love jazz")])
    assert result.dropped
    assert "memory extraction output dropped" in caplog.text
    assert "jazz" not in caplog.text
    assert await session.memories.list_memories() == []


async def test_a_changed_fact_updates_the_old_memory_instead_of_adding_a_contradiction(
    process: Process, script: Script
) -> None:
    user = uuid.uuid4()
    session = await open_session(process, user_id=user)
    await session.memories.save_memory("FACT", "home_city", "Lives in Braga", source="extraction")
    await session.memories.save_memory("FACT", "occupation", "Works as a nurse", source="extraction")
    said = [("user", "I moved to Porto and I'm a nurse practitioner now! Still blasting Nina Simone.")]

    script.extraction = json.dumps({"memories": [
        {"category": "FACT", "key": "home_city", "value": "Lives in Porto", "importance": 0.7},
        {"category": "MOOD", "key": "today", "value": "Feels tired today", "importance": 7},  # does not validate
    ]})  # fmt: skip
    result = await session.extractor.extract(said)
    assert result.dropped  # one invalid item invalidates the output: nothing half-applied
    assert await session.memories.history("FACT", "home_city") == []

    script.extraction = json.dumps({"memories": [
        {"category": "FACT", "key": "home_city", "value": "Lives in Porto", "importance": 0.7},  # the known key
        {"category": "FACT", "key": "job", "value": "Started as a nurse practitioner"},  # a new key, same fact
        {"category": "PREFERENCE", "key": "music", "value": "Loves jazz, especially Nina Simone"},
        {"category": "PREFERENCE", "key": "music_taste", "value": "Loves jazz, especially Nina Simone."},  # dupe
    ]})  # fmt: skip
    result = await session.extractor.extract(said)

    assert (result.updated, result.saved, result.duplicates) == (["home_city", "occupation"], ["music"], 1)
    values = {(m.category, m.key): m.value for m in await session.memories.list_memories()}
    assert values == {
        ("FACT", "home_city"): "Lives in Porto",
        ("FACT", "occupation"): "Started as a nurse practitioner",
        ("PREFERENCE", "music"): "Loves jazz, especially Nina Simone",
    }
    [change] = await session.memories.history("FACT", "home_city")
    assert (change.old_value, change.new_value) == ("Lives in Braga", "Lives in Porto")


async def test_the_profile_is_written_by_the_llm_from_what_is_known_and_merged(
    process: Process, script: Script, fake_llm: FakeOpenAIServer
) -> None:
    user = uuid.uuid4()
    session = await open_session(process, user_id=user)
    await session.users.update_profile(name="Ana", summary="Ana is a nurse.")
    await session.memories.save_memory("PREFERENCE", "music", "Loves jazz")

    text = await session.profiles.generate()

    assert text == "Ana is a nurse in Porto who loves jazz."
    assert (await session.users.get_profile()).summary == text
    [request] = [r for r in fake_llm.chat_requests if r["messages"][0]["content"] == PROFILE_PROMPT]
    prompt = request["messages"][1]["content"]
    assert "Ana is a nurse." in prompt
    assert "Loves jazz" in prompt
    assert request["model"] == "fake-model"


async def test_the_profile_refreshes_in_the_background_every_n_turns(process: Process, fake_llm) -> None:
    session = await open_session(process, user_id=uuid.uuid4())
    await eventually(lambda: process.tasks.stats().running == 0)  # the process's own start-up work
    before = process.tasks.stats().started
    first = [session.profiles.on_user_turn() for _ in range(10)]
    assert first == [False] * 9 + [True]
    await eventually(lambda: process.tasks.stats().running == 0)
    second = [session.profiles.on_user_turn() for _ in range(10)]
    assert second == [False] * 9 + [True]
    await eventually(lambda: process.tasks.stats().running == 0)
    assert process.tasks.stats() == BackgroundStats(running=0, started=before + 2, failed=0)
    assert (await session.users.get_profile()).summary.startswith("Ana is a nurse")


async def test_basic_profile_fields_are_checked(process: Process) -> None:
    session = await open_session(process, user_id=uuid.uuid4())
    for bad in ({"timezone": "Mars/Olympus"}, {"language": "Portuguese!"}, {"age": "34"}, {"name": "x" * 81}):
        with pytest.raises(InvalidInputError):
            await session.users.update_profile(**bad)
    updated = await session.users.update_profile(timezone="Europe/Lisbon", language="pt-PT", name="  Ana   Silva ")
    assert (updated.timezone, updated.language, updated.name) == ("Europe/Lisbon", "pt-PT", "Ana Silva")


async def test_after_forget_everything_nothing_of_the_session_is_written_back(process: Process, script: Script) -> None:
    user = uuid.uuid4()
    session = await open_session(process, user_id=user)
    await session.users.update_profile(name="Ana")
    await session.conversations.start()
    session.conversations.log_message("user", "My ex is called Rui and I want to forget him")
    await session.memories.save_memory("RELATIONSHIP", "ex", "Her ex is called Rui")

    await session.forget_everything()
    assert await session.conversations.finish() is None  # nothing said before it is summarised
    with pytest.raises(WriteForbiddenError):  # the session's memory ended with it: nothing more is stored
        await session.profiles.generate()
    session.conversations.log_message("user", "I'm Ana, by the way")
    await process.batcher.flush()
    assert await process.storage.recent_conversations(user) == []
    assert await process.storage.recent_messages(user) == []
    assert await process.storage.list_memories(user) == []
    assert await process.storage.get_profile(user) is None


async def test_the_opening_skips_a_session_where_nothing_was_said(process: Process, script: Script, clock: Clock):
    user = uuid.uuid4()
    first = await open_session(process, user_id=user)
    await first.conversations.start()
    first.conversations.log_message("user", "Big exam on Monday")
    script.summary = {"summary": "Exam coming.", "open_threads": ["the exam on Monday"]}
    await first.conversations.finish()
    clock.now += dt.timedelta(days=1)
    silent = await open_session(process, user_id=user)
    await silent.conversations.start()  # joined, said nothing, left
    clock.now += dt.timedelta(days=1)
    later = await open_session(process, user_id=user)
    opening = await later.conversations.opening(None)
    assert opening.last_thread == "the exam on Monday"


async def test_extraction_skips_an_unusable_item_and_keeps_the_rest(process: Process, script: Script) -> None:
    session = await open_session(process, user_id=uuid.uuid4())
    script.extraction = json.dumps({"memories": [
        {"category": "FACT", "key": "blank", "value": "   "},
        {"category": "PREFERENCE", "key": "tea", "value": "Prefers green tea"},
    ]})  # fmt: skip
    result = await session.extractor.extract([("user", "I like green tea")])
    assert result.saved == ["tea"]


async def test_a_character_no_database_takes_is_replaced_and_the_message_kept(process: Process) -> None:
    user = uuid.uuid4()
    session = await open_session(process, user_id=user)
    await session.conversations.start()
    for text in ("bad \x00 byte", "lone \ud800 surrogate", "fine"):
        stored = session.conversations.log_message("user", text)
        assert stored is not None
        await stored
    contents = [m.content for m in await process.storage.recent_messages(user)]
    assert sorted(contents) == sorted(["bad   byte", "lone \ufffd surrogate", "fine"])


async def test_a_forget_in_another_session_leaves_this_ones_chat_transcript_and_stored_messages(
    process: Process,
) -> None:
    user = uuid.uuid4()
    here, there = await open_session(process, user_id=user), await open_session(process, user_id=user)
    await here.conversations.start()
    here.conversations.log_message("user", "My bank PIN is 4921. I like jazz.")
    await there.memories.save_memory("FACT", "bank pin", "Bank PIN is 4921")
    assert (await here.catch_up()).changed == 1

    await there.forgetting.forget("my bank PIN")
    caught = await here.catch_up()

    assert [m.key for m in caught.removed] == ["bank_pin"]
    assert here.memories.get("FACT", "bank_pin") is None
    assert "4921" not in here.forgetting.scrub("It is 4921, remember?")  # later LLM requests of this session
    assert all("4921" not in text for _, text in here.conversations.transcript)
    await eventually(lambda: process.tasks.stats().running == 0)
    stored = [m.content for m in await process.storage.recent_messages(user, limit=10)]
    assert stored == ["[forgotten] I like jazz."]


async def test_an_erasure_in_another_session_stops_this_one_storing(process: Process) -> None:
    user = uuid.uuid4()
    here, there = await open_session(process, user_id=user), await open_session(process, user_id=user)
    await there.memories.save_memory("FACT", "job", "Works as a nurse")
    await here.catch_up()
    await there.forget_everything()

    caught = await here.catch_up()

    assert caught.erased
    assert len(here.memories) == 0
    assert not here.guard.can_write
    assert here.conversations.transcript == []


async def test_an_erasure_seen_from_another_session_drops_what_this_one_still_queues(
    settings: Settings, clock: Clock
) -> None:
    process = await open_process(settings.model_copy(update={"batch_max_delay_ms": 60_000}), clock=clock)
    try:
        user = uuid.uuid4()
        here, there = await open_session(process, user_id=user), await open_session(process, user_id=user)
        await there.memories.save_memory("FACT", "job", "Works as a nurse")
        await here.catch_up()
        await there.forget_everything()
        here.conversations.log_message("user", "My bank PIN is 4921")  # said before this session saw it

        assert (await here.catch_up()).erased
        await eventually(lambda: process.tasks.stats().running == 0)
        await process.batcher.flush(within=5)

        assert await process.storage.recent_messages(user) == []
        assert await process.storage.user_version(user) == here.memories.version
    finally:
        await process.aclose()


async def test_a_sessions_own_save_is_counted_as_no_change_by_its_next_catch_up(process: Process) -> None:
    session = await open_session(process, user_id=uuid.uuid4())
    await session.memories.save_memory("FACT", "job", "Works as a nurse")
    applied = process.metrics.value("companion_catch_ups_total", outcome="applied")
    unchanged = process.metrics.value("companion_catch_ups_total", outcome="unchanged")

    await session.catch_up()
    await session.catch_up()

    assert process.metrics.value("companion_catch_ups_total", outcome="applied") == applied
    assert process.metrics.value("companion_catch_ups_total", outcome="unchanged") == unchanged + 2


async def test_a_process_prunes_the_tombstones_older_than_the_retention_as_it_opens(
    settings: Settings, process: Process
) -> None:
    user = uuid.uuid4()
    session = await open_session(process, user_id=user)
    assert (await session.memories.save_memory("HEALTH", "pin", "Bank PIN is 4921")).won
    behind = await process.storage.user_version(user)
    await session.memories.forget("my bank PIN")
    assert (await process.storage.changes_since(user, behind)).deleted  # its tombstone, for the other sessions

    later = Clock()
    later.now = dt.datetime.now(dt.UTC) + dt.timedelta(hours=settings.tombstone_retention_hours, minutes=1)
    next_start = await open_process(settings, clock=later)
    try:
        await eventually(lambda: not next_start.tasks.running("prune-tombstones"))
        changes = await process.storage.changes_since(user, behind)
    finally:
        await next_start.aclose()

    assert changes.deleted == ()  # no hash of the forgotten key is left
    assert changes.everything  # a session that was behind it reads every memory instead
