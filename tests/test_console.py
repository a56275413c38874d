"""The dev console, driven under a pseudo-terminal as a person would use it."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pexpect
import pytest

from core.config import DEFAULT_CONSOLE_USER_ID
from infrastructure.storage.sqlite import SqliteStorage
from tests.agent_process import AGENT, clean_env
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results
from tests.net import free_port

pytestmark = [pytest.mark.console, pytest.mark.slow]

MAYA = "My sister Maya lives in Lisbon"
TOOLS = {
    "Remember that my sister Maya lives in Lisbon": ToolCall(
        "remember", {"category": "RELATIONSHIP", "key": "sister city", "value": MAYA}
    ),
    "How is the cache doing?": ToolCall("getRedisCacheStats"),
}


def companion(body: dict[str, Any]) -> str | ToolCall | None:
    """The LLM: calls a tool for the lines in TOOLS and says what it returned; echoes anything else."""
    if not body["messages"][0]["content"].startswith("You are Companion"):
        return None
    if results := tool_results(body):
        return "Done. " + " ".join(results)
    return TOOLS.get(next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user"))


def run_console(
    home: Path,
    fake: FakeOpenAIServer,
    *,
    expect_greeting: str,
    turns: list[tuple[str, str]],
    metrics_port: int | None = None,
    before_exit: Callable[[], None] = lambda: None,
) -> None:
    extra = {"METRICS_PORT": str(metrics_port)} if metrics_port else {}
    console = pexpect.spawn(
        sys.executable,
        [str(AGENT), "console", "--text"],
        cwd=home,
        env=clean_env(home, OPENAI_BASE_URL=fake.base_url, **extra),
        encoding="utf-8",
        codec_errors="replace",  # a redraw cut short by Ctrl-C may end mid-character
        dimensions=(40, 160),
        timeout=90,
    )
    try:
        console.expect("Type to talk to your agent")
        console.expect(expect_greeting)
        for line, reply in turns:
            console.send(line + "\r")
            console.expect(reply)
            console.expect("llm_ttft")  # printed under the reply
            time.sleep(1)  # the console drops keys typed before it is back to listening
        before_exit()
        console.sendcontrol("c")
        console.expect(pexpect.EOF, timeout=60)
    finally:
        console.close(force=True)
    assert console.exitstatus == 0


def companion_requests(fake: FakeOpenAIServer) -> list[dict[str, Any]]:
    """The agent's own LLM requests (not the background summary or extraction)."""
    return [r for r in fake.chat_requests if r["messages"][0]["content"].startswith("You are Companion")]


def test_the_console_greets_answers_remembers_across_runs_and_says_how_the_cache_is(tmp_path: Path) -> None:
    port = free_port()
    scraped: list[str] = []

    def scrape() -> None:
        scraped.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)

    with FakeOpenAIServer(responder=companion) as fake:
        run_console(
            tmp_path,
            fake,
            expect_greeting="lovely to meet you",
            turns=[
                ("Remember that my sister Maya lives in Lisbon", "Saved"),
                ("Hello there", "I heard you say: Hello there"),
            ],
            metrics_port=port,
            before_exit=scrape,
        )
        first_run = len(companion_requests(fake))
        run_console(
            tmp_path,
            fake,
            expect_greeting="Welcome back",
            turns=[
                ("Where does my sister live?", "I heard you say: Where"),
                ("How is the cache doing?", r"hit rate of \d+%"),
            ],
        )
        second_run = companion_requests(fake)[first_run:]
        asked = next(r for r in second_run if "Where does my sister live?" in str(r["messages"][-1]))
        assert MAYA in str([m for m in asked["messages"] if m["role"] == "assistant"])  # the first run's fact, noted
        assert "hits" in tool_results(second_run[-1])[0]

    assert any(line.startswith("companion_llm_ttft_seconds_count 2.0") for line in scraped[0].splitlines())

    async def first_transcript() -> list[str]:
        async with await SqliteStorage.open(tmp_path / "companion.db") as storage:
            return [m.content for m in await storage.recent_messages(DEFAULT_CONSOLE_USER_ID, limit=40)]

    said = asyncio.run(first_transcript())
    assert "Hello there" in said  # stored after Ctrl-C
    assert "Where does my sister live?" in said


def test_the_console_prints_the_greeting_as_an_agent_line_and_keeps_log_records_out_of_the_way(
    tmp_path: Path,
) -> None:
    with FakeOpenAIServer(responder=companion) as fake:
        console = pexpect.spawn(
            sys.executable,
            [str(AGENT), "console", "--text"],
            cwd=tmp_path,
            env=clean_env(tmp_path, OPENAI_BASE_URL=fake.base_url),
            encoding="utf-8",
            codec_errors="replace",
            dimensions=(40, 160),
            timeout=90,
        )
        try:
            console.expect("Type to talk to your agent")
            console.expect("It's lovely to meet you")
            assert re.search(r"\u25cf .*Agent.*Hi there! I'm Companion", console.before, re.S)  # like a reply
            console.send("Hello there\r")
            console.expect("I heard you say: Hello there")
            console.expect("llm_ttft")
            shown = console.before
            time.sleep(1)
            console.sendcontrol("c")
            console.expect(pexpect.EOF, timeout=60)
        finally:
            console.close(force=True)
    assert console.exitstatus == 0
    assert "DEBUG" not in shown  # LiveKit's console defaults to DEBUG; ours to warnings (LIVEKIT_LOG_LEVEL=debug)
    for not_ours in ("LIVEKIT_INFERENCE_URL", "AdaptiveInterruptionDetector", "no warmed process"):
        assert not_ours not in shown
