"""No user text in the logs, at any level, unless LOG_USER_TEXT=true: LiveKit's own log calls, triggered for real.

An AgentSession in text mode talks to the local OpenAI-compatible fake, which answers with the tool calls a model
gets wrong: malformed JSON arguments (LiveKit repairs them and logs a WARNING with the raw text, then an ERROR with
the arguments when they do not fit the tool) and a tool that raises with the user's words in its message (an ERROR
with the arguments and the traceback). What the user said is logged at DEBUG (``conversation_item_added``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from livekit.agents import Agent, AgentSession, RunContext, function_tool
from livekit.plugins import openai

from core.config import load_settings
from core.errors import StorageError
from core.log_filters import (
    ASYNCPG_POOL_OUTAGE,
    HIDDEN,
    LIVEKIT_LOGGERS,
    NOT_FOR_US,
    NotForUsFilter,
    OnePerOutage,
    UserTextFilter,
    install,
)
from infrastructure.storage.postgres import PostgresStorage
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


class Cable:
    """A TCP relay between the pool and PostgreSQL that the test can cut: the database becomes unreachable for this
    pool alone (the shared server keeps running for everyone else)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def __aenter__(self) -> Cable:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cut()

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for writer in self._writers:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


@pytest.mark.postgres
async def test_asyncpg_logs_one_line_per_outage_not_a_traceback_per_retry(
    caplog: pytest.LogCaptureFixture, empty_database: str
) -> None:
    install(allow_user_text=lambda: False)
    caplog.set_level(logging.DEBUG, logger="asyncpg")
    parts = urlsplit(empty_database)
    async with Cable(parts.hostname or "127.0.0.1", parts.port or 5432) as cable:
        netloc = f"{parts.username}:{parts.password}@127.0.0.1:{cable.port}"
        storage = await PostgresStorage.open(urlunsplit(parts._replace(netloc=netloc)), migrate=False)
        try:
            await storage.ping()
            await cable.cut()
            with pytest.raises(StorageError):  # the connection the pool held is gone
                await storage.ping()
            await asyncio.sleep(3.5)  # asyncpg retries the connection the pool lost after 1 s, 2 s more, ...
        finally:
            await storage.aclose()

    from_asyncpg = [r for r in caplog.records if r.name.startswith("asyncpg")]
    assert [r.getMessage() for r in from_asyncpg] == [ASYNCPG_POOL_OUTAGE]
    assert from_asyncpg[0].exc_info is None
    assert from_asyncpg[0].exc_text is None
    assert from_asyncpg[0].error == "ConnectionRefusedError"
    outage = next(f for f in logging.getLogger("asyncpg.pool").filters if isinstance(f, OnePerOutage))
    assert outage.dropped >= 1  # the retries did happen, and were not logged
