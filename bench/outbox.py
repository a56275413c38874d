"""Outbox benchmark: what the fsync before each acknowledgement costs, and how fast a replay drains.

    python bench/outbox.py [--writes 500] [--replay 10000] [--recovery] [--dir data/bench-outbox]

- ``append``: one write per fsynced commit (a ``remember``), per journal mode (WAL, rollback journal), and fifty per
  commit (a burst the batcher groups), as milliseconds per write; and the same single append with aiosqlite.
- ``acknowledgement``: through the batcher, from offering a write to ``durable()`` returning, one at a time.
- ``event_loop_lag_ms``: how late a 1 ms ticker woke while the batcher appended and wrote (to SQLite): the fsync
  runs on the outbox's thread, not on the loop.
- ``replay``: writes left in an outbox (half memories with 384-d embeddings, half messages) replayed into
  PostgreSQL (started or reused as the test command does, in a database of its own, dropped afterwards).
- ``recovery`` (``--recovery``, needs PostgreSQL 15's binaries): the real services on a PostgreSQL server of the
  bench's own (the fault tests' ``OwnPostgresServer``), stopped and started again: how long ``remember`` takes to
  answer while it is down, how long after it is back the write is stored, how long ``aclose()`` gives a database
  still down, and how long the next start takes to replay what was left. Median of three runs.

The outbox folder is on the disk the worker would use (``--dir``; the default sits beside ./data). Prints one JSON
object; quote medians.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiosqlite  # noqa: E402
import asyncpg  # noqa: E402
import numpy as np  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.infrastructure import test_services  # noqa: E402
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher  # noqa: E402
from infrastructure.metrics import Metrics  # noqa: E402
from infrastructure.outbox import MEMORIES, MESSAGES, Outbox, OutboxParams, encode  # noqa: E402
from infrastructure.storage import MemoryWrite, MessageWrite  # noqa: E402
from infrastructure.storage.migrations import apply_migrations  # noqa: E402
from infrastructure.storage.postgres import PostgresStorage  # noqa: E402
from infrastructure.storage.sqlite import SqliteStorage  # noqa: E402
from services.container import open_process, open_session  # noqa: E402

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def memory(user: uuid.UUID, i: int, rng: np.random.Generator) -> MemoryWrite:
    vector = rng.standard_normal(384).astype(np.float32)
    return MemoryWrite(user, "FACT", f"fact_{i}", f"remembered fact number {i}", 0.5, "tool",
                       T0 + dt.timedelta(seconds=i), embedding=vector / np.linalg.norm(vector))  # fmt: skip


def message(user: uuid.UUID, conversation: uuid.UUID, i: int) -> MessageWrite:
    return MessageWrite(uuid.uuid4(), conversation, user, "user", f"something said, number {i}",
                        T0 + dt.timedelta(seconds=i))  # fmt: skip


def summary(seconds: list[float], per: int = 1) -> dict[str, float]:
    ms = sorted(s * 1000 / per for s in seconds)
    return {"median_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 3)}


async def bench_append(folder: Path, n: int) -> dict[str, object]:
    rng, user = np.random.default_rng(1), uuid.uuid4()
    result: dict[str, object] = {}
    for journal in ("wal", "delete"):
        outbox = await Outbox.open(OutboxParams(folder / journal, max_rows=10 * n + 100, journal=journal))  # type: ignore[arg-type]
        timings = []
        for i in range(n):
            key, body = encode(MEMORIES, memory(user, i, rng))
            outbox.reserve(len(body))
            started = time.perf_counter()
            await outbox.append([(MEMORIES, key, body)])
            timings.append(time.perf_counter() - started)
        result[f"single_{journal}"] = summary(timings)
        if journal == "wal":
            grouped = []
            for g in range(max(1, n // 50)):
                entries = [(MEMORIES, *encode(MEMORIES, memory(user, n + g * 50 + i, rng))) for i in range(50)]
                for _, _, body in entries:
                    outbox.reserve(len(body))
                started = time.perf_counter()
                await outbox.append(entries)
                grouped.append(time.perf_counter() - started)
            result["grouped_50_wal_per_write"] = summary(grouped, per=50)
        await outbox.aclose()
    result["single_wal_aiosqlite"] = await bench_aiosqlite(folder / "aiosqlite", n, rng)
    return result


async def bench_aiosqlite(folder: Path, n: int, rng: np.random.Generator) -> dict[str, float]:
    """The same append with aiosqlite: begin, insert, commit are three hops to its thread instead of one."""
    await asyncio.to_thread(folder.mkdir, parents=True)
    user = uuid.uuid4()
    async with aiosqlite.connect(folder / "outbox.db", isolation_level=None) as db:
        await db.execute("pragma journal_mode = wal")
        await db.execute("pragma synchronous = full")
        await db.execute("create table entries (seq integer primary key autoincrement, lane text, k text, body blob)")
        timings = []
        for i in range(n):
            key, body = encode(MEMORIES, memory(user, i, rng))
            started = time.perf_counter()
            await db.execute("begin immediate")
            await db.execute("insert into entries (lane, k, body) values (?, ?, ?)", (MEMORIES, key, body))
            await db.execute("commit")
            timings.append(time.perf_counter() - started)
    return summary(timings)


def own_metrics() -> Metrics:
    """Counters of this run alone: the process-wide ones add up every run's replays."""
    return Metrics(CollectorRegistry())


