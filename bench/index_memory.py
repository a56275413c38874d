"""What one user's index costs the process: memory, build time, and the garbage collector's pauses.

    python bench/index_memory.py [--sizes 10000 100000] [--repeats 3]

Each size runs in a fresh process (so freed memory of one size does not hide the next's), on the index that
bench/rag.py's latency table searches: bench/data's real memories repeated with their real embeddings and terms
(``bench.rag.realistic_index``, capacity reserved up front as a loaded session's is). Per size:

- ``traced_bytes_per_memory`` / ``traced_mb``: what tracemalloc sees the build leave allocated (numpy's buffers
  included); ``vectors_mb`` is the embeddings' share of it (``rag_system.vectors``: int8 codes, two float32 per
  row and the float64 sums for the z-scores' statistics), ``without_vectors_mb`` the rest;
- ``vectors_file_mb``: the exact float32 vectors in the unlinked temporary file, read with ``pread``: page cache,
  not the process's memory (0 when the index fell back to float32 in memory);
- ``rss_delta_mb``: the process's resident memory after the build minus before it (first build);
- ``build_s``: median wall time of ``repeats`` builds, with one BLAS thread as in a job process (agent.py's
  prewarm; several threads on a busy machine make the vector sums' small products many times slower);
- ``gc_tracked_objects``: how many more objects the garbage collector tracks (and a full collection walks) with
  the index than without it: the index's own share of every full collection, free of timing noise (built with
  the stemmer's word cache off, whose lists belong to the analyzer);
- ``user_memory``: what a :class:`UserMemory` keeps per memory besides the index's own arrays (each memory's stored
  version, the hash tombstones name it by): tracemalloc after ``UserMemory.load`` of ``n`` stored memories (one
  version each, read anew from a stand-in storage), minus tracemalloc after the same memories were upserted into
  a bare index the same way (reserved, then compacted), the stemmer's word cache off for both. The index's own
  columns for them count in ``traced_mb``, not here;
- ``gc_collect_ms``: a full ``gc.collect()``, median and max of 15, with the model and the sets loaded but no index
  (``no_index``), with the index (``index``), and with the index after ``gc.collect(); gc.freeze()``
  (``index_frozen``). The process's own objects (the model, the loaded sets) set the floor of the first two.

Prints one JSON object. Quote medians: the machines are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from bench.rag import DATA, dataset_files, latest, load_set, realistic_index  # noqa: E402
from core.validators import WriteGuard  # noqa: E402
from infrastructure.embeddings import CachedEmbedder  # noqa: E402
from infrastructure.embeddings.minilm import MiniLMEmbedder  # noqa: E402
from infrastructure.storage import Memory  # noqa: E402
from rag_system import IndexedMemory, MemoryIndex  # noqa: E402
from services.user_memory import UserMemory  # noqa: E402

SIZES = (10_000, 100_000)
COLLECTIONS = 15


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def collect_ms() -> dict[str, float]:
    times = []
    for _ in range(COLLECTIONS):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return {"median": round(statistics.median(times), 2), "max": round(max(times), 2)}


def tracked_objects(sources: list[Any], n: int, *, now: Any) -> int:
    """How many more objects the collector tracks once an index of ``n`` is built, with the stemmer's word cache
    (a list per word, 10,000 at most, the analyzer's and not the index's) off while it is."""
    stemmer = sources[0].index.analyzer.stemmer
    kept, stemmer.maxCacheSize = stemmer.maxCacheSize, 0
    gc.collect()
    without = len(gc.get_objects())
    index = realistic_index(sources, n, now=now, rng=np.random.default_rng(7))
    gc.collect()
    tracked = len(gc.get_objects()) - without
    stemmer.maxCacheSize = kept
    del index
    return tracked


class _Stored:
    """The two reads ``UserMemory.load`` makes. Each list is made anew from a built index (new strings, as a
    database read makes): what a load keeps of it is traced, the list itself is freed once loaded."""

    def __init__(self, source: MemoryIndex, vectors: list[np.ndarray], user: uuid.UUID) -> None:
        self.source, self.vectors, self.user = source, vectors, user

    async def user_version(self, user_id: uuid.UUID) -> int:
        return len(self.source)

    async def list_memories(self, user_id: uuid.UUID) -> list[Memory]:
        return [Memory(uuid.uuid4(), self.user, m.category, m.key, m.value, m.importance, "import", m.created_at,
                       m.updated_at, None, 0, version=row + 1, embedding=self.vectors[row % len(self.vectors)])
                for row, m in enumerate(self.source.memories())]  # fmt: skip


def traced_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def user_memory_share(sources: list[Any], n: int, *, now: Any, embedder: Any) -> dict[str, Any]:
    """UserMemory's own bookkeeping: a loaded UserMemory minus a bare index loaded with the same memories."""
    user = uuid.uuid4()
    vectors = [loaded.vectors[i] for loaded in sources for i in range(len(loaded.index))]
    stored = _Stored(realistic_index(sources, n, now=now, rng=np.random.default_rng(7)), vectors, user)
    analyzer = sources[0].index.analyzer
    stemmer = analyzer.stemmer  # its word cache fills in whichever run comes first: off for both
    kept, stemmer.maxCacheSize = stemmer.maxCacheSize, 0
    tracemalloc.start()
    index = MemoryIndex(dimension=embedder.dimension, analyzer=analyzer)
    listed = await stored.list_memories(user)
    index.reserve(len(listed))
    for m in listed:
        indexed = IndexedMemory(m.category, m.key, m.value, m.importance, m.created_at, m.updated_at)
        index.upsert(indexed, cast(np.ndarray, m.embedding))
    index.compact()
    del listed
    index_bytes = traced_bytes()
    tracemalloc.stop()
    del index
    tracemalloc.start()
    memory = UserMemory(user_id=user, guard=WriteGuard(user_id=user), storage=cast(Any, stored),
                        batcher=cast(Any, None), embedder=embedder, analyzer=analyzer)  # fmt: skip
    await memory.load()
    user_bytes = traced_bytes()
    tracemalloc.stop()
    stemmer.maxCacheSize = kept
    assert len(memory) == n
    return {
        "index_mb": round(index_bytes / 1e6, 1),
        "user_memory_mb": round(user_bytes / 1e6, 1),
        "bookkeeping_bytes_per_memory": round((user_bytes - index_bytes) / n),
    }


