"""The local embedder: offline, torch-free, equal to sentence-transformers, and meaningful."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import openai
import pytest

from core.config import Settings
from core.errors import EmbeddingError
from infrastructure.embeddings import CachedEmbedder, open_embedder
from infrastructure.embeddings.minilm import MiniLMEmbedder
from infrastructure.embeddings.openai_embedder import OpenAIEmbedder
from tests.fakes.openai_server import FakeOpenAIServer
from tests.net import free_port

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder.load()


def test_it_loads_with_no_network_and_without_torch(tmp_path: Path) -> None:
    # A fresh interpreter with the hub switched off and torch made unimportable: loading must not care.
    script = (
        "import sys; sys.modules['torch'] = None; sys.modules['sentence_transformers'] = None\n"
        "from infrastructure.embeddings.minilm import MiniLMEmbedder\n"
        "v = MiniLMEmbedder.load().encode(['hello'])\n"
        "print(v.shape, 'torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path), "PYTHONPATH": str(FIXTURE.parents[2])}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(1, 384) False"


def test_vectors_equal_the_sentence_transformers_reference(embedder: MiniLMEmbedder) -> None:
    reference = json.loads(FIXTURE.read_text())
    expected = np.array(reference["vectors"], dtype=np.float32)

    batched = embedder.encode(reference["sentences"])  # padded batch, incl. an empty and a >256-token text
    chunked = embedder.encode(reference["sentences"] * 3)  # past one chunk: sorted by length, then put back
    one_by_one = np.stack([embedder.encode([s])[0] for s in reference["sentences"]])

    np.testing.assert_allclose(batched, expected, atol=1e-5)
    np.testing.assert_allclose(chunked, np.concatenate([expected] * 3), atol=1e-5)
    np.testing.assert_allclose(one_by_one, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_related_sentences_score_higher_than_unrelated_ones(embedder: MiniLMEmbedder) -> None:
    fact, question, unrelated = embedder.encode(
        ["My sister Maya lives in Lisbon.", "Where does my sister live?", "The quarterly report is due on Friday."]
    )
    assert float(fact @ question) > float(fact @ unrelated) + 0.3


async def test_repeated_texts_are_served_from_the_cache(embedder: MiniLMEmbedder) -> None:
    cached = CachedEmbedder(embedder=embedder, max_entries=2)
    first = await cached.embed(["a walk in the park", "coffee with Sam"])
    again = await cached.embed(["coffee with Sam"])
    np.testing.assert_array_equal(again[0], first[1])
    again[0][:] = 0.0  # a caller scribbling on its result does not change the cache
    np.testing.assert_array_equal((await cached.embed(["coffee with Sam"]))[0], first[1])
    assert (cached.stats.hits, cached.stats.misses) == (2, 2)

    await cached.embed(["something new"])  # evicts the least recently used: "a walk in the park"
    await cached.embed(["coffee with Sam"])
    await cached.embed(["a walk in the park"])
    assert (cached.stats.hits, cached.stats.misses) == (3, 4)


async def test_the_openai_provider_returns_unit_vectors_in_input_order_at_our_dimension(tmp_path: Path) -> None:
    with FakeOpenAIServer() as fake:
        settings = Settings(_env_file=None, embedding_provider="openai", openai_base_url=fake.base_url)  # type: ignore[call-arg]
        client = openai.AsyncOpenAI(api_key="test", base_url=fake.base_url)
        embedder = await open_embedder(settings, openai_client=client)
        try:
            vectors = await embedder.embed(["first", "second", "first"])
        finally:
            await client.close()

    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    [request] = fake.embedding_requests  # the repeated text was asked for once
    assert (request["model"], request["dimensions"], request["input"]) == (
        "text-embedding-3-small",
        384,
        ["first", "second"],
    )


async def test_an_unreachable_provider_is_a_retryable_embedding_error() -> None:
    client = openai.AsyncOpenAI(api_key="test", base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=0)
    try:
        with pytest.raises(EmbeddingError) as caught:
            await OpenAIEmbedder(client=client).embed(["hello"])
    finally:
        await client.close()
    assert caught.value.retryable


async def test_the_local_provider_is_the_default(tmp_path: Path) -> None:
    embedder = await open_embedder(Settings(_env_file=None))  # type: ignore[call-arg]
    assert (embedder.name, embedder.dimension) == ("local", 384)
    assert (await embedder.embed_one("hello")).shape == (384,)


async def test_concurrent_calls_that_evict_each_other_all_get_their_vectors(embedder: MiniLMEmbedder) -> None:
    cached = CachedEmbedder(embedder=embedder, max_entries=1)
    texts = [f"sentence number {n}" for n in range(6)]
    results = await asyncio.gather(*(cached.embed([t, texts[0]]) for t in texts))
    direct = embedder.encode(texts)
    for text_index, matrix in enumerate(results):
        np.testing.assert_allclose(matrix[0], direct[text_index], atol=1e-5)
        np.testing.assert_allclose(matrix[1], direct[0], atol=1e-5)


def test_the_committed_graph_is_what_the_builder_builds() -> None:
    from infrastructure.embeddings import minilm_graph

    assert minilm_graph.GRAPH_PATH.read_bytes() == minilm_graph.build(), (
        "run python -m infrastructure.embeddings.minilm_graph and commit minilm.onnx"
    )
