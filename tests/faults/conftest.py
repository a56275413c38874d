"""Fixtures of the fault tests: a PostgreSQL server of the test's own, and the local embedder loaded once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infrastructure.embeddings.minilm import MiniLMEmbedder
from tests.faults.servers import OwnPostgresServer


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
