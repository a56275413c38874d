"""The local embedder: offline, torch-free, equal to sentence-transformers, and meaningful."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from infrastructure.embeddings import CachedEmbedder
from infrastructure.embeddings.minilm import MiniLMEmbedder

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
    one_by_one = np.stack([embedder.encode([s])[0] for s in reference["sentences"]])

    np.testing.assert_allclose(batched, expected, atol=1e-5)
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
