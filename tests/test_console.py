"""The dev console, driven under a pseudo-terminal as a person would use it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pexpect
import pytest

from core.config import DEFAULT_CONSOLE_USER_ID
from infrastructure.storage.sqlite import SqliteStorage
from tests.agent_process import AGENT, clean_env
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = [pytest.mark.console, pytest.mark.slow]


def run_console(home: Path, fake: FakeOpenAIServer, *, expect_greeting: str, line: str, expect_reply: str) -> None:
    console = pexpect.spawn(
        sys.executable,
        [str(AGENT), "console", "--text"],
        cwd=home,
        env=clean_env(home, OPENAI_BASE_URL=fake.base_url),
        encoding="utf-8",
        dimensions=(40, 140),
        timeout=90,
    )
    try:
        console.expect("Type to talk to your agent")
        console.expect(expect_greeting)
        console.send(line + "\r")
        console.expect(expect_reply)
        console.sendcontrol("c")
        console.expect(pexpect.EOF, timeout=60)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0


def companion_turns(fake: FakeOpenAIServer) -> list[str]:
    """What the user said in the agent's own LLM requests (not the background summary or extraction)."""
    asked = [r for r in fake.chat_requests if r["messages"][0]["content"].startswith("You are Companion")]
    return [next(m["content"] for m in reversed(r["messages"]) if m["role"] == "user") for r in asked]


def test_the_console_greets_answers_and_remembers_the_user_next_time(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies={"Hello there": "Hi! Nice to meet you."}) as fake:
        run_console(tmp_path, fake, expect_greeting="lovely to meet you", line="Hello there", expect_reply="Nice to")
        assert companion_turns(fake) == ["Hello there"]
        run_console(tmp_path, fake, expect_greeting="Welcome back", line="Me again", expect_reply="Me again")

    async def first_transcript() -> list[str]:
        async with await SqliteStorage.open(tmp_path / "companion.db") as storage:
            return [m.content for m in await storage.recent_messages(DEFAULT_CONSOLE_USER_ID, limit=20)]

    said = asyncio.run(first_transcript())
    assert "Hello there" in said
    assert "Hi! Nice to meet you." in said
