"""Forgetting, end to end, driven through the agent in LiveKit's text mode: a forgotten fact never again reaches an
LLM request, in this session or the next, and nothing stored can bring it back."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import AgentSession
from livekit.plugins import openai

from agent import finish_companion, start_companion
from infrastructure.storage import MessageWrite
from services.container import Process, open_process, open_session
from services.conversation_service import SUMMARY_PROMPT
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results

PIN = "4821"
FORGET = "Please forget my bank PIN"


class Script:
    """The fake LLM: tools by the user's words; the end-of-session summary repeats the transcript it was given, and
    the profile refresh the current profile, so what the session kept shows in what it stores."""

    def __init__(self) -> None:
        self.tools: dict[str, ToolCall] = {
            "My bank PIN is 4821, remember it": ToolCall(
                "remember", {"category": "FACT", "key": "bank pin", "value": f"Their bank PIN is {PIN}"}
            ),
            FORGET: ToolCall("forget", {"query": "bank PIN"}),
            "Forget everything": ToolCall("forget", {"query": "everything"}),
            "Forget all my memories": ToolCall("forget", {"query": "all my memories"}),
            "Yes, erase it all": ToolCall("forget_everything", {"confirmed": True}),
            "Forget what I said about my PIN": ToolCall("forget", {"query": "my PIN"}),
        }

    def __call__(self, body: dict[str, Any]) -> str | ToolCall | None:
        system = body["messages"][0]["content"]
        if system.startswith("You are Companion"):
            results = tool_results(body)
            if results:
                return "Done. " + " ".join(results)
            said = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
            return self.tools.get(said)
        if system == SUMMARY_PROMPT:
            return json.dumps({"summary": body["messages"][-1]["content"][:1_500], "open_threads": []})
        if "JSON" in system:
            return '{"memories": []}'
        # The profile refresh keeps the current profile it was given.
        return body["messages"][-1]["content"].split("Current profile:\n", 1)[-1].split("\n\n", 1)[0]


def last_reply_request(fake: FakeOpenAIServer) -> dict[str, Any]:
    """The agent's latest LLM request (the background extraction's and profile's may have come after it)."""
    return [r for r in fake.chat_requests if r["messages"][0]["content"].startswith("You are Companion")][-1]


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=Script()) as server:
        yield server


async def run_session(process: Process, user: uuid.UUID, fake: FakeOpenAIServer, *lines: str) -> AgentSession:
    services = await open_session(process, user_id=user)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    await start_companion(session, process=process, services=services)
    for line in lines:
        await session.run(user_input=line)
    await finish_companion(process=process, services=services, session=session)  # closes the process too
    await model.aclose()
    return session


def requests_since(fake: FakeOpenAIServer, start: int) -> str:
    return json.dumps(fake.chat_requests[start:], ensure_ascii=False)


async def test_a_forgotten_fact_leaves_every_text_and_never_reaches_an_llm_request_again(
    tmp_path: Path, fake: FakeOpenAIServer, process: Process
) -> None:
    user, earlier = uuid.uuid4(), uuid.uuid4()
    storage, at = process.storage, process.clock()
    # What earlier sessions left: a written profile, a summary and an open thread, a stored message.
    await storage.update_profile(user, {"name": "Dave", "summary": f"Dave's bank PIN is {PIN}. He loves tea."}, at=at)
    await storage.finish_conversation(
        user, earlier, at=at, summary=f"Dave said his PIN is {PIN}. They talked about tea.", open_threads=["the PIN"]
    )
    await storage.append_messages([MessageWrite(uuid.uuid4(), earlier, user, "user", f"My PIN is {PIN}. Hi!", at)])

    await run_session(process, user, fake, "My bank PIN is 4821, remember it", FORGET, "What do you know about me?")
    forgot_at = next(
        i for i, r in enumerate(fake.chat_requests) if tool_results(r) and "Forgotten" in tool_results(r)[0]
    )
    leaks = [m for r in fake.chat_requests[forgot_at:] for m in r["messages"] if PIN in json.dumps(m)]
    assert leaks == []  # the answer to the forget, and every request after it

    async with await open_process(process.settings) as later:
        stored = later.storage
        assert await stored.list_memories(user) == []
        profile = await stored.get_profile(user)
        assert profile is not None
        assert profile.summary == "He loves tea."  # rewritten without it, the rest kept
        conversations = await stored.recent_conversations(user)
        assert [(c.summary, c.open_threads) for c in conversations if PIN in f"{c.summary} {c.open_threads}"] == []
        [before] = [c for c in conversations if c.id == earlier]
        assert (before.summary, list(before.open_threads)) == ("They talked about tea.", [])
        assert any("tea" in (c.summary or "") for c in conversations)
        messages = [m.content for m in await stored.recent_messages(user, limit=100)]
        assert not any(PIN in m for m in messages)
        assert "[forgotten] Hi!" in messages  # transcripts are kept for the record, redacted

    start = len(fake.chat_requests)
    await run_session(await open_process(process.settings), user, fake, "Tell me about my bank")
    assert PIN not in requests_since(fake, start)


