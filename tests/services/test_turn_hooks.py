"""The turn hooks without LiveKit: SessionTurns on the container's real services, SQLite, and a local
OpenAI-compatible fake standing in for the LLM provider."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from core.config import Settings
from infrastructure.turn_metrics import TurnMetrics
from services.container import Process, Session, open_process, open_session, session_turns
from services.context_budget import HISTORY_SUMMARY_PROMPT, SUMMARY_HEADER, HistoryItem
from services.memory_extraction import EXTRACTION_PROMPT
from services.turn_hooks import SUMMARY_ID, SessionTurns
from services.user_memory import CatchUp
from tests.fakes.openai_server import FakeOpenAIServer
from tests.waiting import eventually


def answer(body: dict[str, Any]) -> str | None:
    system = body["messages"][0]["content"]
    if system == EXTRACTION_PROMPT:
        return json.dumps({"memories": []})
    if system == HISTORY_SUMMARY_PROMPT:
        return "They talked about the garden."
    return None


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=answer) as server:
        yield server


@pytest.fixture
async def process(tmp_path: Path, fake: FakeOpenAIServer) -> AsyncIterator[Process]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/companion.db",
        openai_base_url=fake.base_url,
        chat_context_max_tokens=1_000,
        retrieval_deadline_ms=2_000,
    )
    process = await open_process(settings)
    yield process
    await process.aclose()


@pytest.fixture
async def session(process: Process) -> Session:
    session = await open_session(process, user_id=uuid.uuid4())
    await session.conversations.start()
    return session


@pytest.fixture
def metrics() -> TurnMetrics:
    return TurnMetrics(registry=CollectorRegistry())


@pytest.fixture
def turns(process: Process, session: Session, metrics: TurnMetrics) -> SessionTurns:
    return session_turns(process, session, metrics=metrics)


def extractions(fake: FakeOpenAIServer) -> list[str]:
    """What each extraction call was shown of the conversation."""
    asked = [
        r["messages"][1]["content"] for r in fake.chat_requests if r["messages"][0]["content"] == EXTRACTION_PROMPT
    ]
    return [prompt.split("Conversation:\n", 1)[1] for prompt in asked]


def no_history() -> list[HistoryItem]:
    return []


async def idle(process: Process) -> None:
    await eventually(lambda: process.tasks.stats().running == 0)


async def test_the_turn_is_logged_and_one_metrics_line_is_kept_per_answer_not_for_the_greeting(
    turns: SessionTurns, session: Session, metrics: TurnMetrics, process: Process
) -> None:
    turns.on_reply("Hi there! I'm Companion.", metrics={}, history=no_history)  # the greeting: no turn yet
    assert metrics.turns == 0
    turns.on_user_message("I planted tomatoes", metrics={"end_of_turn_delay": 0.4})
    turns.on_reply("Lovely, how are they doing?", metrics={"llm_node_ttft": 0.2}, history=no_history)
    assert metrics.turns == 1
    assert metrics.registry.get_sample_value("companion_end_of_turn_delay_seconds_count") == 1.0
    assert session.conversations.transcript[-2:] == [
        ("user", "I planted tomatoes"),
        ("assistant", "Lovely, how are they doing?"),
    ]
    await idle(process)


async def test_memories_are_searched_once_per_user_message_and_again_after_a_forget(
    turns: SessionTurns, session: Session
) -> None:
    await session.memories.save_memory("RELATIONSHIP", "sister city", "My sister Maya lives in Lisbon")
    first = await turns.memories_for("m1", "Where does my sister live?")
    again = await turns.memories_for("m1", "Where does my sister live?")  # a second generation, after a tool call
    assert again is first
    assert session.retrieval.stats.turns == 1
    assert "Maya" in first.text
    turns.forget_turn_memories()
    await turns.memories_for("m1", "Where does my sister live?")
    await turns.memories_for("m2", "And my brother?")
    assert session.retrieval.stats.turns == 3


async def test_extraction_is_single_flight_and_the_next_run_reads_every_turn_said_meanwhile(
    turns: SessionTurns, process: Process, fake: FakeOpenAIServer
) -> None:
    fake.completion_delay = 0.5  # the first extraction is still running while the user goes on
    turns.on_user_message("I moved to Porto", metrics={})
    turns.on_reply("How exciting!", metrics={}, history=no_history)
    await eventually(lambda: len(fake.chat_requests) == 1)
    for n in (2, 3):
        turns.on_user_message(f"Turn {n} from me", metrics={})
        turns.on_reply(f"Reply {n} from you", metrics={}, history=no_history)
    await idle(process)

    assert turns.extraction.runs == 2  # not three: one call at a time, the later replies coalesced
    assert turns.extraction.coalesced == 2
    first, second = extractions(fake)
    assert "I moved to Porto" in first
    for n in (2, 3):  # nothing said while the first ran was skipped
        assert f"user: Turn {n} from me" in second
        assert f"assistant: Reply {n} from you" in second


async def test_a_reply_whose_turn_a_running_extraction_already_read_costs_no_second_call(
    turns: SessionTurns, process: Process, fake: FakeOpenAIServer
) -> None:
    turns.on_user_message("I moved to Porto", metrics={})
    turns.on_reply("How exciting!", metrics={}, history=no_history)
    turns.on_reply("Tell me more.", metrics={}, history=no_history)  # before the run started: it reads both
    await idle(process)
    assert len(extractions(fake)) == 1
    assert turns.extraction.runs == 1


async def test_a_guest_conversation_extracts_nothing(process: Process, fake: FakeOpenAIServer, metrics) -> None:
    guest = await open_session(process, user_id=None)
    turns = session_turns(process, guest, metrics=metrics)
    turns.on_user_message("My PIN is 1234", metrics={})
    turns.on_reply("I won't keep that.", metrics={}, history=no_history)
    await idle(process)
    assert extractions(fake) == []


async def test_a_guest_conversation_reads_nothing_at_the_start_of_a_turn(process: Process, metrics) -> None:
    guest = await open_session(process, user_id=None)
    turns = session_turns(process, guest, metrics=metrics)
    queries = process.storage.stats.queries

    assert await turns.catch_up("message-1") is None
    assert await turns.catch_up("message-2") is None
    assert process.storage.stats.queries == queries


async def test_after_forget_everything_no_extraction_starts(
    turns: SessionTurns, session: Session, process: Process, fake: FakeOpenAIServer
) -> None:
    turns.on_user_message("I moved to Porto", metrics={})
    turns.on_reply("How exciting!", metrics={}, history=no_history)
    await idle(process)
    await session.forget_everything()
    turns.on_user_message("Hello again", metrics={})
    turns.on_reply("Hello!", metrics={}, history=no_history)
    await idle(process)
    assert len(extractions(fake)) == 1


async def test_past_the_budget_a_summary_is_written_in_the_background_and_handed_over_at_the_next_reply(
    turns: SessionTurns, process: Process, fake: FakeOpenAIServer
) -> None:
    said = "the tomatoes are growing and the basil needs water. " * 8
    history = [HistoryItem(id=f"i{n}", role="user" if n % 2 == 0 else "assistant", text=said) for n in range(12)]
    assert turns.on_reply("Good.", metrics={}, history=lambda: history) is None  # started, not ready
    await idle(process)
    ready = turns.on_reply("Yes.", metrics={}, history=lambda: history)
    assert ready is not None
    assert ready.id == f"{SUMMARY_ID}1"
    assert ready.text == f"{SUMMARY_HEADER} They talked about the garden."
    assert ready.plan.ids <= {item.id for item in history}
    assert "i11" not in ready.plan.ids  # the latest turns stay word for word
    summaries = [r for r in fake.chat_requests if r["messages"][0]["content"] == HISTORY_SUMMARY_PROMPT]
    assert len(summaries) == 1
    await idle(process)


async def test_a_user_message_catches_up_with_the_users_other_sessions_once(
    process: Process, session: Session, turns: SessionTurns
) -> None:
    other = await open_session(process, user_id=session.user_id)  # another session of the user, elsewhere
    await other.memories.save_memory("PREFERENCE", "drink", "Prefers green tea")
    applied = process.metrics.value("companion_catch_ups_total", outcome="applied")
    checks = process.metrics.value("companion_catch_up_seconds_count")

    caught = await turns.catch_up("message-1")

    assert caught is not None
    assert caught.changed == 1
    assert session.memories.get("PREFERENCE", "drink") is not None
    await other.memories.save_memory("FACT", "job", "Works as a nurse")
    assert await turns.catch_up("message-1") is None  # a second generation of the same turn: already caught up
    assert (await turns.catch_up("message-2")).changed == 1
    assert process.metrics.value("companion_catch_ups_total", outcome="applied") == applied + 2  # counted, timed
    assert process.metrics.value("companion_catch_up_seconds_count") == checks + 2


async def test_a_generation_cancelled_while_catching_up_leaves_the_catch_up_to_the_next_one_of_the_turn(
    process: Process, session: Session, metrics: TurnMetrics
) -> None:
    other = await open_session(process, user_id=session.user_id)
    await other.memories.save_memory("PREFERENCE", "drink", "Prefers green tea")
    entered, calls = asyncio.Event(), []

    async def first_one_cut_short() -> CatchUp | None:  # as LiveKit cancels a preemptive generation
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            await asyncio.Event().wait()
        return await session.catch_up()

    turns = SessionTurns(user_id=session.user_id, guard=session.guard, conversations=session.conversations,
                         profiles=session.profiles, extractor=session.extractor, rag=session.rag,
                         retrieval=session.retrieval, budget=session.budget, tasks=process.tasks, metrics=metrics,
                         catch_up=first_one_cut_short)  # fmt: skip
    cut = asyncio.create_task(turns.catch_up("message-1"))
    await entered.wait()
    cut.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cut

    caught = await turns.catch_up("message-1")  # the generation that answers

    assert caught is not None
    assert caught.changed == 1
