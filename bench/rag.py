"""Retrieval benchmark: four engines on labelled sets, and search latency on an index grown from real sentences.

    python bench/rag.py                                   every set in bench/data, and the latency table
    python bench/rag.py --dataset PATH [PATH ...] [--k 5]  the given sets (files or folders), pooled
    python bench/rag.py --locomo LOCOMO_JSON               also LoCoMo's dev and test halves (bench/locomo.py)

A set's memories are loaded for a fresh user through the real services (local embedder, SQLite in a temporary
folder), with the set's ``now`` as the clock. Four engines answer each query, each returning at most k keys:
- ``cosine``: cosine similarity of the query's embedding to each memory's, top k;
- ``bm25``: Okapi BM25 (k1 1.2, b 0.75) over the engine's own terms (rag_system.text), top k of those sharing one;
- ``hybrid``: reciprocal-rank fusion (k = 60) of the two rankings above, top k;
- ``full``: ours (rag_system through RagService): both rankers standardised and mixed, time phrases, earlier
  turns when the query points back, small priors, and the relevance gate, which may return nothing.
Per engine: ``recall_at_k`` (mean over queries with relevant keys of |relevant ∩ returned| / |relevant|), ``mrr``,
``none_precision`` (share of queries with no relevant key for which nothing is returned) and the same per
``kind``. ``gate`` says what the relevance gate costs: ``full``'s recall without it, and how often it let nothing
through for a query that had an answer. Pooled sets weigh each query the same. Prints one JSON object.

Latency: an index grown to 1,000, 10,000 and 100,000 memories by repeating real sentences (the bundled sets'
memories, or LoCoMo's turns with --locomo) with their real embeddings and terms, searched with the sets' real
queries: p50/p95 of the search alone (query analysis and ranking) and with the local embedding of the query.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench.locomo import DEV as LOCOMO_DEV  # noqa: E402
from bench.locomo import convert as convert_locomo  # noqa: E402
from core.categories import MemoryCategory  # noqa: E402
from core.validators import WriteGuard, normalize_key  # noqa: E402
from infrastructure.database_batcher import DatabaseBatcher  # noqa: E402
from infrastructure.embeddings import CachedEmbedder  # noqa: E402
from infrastructure.embeddings.minilm import MiniLMEmbedder  # noqa: E402
from infrastructure.storage.sqlite import SqliteStorage  # noqa: E402
from rag_system import IndexedMemory, MemoryIndex, analyze, analyzer_for  # noqa: E402
from services.memory_service import NewMemory, index_text  # noqa: E402
from services.rag_service import RagService  # noqa: E402
from services.user_memory import UserMemory  # noqa: E402

DATA = REPO / "bench" / "data"
ENGINES = ("cosine", "bm25", "hybrid", "full")
RRF_K = 60
SIZES = (1_000, 10_000, 100_000)


def parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def dataset_files(paths: list[Path]) -> list[Path]:
    """Files as given; a folder stands for the .json files in it."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    if not files:
        raise SystemExit("no dataset found in " + ", ".join(map(str, paths)))
    return files


@dataclass
class LoadedSet:
    """One set's user: the services over a fresh SQLite file, and the memories' texts and vectors."""

    name: str
    data: dict[str, Any]
    rag: RagService
    index: MemoryIndex
    original_key: dict[tuple[str, str], str]
    texts: list[str]
    vectors: np.ndarray


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


async def load_set(data: dict[str, Any], embedder: CachedEmbedder, folder: Path) -> LoadedSet:
    clock = Clock(parse_time(data["now"]))
    user = uuid.uuid4()
    storage = await SqliteStorage.open(folder / f"{user}.db")
    batcher = DatabaseBatcher(storage=storage)
    batcher.start()
    try:
        memories = UserMemory(user_id=user, guard=WriteGuard(user_id=user), storage=storage, batcher=batcher,
                              embedder=embedder, analyzer=analyzer_for(data.get("language", "en")),
                              clock=clock)  # fmt: skip
        original_key: dict[tuple[str, str], str] = {}
        first, later = [], []
        for item in data["memories"]:
            category = str(item.get("category", "OTHER")).upper()
            category = category if category in frozenset(MemoryCategory) else MemoryCategory.OTHER.value
            created = parse_time(item.get("created_at") or data["now"])
            updated = parse_time(item.get("updated_at") or item.get("created_at") or data["now"])
            importance = item.get("importance")
            first.append(NewMemory(category, item["key"], item["value"], importance, "import", created))
            if updated != created:
                later.append(NewMemory(category, item["key"], item["value"], importance, "import", updated))
            original_key[(category, normalize_key(item["key"]))] = item["key"]
        await memories.save_many(first)
        await memories.save_many(later)  # updates move updated_at and keep created_at
    finally:
        await batcher.aclose()
        await storage.aclose()
    # The baselines rank the same memories on their own index, filled in the order UserMemory filled its own (a
    # memory's row is where it first came; an update replaces it in place), so ties break the same way.
    index = MemoryIndex(dimension=embedder.dimension, analyzer=memories.analyzer)
    for item in (*first, *later):
        ident = (item.category, normalize_key(item.key))
        memory = memories.get(*ident)
        if memory is not None and ident not in index:
            [vector] = await embedder.embed([index_text(memory.key, memory.value)])
            index.upsert(memory, vector)
    texts = [index_text(m.key, m.value) for m in index.memories()]
    return LoadedSet(
        name=data.get("name", "unnamed"),
        data=data,
        rag=RagService(memory=memories, embedder=embedder, clock=clock),
        index=index,
        original_key=original_key,
        texts=texts,
        vectors=await embedder.embed(texts),
    )


