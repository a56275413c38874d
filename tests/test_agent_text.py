"""The Companion agent in LiveKit's text mode: an AgentSession run against a local OpenAI-compatible fake."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import AgentSession
from livekit.plugins import openai
from prometheus_client import CollectorRegistry

from agent import Companion, build_providers, finish_companion, start_companion
from core.config import Settings
from infrastructure.metrics import Metrics
from infrastructure.turn_metrics import TurnMetrics
from services.container import Process, Session, open_process, open_session
from services.context_budget import HISTORY_SUMMARY_PROMPT, SUMMARY_HEADER
from services.persona import NOTES_HEADER
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results
from tests.waiting import eventually

MAYA = "My sister Maya lives in Lisbon"


class Brain:
    """Scripts the fake LLM by the user's words; records what the storage port had done at each request."""

    def __init__(self) -> None:
        self.tools: dict[str, ToolCall] = {}
        self.process: Process | None = None
        self.queries_at_request: list[int] = []

    def __call__(self, body: dict[str, Any]) -> str | ToolCall | None:
        if body["messages"][0]["content"].startswith("You are Companion"):
            if self.process is not None:
                self.queries_at_request.append(self.process.storage.stats.queries)
            results = tool_results(body)
            if results:
                return "Done. " + " ".join(results)
            said = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            return self.tools.get(said)
        system = body["messages"][0]["content"]
        if system == HISTORY_SUMMARY_PROMPT:
            return "They talked about the garden and the tomatoes."
        return '{"memories": []}' if "JSON" in system else "A profile."


@pytest.fixture
def brain() -> Brain:
    return Brain()


@pytest.fixture
def fake(brain: Brain) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=brain) as server:
        yield server


@pytest.fixture
def settings(tmp_path: Path, fake: FakeOpenAIServer) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/companion.db",
        openai_base_url=fake.base_url,
        batch_max_delay_ms=5_000,  # writes wait for the end of the test's turn: the hot path stays observable
        retrieval_deadline_ms=2_000,  # a busy test machine must not turn "carries memories" into a deadline miss
    )


@pytest.fixture
async def process(settings: Settings, brain: Brain) -> AsyncIterator[Process]:
    process = await open_process(settings, metrics=Metrics(CollectorRegistry()))  # this test's numbers only
    brain.process = process
    yield process
    await process.aclose()


@dataclass
class Chat:
    agent: Companion
    session: AgentSession
    services: Session
    model: openai.LLM

    async def say(self, *lines: str) -> None:
        for line in lines:
            await self.session.run(user_input=line)

    async def aclose(self) -> None:
        await self.session.aclose()
        await self.model.aclose()


@contextlib.asynccontextmanager
async def chat(process: Process, user: uuid.UUID | None, fake: FakeOpenAIServer, *lines: str) -> AsyncIterator[Chat]:
    services = await open_session(process, user_id=user)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    conversation = Chat(await start_companion(session, process=process, services=services), session, services, model)
    try:
        await conversation.say(*lines)
        yield conversation
    finally:
        await conversation.aclose()


def greeting(session: AgentSession) -> str:
    return next(i.text_content for i in session.history.items if getattr(i, "role", None) == "assistant")


def notes(request: dict[str, Any]) -> str:
    """The agent's notes from memory in one LLM request: assistant messages, never system ones."""
    return "\n".join(m["content"] for m in request["messages"] if str(m["content"]).startswith(NOTES_HEADER))