@pytest.mark.parametrize("vague", ["Forget everything", "Forget all my memories"])
async def test_a_vague_forget_everything_asks_to_confirm_and_erases_only_after_a_yes(
    fake: FakeOpenAIServer, process: Process, vague: str
) -> None:
    user = uuid.uuid4()
    services = await open_session(process, user_id=user)
    await services.users.update_profile(name="Dave", summary="Dave is a baker.")
    await services.memories.save_memory("FACT", "job", "Dave is a baker")

    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    agent = await start_companion(session, process=process, services=services)
    await session.run(user_input=vague)
    [asked] = tool_results(last_reply_request(fake))
    assert "Ask the user to confirm" in asked
    assert await process.storage.get_profile(user) is not None  # nothing erased on the request alone

    await session.run(user_input="Yes, erase it all")
    start = len(fake.chat_requests) - 1  # the answer to the erase, and every request after it
    [done] = tool_results(last_reply_request(fake))
    assert "Everything is erased" in done
    assert await process.storage.get_profile(user) is None
    assert await process.storage.list_memories(user) == []
    assert "Dave" not in agent.instructions
    await session.run(user_input="I'm Sam, by the way")  # the session's memory ended: nothing more is stored
    leaks = [m for r in fake.chat_requests[start:] for m in r["messages"] if "Dave" in json.dumps(m)]
    assert leaks == []
    await finish_companion(process=process, services=services, session=session)
    await model.aclose()
    async with await open_process(process.settings) as later:
        assert await later.storage.recent_messages(user) == []
        assert await later.storage.recent_conversations(user) == []


async def test_forget_everything_called_with_a_yes_in_the_same_message_erases_nothing(
    fake: FakeOpenAIServer, process: Process
) -> None:
    user = uuid.uuid4()
    services = await open_session(process, user_id=user)
    await services.users.update_profile(name="Dave")
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    await start_companion(session, process=process, services=services)
    await session.run(user_input="Yes, erase it all")  # the model "confirms" with no request before it
    [answer] = tool_results(last_reply_request(fake))
    assert "Nothing is erased yet" in answer
    assert (await process.storage.get_profile(user)).name == "Dave"  # type: ignore[union-attr]
    await session.aclose()
    await model.aclose()


async def test_what_was_only_said_is_forgotten_from_the_conversation_when_no_memory_holds_it(
    fake: FakeOpenAIServer, process: Process
) -> None:
    user = uuid.uuid4()
    services = await open_session(process, user_id=user)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    await start_companion(session, process=process, services=services)
    await session.run(user_input=f"My PIN is {PIN}, by the way. I love tea.")  # said, never saved as a memory
    await session.run(user_input="Forget what I said about my PIN")
    [answer] = tool_results(last_reply_request(fake))
    assert "gone from this conversation" in answer
    start = len(fake.chat_requests) - 1
    await session.run(user_input="What do you know about me?")
    leaks = [m for r in fake.chat_requests[start:] for m in r["messages"] if PIN in json.dumps(m)]
    assert leaks == []
    await finish_companion(process=process, services=services, session=session)
    await model.aclose()
    async with await open_process(process.settings) as later:
        said = [m.content for m in await later.storage.recent_messages(user, limit=100)]
        assert not any(PIN in m for m in said)
        [conversation] = await later.storage.recent_conversations(user)
        assert PIN not in (conversation.summary or "")
