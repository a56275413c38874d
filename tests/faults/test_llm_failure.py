"""When no language model answers, the user hears a short apology soon after, and the session goes on; the
services' own calls move to the fallback provider."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from livekit.agents import AgentSession
from livekit.plugins import openai

from agent import APOLOGY, SESSION_CONNECT_OPTIONS, finish_companion, start_companion
from core.config import Settings
from services.container import Process, open_process, open_session
from tests.fakes.openai_server import FakeOpenAIServer
from tests.net import free_port


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def replies(session: AgentSession) -> list[str]:
    return [i.text_content or "" for i in session.history.items if getattr(i, "role", None) == "assistant"]


@pytest.mark.parametrize("failure", ["dead port", "500", "429", "malformed", "stall"])
async def test_the_user_hears_an_apology_when_the_llm_fails_and_the_session_goes_on(
    process: Process, fake: FakeOpenAIServer, failure: str
) -> None:
    services = await open_session(process, user_id=uuid.uuid4())
    dead = f"http://127.0.0.1:{free_port()}/v1"
    # The agent's own provider settings: no SDK retries, the 5 s read timeout, LiveKit retrying once.
    model = openai.LLM(model="fake", base_url=dead if failure == "dead port" else fake.base_url, api_key="x",
                       timeout=5.0, max_retries=0)  # fmt: skip
    session = AgentSession(llm=model, conn_options=SESSION_CONNECT_OPTIONS)
    await start_companion(session, process=process, services=services)
    fake.chat_failure = None if failure == "dead port" else failure
    started = time.perf_counter()
    await session.run(user_input="How are you today?")
    waited = time.perf_counter() - started
    assert replies(session)[-1] == APOLOGY
    # Within 2 s of the failure: at once for a refusal, after the 5 s read timeout for a stalled server.
    assert waited < (5.0 + 2.0 if failure == "stall" else 2.0)

    fake.chat_failure = None  # the provider is back: the next turn is answered, the session never closed
    await session.run(user_input="Hello again")
    assert replies(session)[-1] == (APOLOGY if failure == "dead port" else "I heard you say: Hello again")
    await finish_companion(process=process, services=services, session=session)
    await model.aclose()


async def test_a_failing_llm_never_closes_the_session_however_often_it_fails(
    process: Process, fake: FakeOpenAIServer
) -> None:
    services = await open_session(process, user_id=uuid.uuid4())
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x", max_retries=0)
    session = AgentSession(llm=model, conn_options=SESSION_CONNECT_OPTIONS)
    closed: list[object] = []
    session.on("close", closed.append)
    await start_companion(session, process=process, services=services)
    fake.chat_failure = "500"
    for turn in range(6):  # LiveKit closes a session after 3 unrecoverable errors in a row with nothing said
        await session.run(user_input=f"Are you there? ({turn})")
    assert replies(session)[-6:] == [APOLOGY] * 6
    assert closed == []
    await session.aclose()
    await model.aclose()


async def test_the_services_own_calls_use_the_fallback_provider(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    answer = '{"summary": "A new job at the bakery.", "open_threads": ["the new job"]}'
    with FakeOpenAIServer(responder=lambda body: answer) as fallback:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=f"sqlite:///{tmp_path}/companion.db",
            openai_base_url=fake.base_url,
            llm_model="primary-model",
            fallback_llm_base_url=fallback.base_url,
            fallback_llm_model="fallback-model",
        )
        fake.chat_failure = "500"
        async with await open_process(settings) as process:
            services = await open_session(process, user_id=uuid.uuid4())
            await services.users.ensure_profile_exists()
            services.conversations.log_message("user", "I start my new job at the bakery on Monday")
            summary, threads = await services.conversations._summarise()
        assert [r["model"] for r in fallback.chat_requests] == ["fallback-model"]
        assert (summary, threads) == ("A new job at the bakery.", ["the new job"])


async def test_a_malformed_reply_at_session_end_is_dropped_not_raised(process: Process, fake: FakeOpenAIServer) -> None:
    services = await open_session(process, user_id=uuid.uuid4())
    await services.users.ensure_profile_exists()
    await services.conversations.start()
    services.conversations.log_message("user", "I start my new job at the bakery on Monday")
    fake.chat_failure = "malformed"
    await finish_companion(process=process, services=services)  # the summary and the profile fail; nothing raises
    async with await open_process(process.settings) as later:
        [conversation] = await later.storage.recent_conversations(services.user_id)
    assert conversation.ended_at is not None
    assert conversation.summary is None