def replies_asked(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    """The agent's own LLM requests (not the background extraction's or profile's)."""
    return [r for r in fake.chat_requests if r["messages"][0]["content"].startswith("You are Companion")]


async def test_a_new_user_is_greeted_as_new_and_the_next_session_as_returning(process, fake) -> None:
    user = uuid.uuid4()
    async with chat(process, user, fake, "I have an exam on Monday") as first:
        assert greeting(first.session).startswith("Hi there! I'm Companion")
        await first.services.conversations.finish()  # what the job's shutdown callback does
    async with chat(process, user, fake) as second:
        assert greeting(second.session).startswith("Welcome back!")


async def test_a_fact_remembered_with_the_tool_reaches_the_llm_in_a_later_session(process, fake, brain) -> None:
    user = uuid.uuid4()
    brain.tools["Remember that my sister Maya lives in Lisbon"] = ToolCall(
        "remember", {"category": "RELATIONSHIP", "key": "sister city", "value": MAYA}
    )
    async with chat(process, user, fake, "Remember that my sister Maya lives in Lisbon"):
        pass
    stored = await process.storage.get_memory(user, "RELATIONSHIP", "sister_city")
    assert stored is not None
    assert stored.value == MAYA
    async with chat(process, user, fake, "Where does my sister live?"):
        assert MAYA in notes(replies_asked(fake)[-1])


async def test_typed_turns_and_generate_reply_both_carry_the_memories(process, fake) -> None:
    user = uuid.uuid4()
    await (await open_session(process, user_id=user)).memories.save_memory("RELATIONSHIP", "sister city", MAYA)
    async with chat(process, user, fake, "Where does my sister live?") as conversation:  # typed: session.run
        assert MAYA in notes(replies_asked(fake)[-1])
        await conversation.session.generate_reply(user_input="Tell me about my sister again")
        assert MAYA in notes(replies_asked(fake)[-1])
        assert conversation.services.retrieval.stats.turns == 2
        history = conversation.session.history.items
        assert [m for m in history if NOTES_HEADER in str(getattr(m, "content", ""))] == []  # injected, not kept


async def test_a_warm_turn_reads_only_the_user_version_and_calls_no_llm_before_the_reply(process, fake, brain) -> None:
    user = uuid.uuid4()
    await (await open_session(process, user_id=user)).memories.save_memory("PREFERENCE", "drink", "Prefers green tea")
    async with chat(process, user, fake, "Hello") as conversation:
        await eventually(lambda: process.tasks.stats().running == 0)  # the last turn's extraction is done
        await process.batcher.flush()
        before, requests_before = process.storage.stats.queries, len(fake.chat_requests)
        await conversation.say("What do I like to drink?")
        # Between the user's words and the reply's request: one read of the user's version (did another session
        # change anything?), nothing else when nothing changed.
        assert brain.queries_at_request[-1] == before + 1
        assert fake.chat_requests[requests_before]["messages"][0]["content"].startswith("You are Companion")
        assert "Prefers green tea" in notes(replies_asked(fake)[-1])


async def test_the_tools_change_the_database_and_the_health_tools_say_real_numbers(process, fake, brain) -> None:
    user = uuid.uuid4()
    brain.tools.update({
        "Call me Ana": ToolCall("update_profile", {"field": "preferred_name", "value": "Ana"}),
        "Remember I love jazz": ToolCall("remember", {"category": "PREFERENCE", "key": "music", "value": "Loves jazz"}),
        "What music do I like?": ToolCall("recall", {"query": "music"}),
        "Forget the jazz thing": ToolCall("forget", {"query": "jazz music"}),
        "How is the cache doing?": ToolCall("getRedisCacheStats"),
        "How is the pool?": ToolCall("getConnectionPoolStats"),
        "How is batching?": ToolCall("getDatabaseBatchStats"),
        "How many memories?": ToolCall("getMemoryStats"),
        "Remember nonsense": ToolCall("remember", {"category": "HOBBY", "key": "x", "value": "y"}),
    })  # fmt: skip

    def said(line: str) -> str:
        answers = tool_results(replies_asked(fake)[-1])
        assert len(answers) == 1, (line, answers)
        [answer] = answers
        return answer

    async with chat(process, user, fake, "Call me Ana", "Remember I love jazz", "What music do I like?") as c:
        assert (await process.storage.get_profile(user)).preferred_name == "Ana"
        assert 'They like to be called "Ana".' in replies_asked(fake)[-1]["messages"][0]["content"]  # instructions
        assert "Loves jazz" in said("What music do I like?")
        await c.say("How many memories?")
        assert "I remember 1 things about you (1 preference)" in said("How many memories?")
        await c.say("Forget the jazz thing")
        assert await process.storage.get_memory(user, "PREFERENCE", "music") is None
        await c.say("How is the cache doing?")
        assert "memory mode with a hit rate of" in said("How is the cache doing?")
        await c.say("How is the pool?")
        assert "storage: healthy" in said("How is the pool?")
        await c.say("How is batching?")
        assert "writes accepted in" in said("How is batching?")
        await c.say("Remember nonsense")
        assert "category must be one of" in said("Remember nonsense")


async def test_a_guest_chats_but_nothing_is_stored(process, fake, brain) -> None:
    brain.tools["Remember I love jazz"] = ToolCall(
        "remember", {"category": "PREFERENCE", "key": "music", "value": "Loves jazz"}
    )
    async with chat(process, None, fake, "Remember I love jazz"):
        assert "guest" in tool_results(replies_asked(fake)[-1])[0]
    await process.batcher.flush()
    assert process.batcher.stats().accepted == 0


async def test_a_slow_embedder_past_the_deadline_does_not_hold_the_reply(tmp_path: Path) -> None:
    with FakeOpenAIServer(embedding_delay=0.5) as slow:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, database_url=f"sqlite:///{tmp_path}/slow.db", openai_base_url=slow.base_url,
            embedding_provider="openai",
        )  # fmt: skip
        process = await open_process(settings)
        try:
            async with chat(process, uuid.uuid4(), slow, "Where does my sister live?") as conversation:
                items = conversation.session.history.items
                replies = [i for i in items if getattr(i, "role", None) == "assistant"]
                assert replies[-1].text_content == "I heard you say: Where does my sister live?"
                assert conversation.services.retrieval.stats.deadline_misses == 1
        finally:
            await process.aclose()


