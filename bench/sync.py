"""Sessions of one user keeping up with each other: what the per-turn check costs, and how soon a change reaches
the other session.

    python bench/sync.py [--postgres postgresql://...] [--runs 300] [--memories 1000]

Two sessions of one user, each with its own storage connection and batcher (as two job processes would have),
on SQLite (a temporary file) and, with ``--postgres``, on that database (migrated first; fresh user ids). The
embedder is a stand-in that costs nothing, so the numbers are the database's and the index's:

- ``check_idle_ms``: ``UserMemory.catch_up()`` when nothing changed, what every turn pays (one read of the version);
- ``check_one_change_ms``: the same when the other session saved one memory since (the version, then the change
  feed, then the index);
- ``cas_save_ms``: a compare-and-set save of one memory (a direct write, one round trip);
- ``save_to_visible_ms``: from one session's save to the other holding it, when the other catches up at once: the
  time a change takes to reach the other session's next turn (its turn must start after it, of course).

Each in milliseconds: median and p95 over ``--runs``. The user holds ``--memories`` memories. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core.validators import WriteGuard  # noqa: E402
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher  # noqa: E402
from infrastructure.embeddings.base import Embedder  # noqa: E402
from infrastructure.storage import Storage  # noqa: E402
from infrastructure.storage.postgres import PostgresStorage  # noqa: E402
from infrastructure.storage.sqlite import SqliteStorage  # noqa: E402
from rag_system import analyzer_for  # noqa: E402
from services.memory_service import NewMemory  # noqa: E402
from services.user_memory import UserMemory  # noqa: E402


class HashEmbedder(Embedder):
    """Unit vectors seeded by the text: free, so that the timings are the database's and the index's."""

    name = "hash"
    dimension = 384

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            row = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            rows.append(row / np.linalg.norm(row))
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median": round(statistics.median(ordered) * 1000, 3),
        "p95": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 3),
    }


async def one_backend(open_storage: Any, *, runs: int, memories: int) -> dict[str, Any]:
    storages: list[Storage] = [await open_storage(), await open_storage()]
    batchers = [DatabaseBatcher(storage=s, params=BatcherParams(max_delay=0.005)) for s in storages]
    for batcher in batchers:
        batcher.start()
    user = uuid.uuid4()
    embedder = HashEmbedder()
    one, two = (
        UserMemory(
            user_id=user,
            guard=WriteGuard(user_id=user),
            storage=s,
            batcher=b,
            embedder=embedder,
            analyzer=analyzer_for("en"),
        )  # fmt: skip
        for s, b in zip(storages, batchers, strict=True)
    )
    try:
        seeds = [NewMemory("FACT", f"fact {n}", f"Fact number {n} about the user's life") for n in range(memories)]
        for start in range(0, len(seeds), 500):
            await one.save_many(seeds[start : start + 500])
        await batchers[0].flush()
        await one.load()
        await two.load()
        idle, changed, saves, visible = [], [], [], []
        for n in range(runs):
            started = time.perf_counter()
            assert await two.catch_up() is None
            idle.append(time.perf_counter() - started)

            started = time.perf_counter()
            saved = await one.save_memory("PREFERENCE", f"drink {n % 10}", f"Drink number {n}")
            saves.append(time.perf_counter() - started)
            assert saved.won
            caught_started = time.perf_counter()
            caught = await two.catch_up()
            done = time.perf_counter()
            assert caught is not None
            assert two.get("PREFERENCE", f"drink_{n % 10}") == saved.memory
            changed.append(done - caught_started)
            visible.append(done - started)
            await one.catch_up()  # its own write: keeps its version up, as its next turn would
        return {
            "memories": len(two),
            "check_idle_ms": summary(idle),
            "check_one_change_ms": summary(changed),
            "cas_save_ms": summary(saves),
            "save_to_visible_ms": summary(visible),
            "queries_per_idle_check": 1,
        }
    finally:
        for batcher in batchers:
            await batcher.aclose()
        for storage in storages:
            await storage.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--postgres", help="a PostgreSQL database to measure on too (migrated first)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--memories", type=int, default=1000)
    args = parser.parse_args()
    report: dict[str, Any] = {"runs": args.runs}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sync.db"
        report["sqlite"] = await one_backend(lambda: SqliteStorage.open(path), runs=args.runs, memories=args.memories)
    if args.postgres:
        await (await PostgresStorage.open(args.postgres, migrate=True)).aclose()
        report["postgres"] = await one_backend(
            lambda: PostgresStorage.open(args.postgres, migrate=False), runs=args.runs, memories=args.memories
        )
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