async def bench_acknowledgement(folder: Path, n: int) -> dict[str, object]:
    rng, user = np.random.default_rng(2), uuid.uuid4()
    storage = await SqliteStorage.open(folder / "companion.db")
    outbox = await Outbox.open(OutboxParams(folder / "outbox", max_rows=n + 100))
    batcher = DatabaseBatcher(
        storage=storage, params=BatcherParams(max_delay=0.1), outbox=outbox, metrics=own_metrics()
    )
    batcher.start()
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:  # how long the loop is held up: the fsync must not be on it
        while not stop.is_set():
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - started - 0.001)

    ticking = asyncio.create_task(ticker())
    timings = []
    for i in range(n):
        started = time.perf_counter()
        batcher.upsert_memory(memory(user, i, rng))
        await batcher.durable()
        timings.append(time.perf_counter() - started)
    stop.set()
    await ticking
    await batcher.aclose()
    await outbox.aclose()
    await storage.aclose()
    ordered = sorted(lags)
    return {
        "single_write": summary(timings),
        "event_loop_lag_ms": {
            "median": round(statistics.median(ordered) * 1000, 3),
            "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
            "max": round(ordered[-1] * 1000, 3),
        },  # fmt: skip
    }


async def bench_replay(folder: Path, n: int, dsn: str) -> dict[str, object]:
    rng, user, conversation = np.random.default_rng(3), uuid.uuid4(), uuid.uuid4()
    dead = await Outbox.open(OutboxParams(folder / "replay", max_rows=n + 100, max_bytes=2**30))
    entries = [(MEMORIES, *encode(MEMORIES, memory(user, i, rng))) for i in range(n // 2)]
    entries += [(MESSAGES, *encode(MESSAGES, message(user, conversation, i))) for i in range(n - n // 2)]
    for start in range(0, len(entries), 500):
        chunk = entries[start : start + 500]
        for _, _, body in chunk:
            dead.reserve(len(body))
        await dead.append(chunk)
    await dead.aclose()

    async with await PostgresStorage.open(dsn, migrate=False) as storage:
        started = time.perf_counter()
        outbox = await Outbox.open(OutboxParams(folder / "replay", max_rows=n + 100, max_bytes=2**30))
        opened = time.perf_counter() - started
        batcher = DatabaseBatcher(storage=storage, params=BatcherParams(), outbox=outbox, metrics=own_metrics())
        batcher.start()
        replayed = batcher.stats().replayed
        await batcher.flush()
        drained = time.perf_counter() - started
        await batcher.aclose()
        left = outbox.stats().rows
        await outbox.aclose()
        stored = len(await storage.list_memories(user, include_embeddings=False))
        said = len(await storage.recent_messages(user, limit=n))
    assert (replayed, stored + said, left) == (n, n, 0), (replayed, stored, said, left)
    return {
        "writes": n,
        "open_and_read_s": round(opened, 3),
        "drained_s": round(drained, 3),
        "writes_per_s": round(n / drained),
    }


async def bench_recovery(folder: Path, runs: int = 3) -> dict[str, float]:
    from core.config import Settings
    from infrastructure.embeddings.minilm import MiniLMEmbedder
    from tests.faults.servers import OwnPostgresServer

    embedder, server = MiniLMEmbedder.load(), OwnPostgresServer()
    server.start()
    measured: dict[str, list[float]] = {}
    try:
        for run in range(runs):
            settings = Settings(_env_file=None, database_url=server.dsn, outbox_dir=folder / f"recovery-{run}",  # type: ignore[call-arg]
                                openai_base_url="http://127.0.0.1:9/v1", batch_max_delay_ms=5)  # fmt: skip
            process = await open_process(settings, embedder=embedder, metrics=own_metrics())
            session = await open_session(process, user_id=uuid.uuid4())
            await session.conversations.start()
            server.stop()
            started = time.perf_counter()
            await session.memories.save_memory("FACT", "city", "Lives in Lisbon")
            answered = time.perf_counter() - started
            await asyncio.sleep(5)  # a five-second outage
            server.start()
            started = time.perf_counter()
            await process.batcher.flush(within=60)
            landed = time.perf_counter() - started
            server.stop()  # down again, past shutdown
            for n in range(10):
                session.conversations.log_message("user", f"said while the database was down, {n}")
            started = time.perf_counter()
            await process.aclose()
            closed = time.perf_counter() - started
            server.start()
            started = time.perf_counter()
            later = await open_process(settings, embedder=embedder, metrics=own_metrics())
            await later.batcher.flush(within=60)
            replayed = time.perf_counter() - started
            assert later.batcher.stats().replayed == 10
            await later.aclose()
            for name, value in (("remember_answer_s", answered), ("stored_after_database_back_s", landed),
                                ("aclose_with_database_down_s", closed), ("restart_and_replay_s", replayed)):  # fmt: skip
                measured.setdefault(name, []).append(value)
    finally:
        server.cleanup()
    return {name: round(statistics.median(values), 3) for name, values in measured.items()}


async def main(args: argparse.Namespace) -> dict[str, object]:
    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=REPO))
    folder.mkdir(parents=True, exist_ok=True)
    urls = test_services()
    admin = urls["TEST_DATABASE_URL"]
    database = f"companion_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'create database "{database}"')
    await conn.close()
    dsn = admin.rsplit("/", 1)[0] + "/" + database
    try:
        conn = await asyncpg.connect(dsn)
        await apply_migrations(conn)
        await conn.close()
        result: dict[str, object] = {
            "append": await bench_append(folder / "append", args.writes),
            "acknowledgement": await bench_acknowledgement(folder / "ack", args.writes),
            "replay_postgres": await bench_replay(folder, args.replay, dsn),
        }
        if args.recovery:
            result["recovery"] = await bench_recovery(folder)
        return result
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'drop database if exists "{database}" with (force)')
        await conn.close()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=500, help="appends timed per variant")
    parser.add_argument("--replay", type=int, default=10_000, help="writes left in the outbox to replay")
    parser.add_argument("--recovery", action="store_true", help="also time an outage on a PostgreSQL of its own")
    parser.add_argument("--dir", default="", help="where the outbox files go (default: a temporary folder here)")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