async def one_size(n: int, repeats: int) -> dict[str, Any]:
    threadpool_limits(limits=1, user_api="blas")
    model = MiniLMEmbedder.load()
    embedder = CachedEmbedder(embedder=model, max_entries=50_000)
    with tempfile.TemporaryDirectory() as tmp:
        sources = [await load_set(json.loads(p.read_text(encoding="utf-8")), embedder, Path(tmp))
                   for p in dataset_files([DATA])]  # fmt: skip
    now = latest(sources)
    gc.collect()
    no_index = collect_ms()
    builds, rss_delta = [], 0
    for attempt in range(repeats):
        gc.collect()
        before = rss_bytes()
        started = time.perf_counter()
        index = realistic_index(sources, n, now=now, rng=np.random.default_rng(7))
        builds.append(time.perf_counter() - started)
        if attempt == 0:
            rss_delta = rss_bytes() - before
        del index
    gc.collect()
    tracemalloc.start()
    index = realistic_index(sources, n, now=now, rng=np.random.default_rng(7))
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    with_index = collect_ms()
    del index
    tracked = tracked_objects(sources, n, now=now)
    index = realistic_index(sources, n, now=now, rng=np.random.default_rng(7))
    gc.collect()
    gc.freeze()
    frozen = collect_ms()
    vectors, vectors_file, memories = index.vectors.memory_bytes, index.vectors.file_bytes, len(index)
    del index
    gc.unfreeze()
    bookkeeping = await user_memory_share(sources, n, now=now, embedder=embedder)
    return {
        "memories": memories,
        "traced_bytes_per_memory": round(traced / n),
        "traced_mb": round(traced / 1e6, 1),
        "vectors_mb": round(vectors / 1e6, 1),
        "without_vectors_mb": round((traced - vectors) / 1e6, 1),
        "vectors_file_mb": round(vectors_file / 1e6, 1),
        "rss_delta_mb": round(rss_delta / 1e6, 1),
        "build_s": round(statistics.median(builds), 2),
        "gc_tracked_objects": tracked,
        "gc_collect_ms": {"no_index": no_index, "index": with_index, "index_frozen": frozen},
        "user_memory": bookkeeping,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3, help="builds per size for the build time")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, in this process
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(one_size(args.one, args.repeats))))
        return
    report = {}
    for n in args.sizes:
        run = subprocess.run([sys.executable, __file__, "--one", str(n), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        report[str(n)] = json.loads(run.stdout)
    print(json.dumps({"sizes": report}))


if __name__ == "__main__":
    main()
