"""Retrieval benchmark: latency at 100 to 100,000 memories, and quality on a labelled set.

    python bench/rag.py                              latency, and quality on bench/data/companion_v1.json
    python bench/rag.py --dataset PATH [--k 5]       quality on any labelled set of the same shape

A dataset's memories are loaded for a fresh user through the real services (local embedder, SQLite in a temporary
folder), with its ``now`` as the clock. Two engines answer each query: ``cosine`` (plain cosine similarity over the
same embeddings, top k) and ``full`` (rag_system: meaning, words, time, importance, category, MMR, thresholds).
Per engine: ``recall_at_k`` (mean over queries with relevant keys of |relevant ∩ top k| / |relevant|), ``mrr``,
``none_precision`` (share of queries with no relevant key for which nothing at all is returned), and the same per
``kind``. Latency excludes the query embedding (the one remote call when embeddings are remote). Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core.validators import WriteGuard  # noqa: E402
from infrastructure.database_batcher import DatabaseBatcher  # noqa: E402
from infrastructure.embeddings import CachedEmbedder  # noqa: E402
from infrastructure.embeddings.minilm import MiniLMEmbedder  # noqa: E402
from infrastructure.storage.sqlite import SqliteStorage  # noqa: E402
from rag_system import CATEGORIES, IndexedMemory, MemoryIndex, analyze_query  # noqa: E402
from services.memory_service import MemoryService, NewMemory, normalize_key  # noqa: E402
from services.rag_service import RagService  # noqa: E402

DEFAULT_DATASET = REPO / "bench" / "data" / "companion_v1.json"
SIZES = (100, 1_000, 10_000, 100_000)


def parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def evaluate(path: Path, k: int) -> dict[str, Any]:
    data = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
    now = parse_time(data["now"])
    clock = Clock(now)
    embedder = CachedEmbedder(embedder=MiniLMEmbedder.load(), max_entries=4096)
    user = uuid.uuid4()
    with tempfile.TemporaryDirectory() as tmp:
        storage = await SqliteStorage.open(Path(tmp) / "bench.db")
        batcher = DatabaseBatcher(storage=storage)
        batcher.start()
        index = MemoryIndex(dimension=embedder.dimension)
        memories = MemoryService(user_id=user, guard=WriteGuard(user_id=user), storage=storage, batcher=batcher,
                                 embedder=embedder, index=index, clock=clock)  # fmt: skip
        original_key: dict[tuple[str, str], str] = {}
        first, later = [], []
        for item in data["memories"]:
            category = item.get("category", "OTHER").upper()
            category = category if category in CATEGORIES else "OTHER"
            created = parse_time(item.get("created_at") or data["now"])
            updated = parse_time(item.get("updated_at") or item.get("created_at") or data["now"])
            importance = item.get("importance")
            first.append(NewMemory(category, item["key"], item["value"], importance, "import", created))
            if updated != created:
                later.append(NewMemory(category, item["key"], item["value"], importance, "import", updated))
            original_key[(category, normalize_key(item["key"]))] = item["key"]
        await memories.save_many(first)
        await memories.save_many(later)  # updates move updated_at and keep created_at
        rag = RagService(index=index, embedder=embedder, clock=clock)

        engines: dict[str, dict[str, list[float]]] = {"cosine": defaultdict(list), "full": defaultdict(list)}
        for query in data["queries"]:
            relevant = set(query.get("relevant", []))
            kind = query.get("kind", "unlabelled")
            vector = (await embedder.embed([query["text"]]))[0]
            cosine = [original_key[(m.category, m.key)] for m, _ in index.nearest(vector, k=k)]
            found = await rag.search(query["text"], query.get("recent_turns", []), k=k)
            full = [original_key[(r.memory.category, r.memory.key)] for r in found]
            for name, ranked in (("cosine", cosine), ("full", full)):
                _score(engines[name], kind, relevant, ranked)
        await batcher.aclose()
        await storage.aclose()
    return {
        "dataset": data.get("name", path.stem),
        "k": k,
        "memories": len(data["memories"]),
        "queries": len(data["queries"]),
        "engines": {name: _summarise(results) for name, results in engines.items()},
    }


def _score(results: dict[str, list[float]], kind: str, relevant: set[str], ranked: list[str]) -> None:
    if relevant:
        recall = len(relevant & set(ranked)) / len(relevant)
        rank = next((i + 1 for i, key in enumerate(ranked) if key in relevant), None)
        for scope in ("all", kind):
            results[f"recall:{scope}"].append(recall)
            results[f"mrr:{scope}"].append(1.0 / rank if rank else 0.0)
    else:
        for scope in ("all", kind):
            results[f"none:{scope}"].append(1.0 if not ranked else 0.0)


def _summarise(results: dict[str, list[float]]) -> dict[str, Any]:
    def mean(name: str) -> float | None:
        values = results.get(name)
        return round(statistics.fmean(values), 4) if values else None

    kinds = sorted({name.split(":", 1)[1] for name in results} - {"all"})
    return {
        "recall_at_k": mean("recall:all"),
        "mrr": mean("mrr:all"),
        "none_precision": mean("none:all"),
        "by_kind": {
            kind: {
                "recall_at_k": mean(f"recall:{kind}"),
                "mrr": mean(f"mrr:{kind}"),
                "none_precision": mean(f"none:{kind}"),
            }  # fmt: skip
            for kind in kinds
        },
    }


def latency(sizes: tuple[int, ...], *, queries: int = 200) -> dict[str, dict[str, float]]:
    """Search time for one user holding n memories: synthetic unit vectors and sentences, real query analysis."""
    rng = np.random.default_rng(7)
    vocabulary = [f"word{i}" for i in range(5_000)] + [
        "sister",
        "lisbon",
        "job",
        "nurse",
        "coffee",
        "tea",
        "knee",
        "run",
        "marathon",
    ]
    now = dt.datetime(2026, 11, 21, 12, tzinfo=dt.UTC)
    texts = ["where does my sister live", "what do I like to drink", "how is my knee", "what happened last week",
             "tell me about my job", "what did I say about the marathon"]  # fmt: skip
    out = {}
    for n in sizes:
        index = MemoryIndex(dimension=384, capacity=n)
        vectors = rng.standard_normal((n, 384)).astype(np.float32)
        for i in range(n):
            words = " ".join(rng.choice(vocabulary, size=8))
            at = now - dt.timedelta(days=float(rng.uniform(0, 700)))
            memory = IndexedMemory(CATEGORIES[i % len(CATEGORIES)], f"k{i}", words, float(rng.uniform()), at, at)
            index.upsert(memory, vectors[i])
        timings = []
        for j in range(queries):
            # A query near a stored memory, so that candidates pass the thresholds and MMR has work to do.
            query_vector = vectors[rng.integers(n)] + rng.standard_normal(384).astype(np.float32) * 0.5
            started = time.perf_counter()
            analysis = analyze_query(texts[j % len(texts)], ["I went running with my sister"], now=now)
            index.search(analysis, query_vector, now=now, k=5)
            timings.append(time.perf_counter() - started)
        timings.sort()
        out[str(n)] = {
            "p50_ms": round(statistics.median(timings) * 1000, 3),
            "p95_ms": round(timings[int(0.95 * len(timings))] * 1000, 3),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, help="a labelled set; without it: latency and the bundled set")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    if args.dataset is not None:
        print(json.dumps(asyncio.run(evaluate(args.dataset, args.k))))
        return
    result = {"latency": latency(SIZES), "quality": asyncio.run(evaluate(DEFAULT_DATASET, args.k))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