async def answers(loaded: LoadedSet, query: dict[str, Any], embedder: CachedEmbedder, k: int) -> dict[str, list[str]]:
    """Each engine's keys for one query, best first (and ``full`` before its gate, as ``ungated``)."""
    index, text = loaded.index, query["text"]
    key = loaded.original_key
    n = len(index)
    vector = (await embedder.embed([text]))[0]
    by_meaning = [key[(m.category, m.key)] for m, _ in index.nearest(vector, k=n)]
    by_words = [key[(m.category, m.key)] for m, _ in index.bm25(index.analyzer.terms(text), k=n)]
    fused: dict[str, float] = defaultdict(float)
    for ranking in (by_meaning, by_words):
        for rank, name in enumerate(ranking, start=1):
            fused[name] += 1.0 / (RRF_K + rank)
    for turn in _turns(query):  # said before this turn: a live session embedded each when it was said
        await loaded.rag.prepare(turn)
    found = await loaded.rag.search(text, _turns(query), k=k)
    return {
        "cosine": by_meaning[:k],
        "bm25": by_words[:k],
        "hybrid": sorted(fused, key=lambda name: -fused[name])[:k],
        "full": [key[(r.memory.category, r.memory.key)] for r in found.memories],
        "ungated": [key[(r.memory.category, r.memory.key)] for r in found.ranked],
    }


def _turns(query: dict[str, Any]) -> list[str]:
    """``recent_turns`` as strings; a turn may also be written as {"role": ..., "content": ...}."""
    return [t["content"] if isinstance(t, dict) else str(t) for t in query.get("recent_turns", [])]


async def evaluate(files: list[Path], k: int, *, embedder: CachedEmbedder, name: str | None = None) -> dict[str, Any]:
    """Every engine on the given sets, pooled: each query weighs the same."""
    results: dict[str, dict[str, list[float]]] = {engine: defaultdict(list) for engine in (*ENGINES, "ungated")}
    memories = queries = 0
    names, splits = [], set()
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            data = json.loads(await asyncio.to_thread(path.read_text, encoding="utf-8"))
            loaded = await load_set(data, embedder, Path(tmp))
            names.append(loaded.name)
            splits.add(str(data.get("split", "unsplit")))
            memories += len(data["memories"])
            for query in data["queries"]:
                queries += 1
                relevant = set(query.get("relevant", []))
                for engine, ranked in (await answers(loaded, query, embedder, k)).items():
                    _score(results[engine], query.get("kind", "unlabelled"), relevant, ranked)
    ungated = _summarise(results.pop("ungated"))
    engines = {engine: _summarise(values) for engine, values in results.items()}
    gated = results["full"]
    return {
        "dataset": name or "+".join(names),
        "split": "+".join(sorted(splits)),
        "k": k,
        "memories": memories,
        "queries": queries,
        "engines": engines,
        "gate": {
            "recall_without_gate": ungated["recall_at_k"],
            "recall_cost": _round((ungated["recall_at_k"] or 0) - (engines["full"]["recall_at_k"] or 0)),
            "answerable_rejected": _round(statistics.fmean(gated["rejected"])) if gated["rejected"] else None,
        },
    }


def _score(results: dict[str, list[float]], kind: str, relevant: set[str], ranked: list[str]) -> None:
    if relevant:
        recall = len(relevant & set(ranked)) / len(relevant)
        rank = next((i + 1 for i, key in enumerate(ranked) if key in relevant), None)
        for scope in ("all", kind):
            results[f"recall:{scope}"].append(recall)
            results[f"mrr:{scope}"].append(1.0 / rank if rank else 0.0)
        results["rejected"].append(0.0 if ranked else 1.0)
    else:
        for scope in ("all", kind):
            results[f"none:{scope}"].append(1.0 if not ranked else 0.0)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _summarise(results: dict[str, list[float]]) -> dict[str, Any]:
    def mean(name: str) -> float | None:
        values = results.get(name)
        return _round(statistics.fmean(values)) if values else None

    kinds = sorted({name.split(":", 1)[1] for name in results if ":" in name} - {"all"})
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


