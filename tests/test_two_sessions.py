"""Two sessions of one user at once, in two job processes, on one PostgreSQL (issue 13): what one session saves,
forgets or renames is in the other's next LLM request, and two writes to one key end with one value everywhere.

Each session is ``tests/session_process.py``: the real services and the Companion in LiveKit's text mode. Both
talk to one fake OpenAI-compatible server here, which tells their requests apart by the model name each one uses.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from livekit.plugins import openai

from core.config import Settings
from services.context_budget import HISTORY_SUMMARY_PROMPT
from services.persona import NOTES_HEADER
from tests.agent_process import REPO, clean_env
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results
from tests.session_process import text_session

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MAYA = "My sister Maya lives in Lisbon"
SCRIPT = {
    "Remember that my sister Maya lives in Lisbon": ToolCall(
        "remember", {"category": "RELATIONSHIP", "key": "sister city", "value": MAYA}
    ),
    "Forget where my sister lives": ToolCall("forget", {"query": "my sister Maya lives in Lisbon"}),
    "Call me Ana": ToolCall("update_profile", {"field": "preferred_name", "value": "Ana"}),
}
DRINKS = {"session-a": "Prefers green tea", "session-b": "Prefers black coffee"}


def responder(body: dict[str, Any]) -> str | ToolCall | None:
    system = body["messages"][0]["content"]
    if not system.startswith("You are Companion"):  # the sessions' background work: nothing to learn
        if system == HISTORY_SUMMARY_PROMPT:
            return "A summary."
        return '{"memories": []}' if "JSON" in system else "A profile."
    results = tool_results(body)
    if results:
        return "Done. " + " ".join(results)
    said = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    if said == "Remember what I drink":  # both sessions at once: each gets its call when both asked, so they race
        value = DRINKS[body["model"]]
        return ToolCall("remember", {"category": "PREFERENCE", "key": "drink", "value": value}, together=2)
    return SCRIPT.get(said)


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=responder) as server:
        yield server


def notes(request: dict[str, Any]) -> str:
    """The agent's notes from memory in one LLM request (messages with tool calls have no content)."""
    return "\n".join(str(m.get("content")) for m in request["messages"]
                     if str(m.get("content")).startswith(NOTES_HEADER))  # fmt: skip


class Session:
    """One session's job process: ``say`` types a line and returns once the turn is answered."""

    def __init__(self, child: asyncio.subprocess.Process, model: str, fake: FakeOpenAIServer) -> None:
        self.child, self.model, self._fake = child, model, fake

    async def expect(self, prefix: str, *, within: float = 90.0) -> None:
        assert self.child.stdout is not None
        async with asyncio.timeout(within):
            while True:
                line = (await self.child.stdout.readline()).decode()
                if not line:
                    raise AssertionError(f"{self.model} exited (code {await self.child.wait()}) before {prefix}")
                if line.startswith(prefix):
                    return

    async def say(self, line: str) -> None:
        assert self.child.stdin is not None
        self.child.stdin.write(line.encode() + b"\n")
        await self.child.stdin.drain()
        await self.expect("DONE")

    def requests(self) -> list[dict[str, Any]]:
        """This session's reply requests, oldest first (not its background work's)."""
        return [
            r
            for r in self._fake.chat_requests
            if r["model"] == self.model and r["messages"][0]["content"].startswith("You are Companion")
        ]

    def last_request(self) -> dict[str, Any]:
        return self.requests()[-1]

    def last_tool_result(self) -> str:
        [result] = tool_results(self.last_request())
        return result


@pytest.fixture
async def sessions(
    migrated_database: str, fake: FakeOpenAIServer, tmp_path: Path
) -> AsyncIterator[tuple[Session, Session, uuid.UUID]]:
    user = uuid.uuid4()
    started: list[Session] = []
    try:
        for name in ("a", "b"):
            env = clean_env(tmp_path, DATABASE_URL=migrated_database, DATABASE_AUTO_MIGRATE="false",
                            OPENAI_BASE_URL=fake.base_url, OUTBOX_DIR=str(tmp_path / f"outbox-{name}"),
                            PYTHONPATH=str(REPO), BATCH_MAX_DELAY_MS="5", RETRIEVAL_DEADLINE_MS="3000",
                            TURN_DETECTOR="vad")  # fmt: skip
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.session_process", str(user), name,
                cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            started.append(Session(child, f"session-{name}", fake))
        for session in started:
            await session.expect("READY")
        yield started[0], started[1], user
    finally:
        for session in started:
            if session.child.returncode is None:
                assert session.child.stdin is not None
                session.child.stdin.close()
                try:
                    async with asyncio.timeout(30):
                        await session.child.wait()
                except TimeoutError:
                    session.child.kill()
                    await session.child.wait()


async def test_a_session_process_builds_no_local_end_of_turn_model() -> None:
    settings = Settings(_env_file=None, turn_detector="vad")  # type: ignore[call-arg]
    model = openai.LLM(model="session-a", base_url="http://127.0.0.1:9/v1", api_key="x")
    try:
        assert text_session(settings, model).turn_detection == "vad"  # not LiveKit's default TurnDetector()
    finally:
        await model.aclose()


async def stored_drink(dsn: str, user: uuid.UUID) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "select value from memories where user_id = $1 and category = 'PREFERENCE' and key = 'drink'", user
        )
    finally:
        await conn.close()
    return [r["value"] for r in rows]


async def test_two_sessions_of_one_user_in_two_processes_converge_before_their_next_reply(
    sessions: tuple[Session, Session, uuid.UUID], migrated_database: str
) -> None:
    a, b, user = sessions

    # A memory saved in one is in the other's next LLM request.
    await a.say("Remember that my sister Maya lives in Lisbon")
    assert a.last_tool_result() == f"Saved: {MAYA}"
    await b.say("Where does my sister live?")
    assert MAYA in notes(b.last_request())

    # A forget in one keeps the fact out of the other's next request.
    await a.say("Forget where my sister lives")
    assert a.last_tool_result().startswith("Forgotten one thing")
    await b.say("Tell me about my sister")
    assert "Lisbon" not in json.dumps(b.last_request()["messages"])  # (the tools mention Europe/Lisbon)

    # A rename reaches the other's instructions.
    await a.say("Call me Ana")
    await b.say("Hello again")
    assert 'They like to be called "Ana".' in b.last_request()["messages"][0]["content"]

    # Two writes to one key at once: one wins, the other session is told what holds, and both then use it.
    await asyncio.gather(a.say("Remember what I drink"), b.say("Remember what I drink"))
    answers = {s.model: s.last_tool_result() for s in (a, b)}
    saved = [model for model, answer in answers.items() if answer.startswith("Saved: ")]
    assert len(saved) == 1, answers
    winner = DRINKS[saved[0]]
    [loser] = [answer for answer in answers.values() if not answer.startswith("Saved: ")]
    assert loser.startswith("Not saved: ")
    assert winner in loser
    assert await stored_drink(migrated_database, user) == [winner]
    for session in (a, b):
        await session.say("What do I like to drink?")
        said = notes(session.last_request())
        assert winner in said
        assert all(value not in said for value in DRINKS.values() if value != winner)