async def test_each_turn_logs_one_line_of_timings_without_user_text(process, fake, caplog) -> None:
    metrics = TurnMetrics(registry=CollectorRegistry())
    services = await open_session(process, user_id=uuid.uuid4())
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    try:
        with caplog.at_level(logging.INFO, logger="companion.turns"):
            await start_companion(session, process=process, services=services, turn_metrics=metrics)
            await session.run(user_input="my secret is pistachio")
        lines = [r for r in caplog.records if r.name == "companion.turns"]
        assert len(lines) == 1  # the greeting is not a turn
        assert lines[0].llm_ttft is not None
        assert lines[0].retrieval_in_time is True
        assert "pistachio" not in caplog.text
        assert metrics.registry.get_sample_value("companion_llm_ttft_seconds_count") == 1.0
    finally:
        await session.aclose()
        await model.aclose()


async def test_a_long_session_summarises_its_oldest_turns_in_the_background(tmp_path: Path, fake) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite:///{tmp_path}/long.db", openai_base_url=fake.base_url,
        chat_context_max_tokens=1_000, retrieval_deadline_ms=2_000,
    )  # fmt: skip
    chatter = "the tomatoes are growing and the basil needs water. " * 8
    lines = [f"Day {n} in the garden: {chatter.strip()}" for n in range(1, 7)]  # about 230 tokens a turn
    process = await open_process(settings)
    user = uuid.uuid4()
    try:
        async with chat(process, user, fake, *lines[:5]) as conversation:
            agent = conversation.agent

            def summaries() -> list[str]:
                return [i.text_content for i in agent.chat_ctx.items if i.id.startswith("companion.history-summary")]

            await eventually(lambda: conversation.services.budget.compactions == 1)  # written in the background
            assert summaries() == []  # swapped in at the end of a reply, never under a turn in progress
            await conversation.say(lines[5])
            await eventually(lambda: bool(summaries()))
            assert summaries() == [f"{SUMMARY_HEADER} They talked about the garden and the tomatoes."]
            await conversation.say("What should I plant next?")
            sent = replies_asked(fake)[-1]["messages"]
            assert SUMMARY_HEADER in str(sent)
            assert "Day 1 in the garden" not in str(sent)  # folded into the summary
            assert "Day 5 in the garden" in str(sent)  # the latest turns stay word for word
            assert [m["role"] for m in sent if SUMMARY_HEADER in str(m["content"])] == ["assistant"]
            summarised = [r for r in fake.chat_requests if r["messages"][0]["content"] == HISTORY_SUMMARY_PROMPT]
            assert "Day 1 in the garden" in summarised[0]["messages"][1]["content"]
        await process.batcher.flush()
        stored = [m.content for m in await process.storage.recent_messages(user, limit=50)]
        assert lines[0] in stored  # the transcript keeps every word; only the LLM's context is summarised
    finally:
        await process.aclose()