# Latency ------------------------------------------------------------------------------------------------------


async def latency(sources: list[LoadedSet], model: MiniLMEmbedder, sizes: tuple[int, ...], *, queries: int = 300):
    """Search time at each size, on an index of real sentences repeated (with their real vectors) up to it, with one
    BLAS thread as in a job process (agent.py's prewarm)."""
    threadpool_limits(limits=1, user_api="blas")
    asked = [(loaded, q) for loaded in sources for q in loaded.data["queries"]]
    rng = np.random.default_rng(7)
    now = latest(sources)
    analyzer = sources[0].index.analyzer
    out: dict[str, dict[str, float]] = {}
    for n in sizes:
        index = realistic_index(sources, n, now=now, rng=rng)
        gc.collect()
        gc.freeze()  # what was built is never walked again by a collection, as after a job process's load
        search_ms, total_ms = [], []
        for j in range(queries):
            loaded, query = asked[j % len(asked)]
            started = time.perf_counter()
            analysed = analyze(query["text"], _turns(query)[-3:], now=now, analyzer=analyzer)
            vectors = await model.embed([analysed.topic, *analysed.history])
            embedded = time.perf_counter()
            index.search(analysed, vectors[0], now=now, k=5, history_vectors=list(vectors[1:]))
            done = time.perf_counter()
            search_ms.append((done - embedded) * 1000)
            total_ms.append((done - started) * 1000)
        out[str(n)] = {**_percentiles("search", search_ms), **_percentiles("with_embedding", total_ms)}
    return out


def latest(sources: list[LoadedSet]) -> dt.datetime:
    return max(parse_time(loaded.data["now"]) for loaded in sources)


def realistic_index(sources: list[LoadedSet], n: int, *, now: dt.datetime, rng: np.random.Generator) -> MemoryIndex:
    """``n`` memories: the sources' real memories in turn, with their real vectors and terms, each under a key of
    its own and learned at a random time in the 700 days before ``now``."""
    real = [(memory, loaded.vectors[i]) for loaded in sources for i, memory in enumerate(loaded.index.memories())]
    index = MemoryIndex(dimension=sources[0].index.dimension, analyzer=sources[0].index.analyzer, capacity=n)
    for row in range(n):
        memory, vector = real[row % len(real)]
        at = now - dt.timedelta(days=float(rng.uniform(0, 700)))
        index.upsert(IndexedMemory(memory.category, f"m{row}", memory.value, memory.importance, at, at), vector)
    return index


def _percentiles(name: str, values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {f"{name}_p50_ms": round(statistics.median(ordered), 3),
            f"{name}_p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3)}  # fmt: skip


# Main ---------------------------------------------------------------------------------------------------------


def locomo_halves(path: Path, folder: Path) -> dict[str, list[Path]]:
    """LoCoMo's conversations converted into ``folder``, as {"dev": [...], "test": [...]}."""
    halves: dict[str, list[Path]] = {"locomo_dev": [], "locomo_test": []}
    for sample in json.loads(path.read_text(encoding="utf-8")):
        dataset, _ = convert_locomo(sample)
        out = folder / f"{dataset['name']}.json"
        out.write_text(json.dumps(dataset), encoding="utf-8")
        halves["locomo_dev" if sample["sample_id"] in LOCOMO_DEV else "locomo_test"].append(out)
    return halves


async def run(args: argparse.Namespace) -> dict[str, Any]:
    model = MiniLMEmbedder.load()
    embedder = CachedEmbedder(embedder=model, max_entries=50_000)
    if args.dataset:
        return await evaluate(dataset_files(args.dataset), args.k, embedder=embedder)
    report: dict[str, Any] = {"quality": {}}
    own = dataset_files([DATA])
    for path in own:
        result = await evaluate([path], args.k, embedder=embedder)
        report["quality"][result["dataset"]] = result
    sources_data = own
    with tempfile.TemporaryDirectory() as tmp:
        if args.locomo is not None:
            halves = locomo_halves(args.locomo, Path(tmp))
            for half, files in halves.items():
                report["quality"][half] = await evaluate(files, args.k, embedder=embedder, name=half)
                report["quality"][half]["split"] = half.split("_")[1]
            sources_data = halves["locomo_dev"] + halves["locomo_test"]
        if not args.no_latency:
            sources = [await load_set(json.loads(p.read_text(encoding="utf-8")), embedder, Path(tmp))
                       for p in sources_data]  # fmt: skip
            report["latency"] = {"source": "locomo" if args.locomo else "bench/data",
                                 "sizes": await latency(sources, model, SIZES)}  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, nargs="+", help="labelled sets (files or folders), pooled")
    parser.add_argument("--locomo", type=Path, help="LoCoMo's data/locomo10.json: adds its dev and test halves")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--no-latency", action="store_true", help="skip the latency table")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
