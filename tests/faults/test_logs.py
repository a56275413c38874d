"""No user text in the logs, at any level, unless LOG_USER_TEXT=true: LiveKit's own log calls, triggered for real.

An AgentSession in text mode talks to the local OpenAI-compatible fake, which answers with the tool calls a model
gets wrong: malformed JSON arguments (LiveKit repairs them and logs a WARNING with the raw text, then an ERROR with
the arguments when they do not fit the tool) and a tool that raises with the user's words in its message (an ERROR
with the arguments and the traceback). What the user said is logged at DEBUG (``conversation_item_added``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, RunContext, function_tool
from livekit.plugins import openai

from core.config import load_settings
from core.log_filters import HIDDEN, LIVEKIT_LOGGERS, NOT_FOR_US, NotForUsFilter, UserTextFilter, install
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results

SAID = "my locker code is SAID-4417"
MALFORMED = '{"category": "RELATIONSHIP", "value": "ARG-Maya-in-Lisbon"'  # no closing brace, no "key"
RAISES_WITH = "ARG-the-blue-door"


class Recorder(Agent):
    def __init__(self) -> None:
        super().__init__(instructions="You remember things.")

    @function_tool
    async def remember(self, context: RunContext, category: str, key: str, value: str) -> str:
        """Store a fact."""
        return "Saved."

    @function_tool
    async def note(self, context: RunContext, value: str) -> str:
        """Keep a note."""
        raise RuntimeError(f"could not keep {value}")  # a library error quoting its input


def model(body: dict[str, Any]) -> str | ToolCall | None:
    if tool_results(body):
        return "Sorry, that did not work."
    return ToolCall("remember", MALFORMED) if len(body["messages"]) < 4 else ToolCall("note", {"value": RAISES_WITH})


@pytest.fixture
def filters_from_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """Fresh filters on LiveKit's loggers that read LOG_USER_TEXT as the agent does; the previous ones come back."""
    saved = {name: list(logging.getLogger(name).filters) for name in LIVEKIT_LOGGERS}

    def use(log_user_text: bool) -> None:
        monkeypatch.setenv("LOG_USER_TEXT", "true" if log_user_text else "false")
        for name in LIVEKIT_LOGGERS:
            for old in list(logging.getLogger(name).filters):
                if isinstance(old, UserTextFilter | NotForUsFilter):
                    logging.getLogger(name).removeFilter(old)
        install(allow_user_text=lambda: load_settings(env_file=None).log_user_text)

    yield use
    for name, filters in saved.items():
        logging.getLogger(name).filters[:] = filters


async def talk(caplog: pytest.LogCaptureFixture) -> str:
    """Two turns through LiveKit; everything logged, as a log file would hold it (messages, fields, tracebacks)."""
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIServer(responder=model) as fake:
        llm = openai.LLM(model="test", base_url=fake.base_url, api_key="x")
        async with AgentSession(llm=llm) as session:
            await session.start(Recorder())
            await session.run(user_input=SAID)
            await session.run(user_input="and keep a note please")
        await llm.aclose()
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(f"{formatter.format(r)} {vars(r)}" for r in caplog.records)


async def test_user_text_and_tool_arguments_are_hidden_at_every_level(
    caplog: pytest.LogCaptureFixture, filters_from_settings: Callable[[bool], None]
) -> None:
    filters_from_settings(False)
    logged = await talk(caplog)

    # LiveKit's own paths ran: the repaired JSON, the refused arguments, the raising tool, the DEBUG transcript
    assert "WARNING livekit.agents repaired malformed function-call JSON arguments" in logged
    assert "ERROR livekit.agents error parsing arguments for `remember`" in logged
    assert "ERROR livekit.agents exception occurred while executing tool" in logged
    assert "conversation_item_added" in logged
    assert "RuntimeError" in logged  # the traceback stays, its message does not
    for secret in ("SAID-4417", "ARG-Maya-in-Lisbon", "ARG-the-blue-door"):
        assert secret not in logged
    assert HIDDEN in logged


async def test_log_user_text_true_lets_them_through(
    caplog: pytest.LogCaptureFixture, filters_from_settings: Callable[[bool], None]
) -> None:
    filters_from_settings(True)
    logged = await talk(caplog)

    for secret in ("SAID-4417", "ARG-Maya-in-Lisbon", "ARG-the-blue-door"):
        assert secret in logged
    assert HIDDEN not in logged


def test_livekit_warnings_about_features_companion_does_not_use_are_dropped(
    caplog: pytest.LogCaptureFixture, filters_from_settings: Callable[[bool], None]
) -> None:
    filters_from_settings(False)
    caplog.set_level(logging.DEBUG)
    livekit = logging.getLogger("livekit.agents")
    livekit.warning("LIVEKIT_INFERENCE_URL is set but %s missing; falling back", "LIVEKIT_API_KEY")
    livekit.warning("failed to create AdaptiveInterruptionDetector", extra={"error": "no credentials"})
    livekit.warning("failed to connect to livekit, retrying in 2s")

    assert [r.getMessage() for r in caplog.records] == ["failed to connect to livekit, retrying in 2s"]
    assert len(NOT_FOR_US) == 2


def test_the_agent_installs_the_filters_when_imported() -> None:
    import agent  # noqa: F401 (imported for its logging set-up, as each job process does)

    for name in LIVEKIT_LOGGERS:
        assert any(isinstance(f, UserTextFilter) for f in logging.getLogger(name).filters), name