async def test_the_fallback_llm_answers_when_the_first_provider_is_down(tmp_path: Path, fake) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, database_url=f"sqlite:///{tmp_path}/fallback.db",
        openai_base_url="http://127.0.0.1:9/v1",  # nothing listens there
        fallback_llm_base_url=fake.base_url, fallback_llm_model="fallback-model",
    )  # fmt: skip
    process = await open_process(settings)
    providers = build_providers(settings, client=process.clients.openai)
    services = await open_session(process, user_id=uuid.uuid4())
    session = AgentSession(llm=providers.llm)
    try:
        await start_companion(session, process=process, services=services)
        result = await session.run(user_input="Are you there?")
        result.expect.next_event().is_message(role="assistant")
        assert replies_asked(fake)[-1]["model"] == "fallback-model"
        assert [i.text_content for i in session.history.items if getattr(i, "role", None) == "assistant"][-1] == (
            "I heard you say: Are you there?"
        )
    finally:
        await session.aclose()
        await providers.aclose()
        await process.aclose()


async def test_a_slow_llm_at_session_end_does_not_cost_the_transcript(process, fake) -> None:
    user = uuid.uuid4()
    services = await open_session(process, user_id=user)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    await start_companion(session, process=process, services=services)
    await session.run(user_input="I start the new job on Monday")
    await eventually(lambda: process.tasks.stats().running == 0)  # the turn's extraction is done
    fake.completion_delay = 5.0  # the summary would outlast the job process's shutdown
    started = time.monotonic()
    try:
        await finish_companion(process=process, services=services, session=session, llm_budget=0.3)
    finally:
        await model.aclose()
    assert time.monotonic() - started < 4.0  # it gave up on the summary instead of waiting for it
    assert process.batcher.stats().queue_depth == 0
    async with await open_process(process.settings) as later:
        stored = [m.content for m in await later.storage.recent_messages(user, limit=10)]
        assert "I start the new job on Monday" in stored
        [conversation] = await later.storage.recent_conversations(user)
        assert conversation.ended_at is not None  # the end is recorded
        assert conversation.summary is None  # without the summary that came too late


@pytest.mark.parametrize(("detector", "loads_model"), [("vad", False), ("local", True)])
async def test_only_turn_detector_local_loads_the_end_of_turn_model_in_a_job_process(
    process, fake, monkeypatch, detector: str, loads_model: bool
) -> None:
    # LiveKit's local end-of-turn model is about 214 MB of RSS per process that loads it: a session of TURN_DETECTOR=vad (or
    # cloud) must never construct it, not even for a typed turn; one of local does, when its session starts.
    from livekit.agents.inference.eot import transports

    from agent import turn_detection

    built: list[object] = []

    class CountedEOT(transports._EOT):  # LiveKit's own model, observed, not replaced
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(transports, "_EOT", CountedEOT)
    settings = process.settings.model_copy(update={"turn_detector": detector})
    services = await open_session(process, user_id=uuid.uuid4())
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model, turn_handling={"turn_detection": turn_detection(settings)})
    try:
        await start_companion(session, process=process, services=services)
        await session.run(user_input="I planted tomatoes today")
    finally:
        await session.aclose()
        await model.aclose()
    assert bool(built) is loads_model
