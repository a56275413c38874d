"""Fixtures of the fault tests: a PostgreSQL server of the test's own, the local embedder loaded once, and a job
process's services on SQLite talking to the module's ``fake`` OpenAI-compatible server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.config import Settings
from infrastructure.embeddings.minilm import MiniLMEmbedder
from services.container import Process, open_process
from tests.fakes.openai_server import FakeOpenAIServer
from tests.faults.servers import OwnPostgresServer


@pytest.fixture
async def process(tmp_path: Path, fake: FakeOpenAIServer) -> AsyncIterator[Process]:
    """``fake``: each module's own fixture, scripted for what it tests."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{tmp_path}/companion.db",
        openai_base_url=fake.base_url,
        batch_max_delay_ms=5,
        llm_model="fake-model",
        retrieval_deadline_ms=2_000,  # a busy test machine must not turn a test of memories into a deadline miss
    )
    process = await open_process(settings)
    yield process
    await process.aclose()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgresServer]:
    server = OwnPostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder.load()
