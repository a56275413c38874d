"""The dev console, driven under a pseudo-terminal as a person would use it."""

from __future__ import annotations

import sys
from pathlib import Path

import pexpect
import pytest

from tests.agent_process import AGENT, clean_env
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = [pytest.mark.console, pytest.mark.slow]


def test_the_console_reaches_its_prompt_and_answers_a_typed_line(tmp_path: Path) -> None:
    with FakeOpenAIServer(replies={"Hello there": "Hi! Lovely to meet you."}) as fake:
        env = clean_env(tmp_path, OPENAI_BASE_URL=fake.base_url)
        console = pexpect.spawn(
            sys.executable,
            [str(AGENT), "console", "--text"],
            cwd=tmp_path,
            env=env,
            encoding="utf-8",
            dimensions=(40, 140),
            timeout=90,
        )
        try:
            console.expect("Type to talk to your agent")
            console.send("Hello there\r")
            console.expect("Lovely to meet you")
            console.sendcontrol("c")
            console.expect(pexpect.EOF, timeout=60)
        finally:
            console.close(force=True)

    assert console.exitstatus == 0
    assert fake.user_messages() == ["Hello there"]
    [request] = fake.chat_requests
    assert request["messages"][0]["role"] in ("system", "developer")
    assert "Companion" in request["messages"][0]["content"]
