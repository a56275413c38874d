"""Faults the outbox is for, on a PostgreSQL server of the test's own: SIGKILL after an acknowledged write, a
database down past shutdown, remember during an outage, a full outbox. Real processes, real files, real servers."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from core.config import Settings
from core.errors import OutboxFullError, WriteForbiddenError
from infrastructure.embeddings.minilm import MiniLMEmbedder
from infrastructure.metrics import Metrics
from services.container import open_process, open_session
from tests.agent_process import REPO, clean_env
from tests.fakes.openai_server import FakeOpenAIServer
from tests.faults.servers import OwnPostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

MEMORY = "Her sister Maya lives in Lisbon"
SAID = ["My sister moved to Lisbon.", "That sounds lovely.", "She loves it there."]


@pytest.fixture
def llm() -> Iterator[FakeOpenAIServer]:
    summary = {"summary": "They talked about her sister's move.", "open_threads": ["the visit to Lisbon"]}
    with FakeOpenAIServer(responder=lambda body: json.dumps(summary)) as server:
        yield server


def settings_for(server: OwnPostgresServer, outbox: Path, llm: FakeOpenAIServer, **values: Any) -> Settings:
    return Settings(_env_file=None, database_url=server.dsn, outbox_dir=outbox, openai_base_url=llm.base_url,  # type: ignore[call-arg]
                    llm_model="fake-model", batch_max_delay_ms=5, **values)  # fmt: skip


async def stored_rows(dsn: str, user: uuid.UUID) -> tuple[list[str], list[str], list[asyncpg.Record]]:
    """(memory values, message contents in order, conversations) of ``user``, as the database holds them."""
    conn = await asyncpg.connect(dsn)
    try:
        memories = [r["value"] for r in await conn.fetch("select value from public.memories where user_id = $1", user)]
        messages = [r["content"] for r in await conn.fetch(
            "select content from public.messages where user_id = $1 order by created_at, id", user)]  # fmt: skip
        conversations = await conn.fetch("select * from public.conversations where user_id = $1", user)
    finally:
        await conn.close()
    return memories, messages, conversations


def outbox_rows(folder: Path) -> int:
    total = 0
    for path in folder.glob("outbox-*.db"):
        with sqlite3.connect(path) as db:
            total += db.execute("select count(*) from entries").fetchone()[0]
    return total


async def read_line(child: asyncio.subprocess.Process, prefix: str, *, within: float = 60.0) -> str:
    assert child.stdout is not None
    async with asyncio.timeout(within):
        while True:
            line = (await child.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"the writer exited (code {await child.wait()}) before {prefix}")
            if line.startswith(prefix):
                return line


@pytest.mark.parametrize("database_up", [True, False], ids=["database-up", "database-down"])
async def test_an_acknowledged_write_survives_sigkill_and_is_stored_exactly_once(
    own_postgres: OwnPostgresServer, tmp_path: Path, llm: FakeOpenAIServer, minilm: MiniLMEmbedder, database_up: bool
) -> None:
    user, conversation, outbox = uuid.uuid4(), uuid.uuid4(), tmp_path / "outbox"
    env = clean_env(tmp_path, DATABASE_URL=own_postgres.dsn, OUTBOX_DIR=str(outbox), OPENAI_BASE_URL=llm.base_url,
                    PYTHONPATH=str(REPO), BATCH_MAX_DELAY_MS="5")  # fmt: skip
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.writer", str(user), str(conversation),
        cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await read_line(child, "READY")
        if not database_up:
            own_postgres.stop()
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        ack = await read_line(child, "ACK")
        child.kill()  # SIGKILL, right after the acknowledgement: no close path runs
        assert await child.wait() == -9
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if not database_up:
        assert json.loads(ack.split(" ", 1)[1]) == 4  # the memory and three messages were only in the outbox
        own_postgres.start()

    started = time.monotonic()
    process = await open_process(settings_for(own_postgres, outbox, llm), embedder=minilm)
    await process.batcher.flush(within=30)
    recovered_in = time.monotonic() - started
    memories, messages, conversations = await stored_rows(own_postgres.dsn, user)  # before any close path
    await process.aclose()

    assert memories == [MEMORY]
    assert messages == SAID  # each once, in the order said
    assert [c["id"] for c in conversations] == [conversation]
    assert outbox_rows(outbox) == 0
    assert recovered_in < 20


async def test_messages_and_the_conversation_end_outlive_a_database_down_past_shutdown(
    own_postgres: OwnPostgresServer, tmp_path: Path, llm: FakeOpenAIServer, minilm: MiniLMEmbedder
) -> None:
    user, outbox = uuid.uuid4(), tmp_path / "outbox"
    settings = settings_for(own_postgres, outbox, llm)
    process = await open_process(settings, embedder=minilm, metrics=Metrics(CollectorRegistry()))
    session = await open_session(process, user_id=user, load=False)
    await session.conversations.start()
    own_postgres.stop()
    said = [f"message {n}" for n in range(9)]
    for n, text in enumerate(said):
        session.conversations.log_message("user" if n % 2 == 0 else "assistant", text)
    assert await session.conversations.finish(summary_within=10) is None  # kept, not yet confirmed
    await process.aclose()  # the database is still down when the process ends
    assert process.batcher.stats().kept_for_next_start == 10

    own_postgres.start()
    later = await open_process(settings, embedder=minilm, metrics=Metrics(CollectorRegistry()))
    assert later.batcher.stats().replayed == 10
    await later.batcher.flush(within=30)
    _, messages, [ended] = await stored_rows(own_postgres.dsn, user)
    await later.aclose()

    assert messages == said
    assert ended["id"] == session.conversations.conversation_id
    assert ended["ended_at"] is not None
    assert ended["summary"] == "They talked about her sister's move."
    assert json.loads(ended["open_threads"]) == ["the visit to Lisbon"]


async def test_remember_during_an_outage_answers_at_once_is_recalled_now_and_stored_when_the_database_is_back(
    own_postgres: OwnPostgresServer, tmp_path: Path, llm: FakeOpenAIServer, minilm: MiniLMEmbedder
) -> None:
    user = uuid.uuid4()
    process = await open_process(settings_for(own_postgres, tmp_path / "outbox", llm), embedder=minilm)
    try:
        session = await open_session(process, user_id=user)
        own_postgres.stop()

        started = time.monotonic()
        saved = await session.memories.save_memory("RELATIONSHIP", "sister city", MEMORY)
        assert time.monotonic() - started < 2.0  # not the old 5 s wait ending in "it failed"
        found = await session.rag.recall("Where does my sister live?")
        assert [r.memory.value for r in found] == [MEMORY]

        own_postgres.start()
        await process.batcher.flush(within=30)
        memories, _, _ = await stored_rows(own_postgres.dsn, user)
        assert saved.queued
        assert memories == [saved.memory.value]
    finally:
        await process.aclose()


async def test_a_full_outbox_refuses_remember_and_nothing_is_acknowledged_or_indexed(
    own_postgres: OwnPostgresServer, tmp_path: Path, llm: FakeOpenAIServer, minilm: MiniLMEmbedder
) -> None:
    user = uuid.uuid4()
    settings = settings_for(own_postgres, tmp_path / "outbox", llm, outbox_max_rows=100)
    process = await open_process(settings, embedder=minilm)
    try:
        session = await open_session(process, user_id=user)
        await session.conversations.start()
        own_postgres.stop()
        for n in range(100):
            session.conversations.log_message("user", f"message {n}")
        await process.batcher.durable()

        with pytest.raises(OutboxFullError) as refused:
            await session.memories.save_memory("RELATIONSHIP", "sister city", MEMORY)
        assert refused.value.retryable  # the tool says "try again soon", not "saved"
        assert session.memories.get("RELATIONSHIP", "sister_city") is None
        assert await session.rag.recall("Where does my sister live?") == []

        own_postgres.start()
        await process.batcher.flush(within=30)
    finally:
        await process.aclose()
    memories, messages, _ = await stored_rows(own_postgres.dsn, user)
    assert (memories, len(messages)) == ([], 100)


async def test_a_guest_session_never_reaches_the_outbox(tmp_path: Path, minilm: MiniLMEmbedder) -> None:
    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/companion.db",  # type: ignore[call-arg]
                        outbox_dir=tmp_path / "outbox", openai_base_url="http://127.0.0.1:9/v1")  # fmt: skip
    process = await open_process(settings, embedder=minilm)
    try:
        guest = await open_session(process, user_id=None)
        for text in SAID:
            assert guest.conversations.log_message("user", text) is None
        with pytest.raises(WriteForbiddenError):
            await guest.memories.save_memory("RELATIONSHIP", "sister city", MEMORY)
        assert await guest.conversations.finish(summary_within=1) is None
        await process.batcher.durable()
        assert process.outbox.stats().rows == 0
        assert outbox_rows(tmp_path / "outbox") == 0
    finally:
        await process.aclose()
