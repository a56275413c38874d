"""One metrics system: /metrics, scraped over HTTP, carries the batcher, cache, storage and retrieval series, and the
health tools say the same numbers. A real session (text mode) on SQLite and a redis-server of the test's own."""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from livekit.agents import AgentSession
from livekit.plugins import openai
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent import start_companion
from core.config import Settings
from infrastructure.metrics import Metrics
from infrastructure.metrics_server import MetricsServer
from services.container import open_process, open_session
from tests.fakes.openai_server import FakeOpenAIServer, ToolCall, tool_results
from tests.redis_servers import OwnRedisServer

POISON = "a value the database refuses"
SCRIPT = {
    "Remember I love jazz": ToolCall("remember", {"category": "PREFERENCE", "key": "music", "value": "Loves jazz"}),
    "Remember the poison": ToolCall("remember", {"category": "OTHER", "key": "poison", "value": POISON}),
    "How is batching?": ToolCall("getDatabaseBatchStats"),
    "How is the cache doing?": ToolCall("getRedisCacheStats"),
    "How many memories?": ToolCall("getMemoryStats"),
    "How is the pool?": ToolCall("getConnectionPoolStats"),
}


class ScrapingBrain:
    """Scripts the fake LLM; when a health tool's answer comes back, scrapes /metrics right then, while the agent
    waits for this reply and nothing else can move the numbers."""

    def __init__(self) -> None:
        self.metrics_url = ""
        self.answers: dict[str, tuple[str, dict[tuple[str, frozenset], float]]] = {}

    def __call__(self, body: dict[str, Any]) -> str | ToolCall | None:
        if not body["messages"][0]["content"].startswith("You are Companion"):
            system = body["messages"][0]["content"]
            return '{"memories": []}' if "JSON" in system else "A profile."
        said = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        results = tool_results(body)
        if results:
            self.answers[said] = (results[0], scrape(self.metrics_url))
            return "Done."
        return SCRIPT.get(said)


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def numbers(text: str) -> list[float]:
    return [float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)]


@pytest.fixture
def brain() -> ScrapingBrain:
    return ScrapingBrain()


@pytest.fixture
def fake(brain: ScrapingBrain) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(responder=brain) as server:
        yield server


async def test_metrics_carry_every_series_and_the_health_tools_say_the_scraped_numbers(
    tmp_path: Path, fake: FakeOpenAIServer, brain: ScrapingBrain, own_redis: OwnRedisServer
) -> None:
    database = tmp_path / "companion.db"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite:///{database}",
        openai_base_url=fake.base_url,
        redis_url=own_redis.url,
        batch_max_delay_ms=5_000,  # nothing flushes between a tool's answer and the scrape but what a turn asks
        retrieval_deadline_ms=2_000,
    )
    metrics = Metrics(CollectorRegistry())  # this test's process alone, as a job process has its own
    server = MetricsServer.start(port=0, host="127.0.0.1", registry=metrics.registry)
    brain.metrics_url = f"http://127.0.0.1:{server.port}/metrics"
    process = await open_process(settings, metrics=metrics)
    model = openai.LLM(model="fake", base_url=fake.base_url, api_key="x")
    session = AgentSession(llm=model)
    try:
        services = await open_session(process, user_id=uuid.uuid4())
        await start_companion(session, process=process, services=services)
        refuse = sqlite3.connect(database, isolation_level=None)
        refuse.execute(
            f"create trigger refuse before insert on memories when new.value = '{POISON}' "
            "begin select raise(abort, 'refused'); end"
        )
        refuse.close()
        for line in ("Remember I love jazz", "Remember the poison"):
            await session.run(user_input=line)
        await process.batcher.flush()  # the transcript so far (a remembered memory is written directly, unbatched)
        for line in list(SCRIPT)[2:]:
            await session.run(user_input=line)

        text, seen = brain.answers["How is batching?"]
        for name in ("writes", "statements", "failures", "retries"):
            assert total(seen, f"companion_batcher_{name}_total") in numbers(text), name
        # remember writes one memory directly (a compare-and-set, services/user_memory.py), not through the batcher
        assert total(seen, "companion_storage_errors_total", operation="save_memory_if", retryable="false") == 1
        assert f"refused {total(seen, 'companion_storage_errors_total'):.0f} calls" in text
        assert f"{total(seen, 'companion_batcher_queue_depth'):.0f} waiting" in text
        flushes = total(seen, "companion_batcher_flush_seconds_count")
        assert flushes >= 1
        assert f"{total(seen, 'companion_batcher_flush_seconds_sum') / flushes * 1000:.1f} milliseconds" in text

        text, seen = brain.answers["How is the cache doing?"]
        hits, misses = total(seen, "companion_cache_hits_total"), total(seen, "companion_cache_misses_total")
        assert hits + misses >= 1  # the session start read the profile through the cache
        assert f"({hits:.0f} hits, {misses:.0f} misses)" in text
        assert total(seen, "companion_cache_primary_available") == 1
        assert text.startswith("The cache is in redis mode")

        text, seen = brain.answers["How many memories?"]
        turns = total(seen, "companion_retrieval_turns_total")
        assert turns >= 4  # every reply before this one
        assert f"Retrieval ran for {turns:.0f} replies" in text
        assert f"missed its deadline {total(seen, 'companion_retrieval_deadline_misses_total'):.0f} times" in text

        text, seen = brain.answers["How is the pool?"]
        assert total(seen, "companion_client_up", client="redis") == 1
        assert "redis: healthy" in text
    finally:
        await session.aclose()
        await model.aclose()
        await process.aclose()
        server.close()
