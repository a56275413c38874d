"""The database is the truth; the cache only remembers it. Faults injected into a Redis of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from livekit.agents import AgentSession
from livekit.plugins import openai

from agent import finish_companion, start_companion
from core.config import Settings
from services.container import open_process, open_session
from tests.fakes.openai_server import FakeOpenAIServer
from tests.net import free_port
from tests.redis_servers import OwnRedisServer
from tests.waiting import eventually

PIN = "4821"


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(replies={}) as server:
        yield server


def settings_for(tmp_path: Path, redis_url: str, fake: FakeOpenAIServer) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/companion.db",
        openai_base_url=fake.base_url,
        redis_url=redis_url,
        batch_max_delay_ms=5,
        llm_model="fake-model",
    )


async def remember_dave_then_forget_everything(settings: Settings, user: uuid.UUID, before_forget) -> None:
    async with await open_process(settings) as process:
        services = await open_session(process, user_id=user)
        await services.users.update_profile(name="Dave", summary=f"Dave's bank PIN is {PIN}.")
        assert (await services.users.get_profile()).name == "Dave"  # type: ignore[union-attr]  (cached now)
        await before_forget()
        await services.forget_everything()
        assert await services.users.get_profile() is None


async def next_session_requests(settings: Settings, user: uuid.UUID, fake: FakeOpenAIServer) -> str:
    """A whole next session of the same user, as the agent runs it: everything it sent the LLM, as text."""
    async with await open_process(settings) as process:
        assert process.cache.mode == "redis"
        services = await open_session(process, user_id=user)
        assert await services.users.get_profile() is None
        model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
        session = AgentSession(llm=model)
        greeting: list[str] = []
        session.on("conversation_item_added", lambda e: greeting.append(e.item.text_content or ""))
        await start_companion(session, process=process, services=services)
        await session.run(user_input="Do you know my name?")
        await finish_companion(process=process, services=services, session=session)
        await model.aclose()
        assert not any("Dave" in line for line in greeting)
    return repr(fake.chat_requests)


async def test_a_redis_restored_from_an_old_snapshot_never_brings_back_what_was_forgotten(
    tmp_path: Path, own_redis: OwnRedisServer, fake: FakeOpenAIServer
) -> None:
    settings, user = settings_for(tmp_path, own_redis.url, fake), uuid.uuid4()

    async def snapshot() -> None:
        client = aioredis.from_url(own_redis.url)
        await client.save()  # dump.rdb now holds the cached profile
        await client.aclose()

    await remember_dave_then_forget_everything(settings, user, snapshot)
    own_redis.stop()
    own_redis.start()  # from the snapshot taken before the forget: the old entry and version key are back

    requests = await next_session_requests(settings, user, fake)
    assert PIN not in requests
    assert "Dave" not in requests
    async with await open_process(settings) as process:  # the end-of-session refresh did not write it back
        profile = await process.storage.get_profile(user)
        assert profile is None or PIN not in (profile.summary or "")


async def test_a_read_only_replica_never_serves_what_was_forgotten(
    tmp_path: Path, own_redis: OwnRedisServer, fake: FakeOpenAIServer
) -> None:
    settings, user = settings_for(tmp_path, own_redis.url, fake), uuid.uuid4()
    client = aioredis.from_url(own_redis.url)

    async def fail_over_to_a_replica() -> None:
        # A replica of a primary that is gone: it keeps its data and refuses every write.
        await client.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

    try:
        await remember_dave_then_forget_everything(settings, user, fail_over_to_a_replica)
        async with await open_process(settings) as process:  # another worker, on the same replica
            services = await open_session(process, user_id=user)
            assert await services.users.get_profile() is None
            await services.users.update_profile(name="Sam")  # the refused cache write is an outage, not an error
            assert (await services.users.get_profile()).name == "Sam"  # type: ignore[union-attr]
            assert process.cache.mode == "memory"
            await client.execute_command("REPLICAOF", "NO", "ONE")  # promoted: the cache trusts Redis again
            await eventually(lambda: process.cache.mode == "redis")
            assert (await services.users.get_profile()).name == "Sam"  # type: ignore[union-attr]
    finally:
        await client.aclose()
