"""An inspector served over a real process of services (SQLite), and a client that speaks to its JSON API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from core.config import Settings
from inspector.server import serve
from services.container import Process, Session, open_process, open_session

OPERATOR_TOKEN = "operator-token-for-tests-0123456789"


def inspector_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path}/companion.db",
        "openai_base_url": "http://127.0.0.1:9/v1",  # nothing listens: the inspector makes no LLM call
        "inspector_token": OPERATOR_TOKEN,
        "inspector_rate_limit_per_minute": 10_000,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@dataclass
class Served:
    url: str
    process: Process
    api: httpx.AsyncClient  # with the operator's token

    async def session_of(self, user: uuid.UUID) -> Session:
        """A session of the agent's services for ``user``, as a live conversation would hold."""
        return await open_session(self.process, user_id=user)


@pytest.fixture
async def process(tmp_path: Path) -> AsyncIterator[Process]:
    process = await open_process(inspector_settings(tmp_path))
    yield process
    await process.aclose()


@pytest.fixture
async def served(tmp_path: Path, process: Process) -> AsyncIterator[Served]:
    async with serve(process.settings, host="127.0.0.1", port=0, process=process) as url:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as api:
            yield Served(url, process, api)
