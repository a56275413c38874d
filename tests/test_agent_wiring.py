"""How agent.py wires a job process: what prewarm loads before a job arrives, and what a session is built from."""

from __future__ import annotations

import inspect
import types
from pathlib import Path

import pytest
from livekit.agents import llm
from livekit.plugins import silero

import agent
from core.config import Settings, get_settings
from infrastructure.embeddings.minilm import MiniLMEmbedder
from services.container import open_process


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in ("EMBEDDING_PROVIDER", "DATABASE_URL", "OPENAI_BASE_URL", "FALLBACK_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


async def test_prewarm_loads_the_models_and_the_job_reuses_them(fresh_settings: None, tmp_path: Path) -> None:
    proc = types.SimpleNamespace(userdata={})
    agent.prewarm(proc)  # type: ignore[arg-type]
    assert isinstance(proc.userdata["vad"], silero.VAD)
    preloaded = proc.userdata["embedder"]
    assert isinstance(preloaded, MiniLMEmbedder)

    settings = Settings(_env_file=None, database_url=f"sqlite:///{tmp_path}/c.db")  # type: ignore[call-arg]
    process = await open_process(settings, embedder=preloaded)
    try:
        assert process.embedder._inner is preloaded  # the job did not load the model again
        assert (await process.embedder.embed(["hello"])).shape == (1, 384)
    finally:
        await process.aclose()


async def test_providers_share_the_pooled_client_and_add_the_fallback_llm_when_configured(tmp_path: Path) -> None:
    base = {"_env_file": None, "database_url": f"sqlite:///{tmp_path}/c.db", "openai_base_url": "http://127.0.0.1:9/v1"}
    alone = Settings(**base)  # type: ignore[arg-type]
    both = Settings(**base, fallback_llm_base_url="http://127.0.0.1:8/v1", fallback_llm_model="m")  # type: ignore[arg-type]
    process = await open_process(alone)
    try:
        pooled = process.clients.openai
        single = agent.build_providers(alone, client=pooled)
        double = agent.build_providers(both, client=pooled)
        assert not isinstance(single.llm, llm.FallbackAdapter)
        assert isinstance(double.llm, llm.FallbackAdapter)
        assert len(double.language_models) == 2
        # Same HTTP connections as the rest of the process: a session opens no pool of its own.
        assert single.stt._client._client is pooled._client
        for providers in (single, double):
            await providers.aclose()
        assert not pooled._client.is_closed  # the process owns it, and closes it
    finally:
        await process.aclose()
    assert pooled._client.is_closed


def test_the_companion_gets_the_few_collaborators_it_calls_by_keyword_not_the_object_graph() -> None:
    parameters = inspect.signature(agent.Companion.__init__).parameters
    given = {name: p for name, p in parameters.items() if name != "self"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in given.values())
    assert set(given) == {"persona", "profile", "turns", "scrubber", "tasks", "tools"}
    annotations = " ".join(str(p.annotation) for p in given.values())
    assert "Session" not in annotations.replace("SessionTurns", "")
    assert "Process" not in annotations
