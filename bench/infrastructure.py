"""Infrastructure benchmark: write batching, the cache, the shared HTTP client, the local embedder.

    python bench/infrastructure.py [--n 10000] [--users 20] [--sessions 50] [--requests 200]

The cache holds what a session start reads through it: the user's profile (``UserService.get_profile``, once per
session start, in ``open_session``; ``start_companion`` keeps the row ``ensure_profile`` answers with, and the
entrypoint's language uses the one ``open_session`` read). A turn reads nothing through it (the index is in process). So the cache part times session starts with no cache, the in-process cache
and Redis, every fifth session of a user first changing the profile (a new version: the next read misses).

Runs against real PostgreSQL and Redis on loopback, started (or reused) exactly as the test command does
(scripts/test-services.sh), in a database of its own that it drops afterwards. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from aiohttp import web  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from core.validators import WriteGuard  # noqa: E402
from infrastructure.cache import Cache, CacheParams, LocalCache, open_cache  # noqa: E402
from infrastructure.clients import redis_client  # noqa: E402
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher  # noqa: E402
from infrastructure.embeddings.minilm import MiniLMEmbedder  # noqa: E402
from infrastructure.metrics import BatchReading, CacheReading, Metrics  # noqa: E402
from infrastructure.storage import MemoryWrite, Storage  # noqa: E402
from infrastructure.storage.migrations import apply_migrations  # noqa: E402
from infrastructure.storage.postgres import PostgresStorage  # noqa: E402
from infrastructure.storage.sqlite import SqliteStorage  # noqa: E402
from services.user_service import UserService  # noqa: E402

READS_PER_SESSION_START = 1

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
SENTENCES = [
    "My sister Maya lives in Lisbon and works as an architect.",
    "Where does my sister live?",
    "I have a job interview on Friday at ten.",
    "hi",
    "I'm allergic to peanuts.",
    "Remind me what I said about my knee last week, I think it was after the run on Sunday.",
    "My daughter's name is Aisha.",
    "I prefer tea over coffee in the mornings, but on weekends I like a flat white.",
]


def test_services() -> dict[str, str]:
    """Start or reuse PostgreSQL and Redis the way `make test` does; return their URLs."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "test-services.sh")], capture_output=True, text=True, check=True
    ).stdout
    urls = {}
    for line in out.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        urls[name] = value.strip("'")
    return urls


def writes(n: int, *, rng: np.random.Generator) -> list[MemoryWrite]:
    user = uuid.uuid4()
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        MemoryWrite(
            user,
            "FACT",
            f"fact_{i}",
            f"remembered fact number {i}",
            0.5,
            "extraction",
            T0 + dt.timedelta(seconds=i),
            embedding=vectors[i],
        )  # fmt: skip
        for i in range(n)
    ]


async def bench_batching(storage: Storage, n: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    one_by_one, batched = writes(n, rng=rng), writes(n, rng=rng)

    before, started = storage.stats.queries, time.perf_counter()
    for write in one_by_one:
        await storage.upsert_memories([write])
    single_s, single_trips = time.perf_counter() - started, storage.stats.queries - before

    before, started = storage.stats.queries, time.perf_counter()
    metrics = Metrics(CollectorRegistry())
    batcher = DatabaseBatcher(storage=storage, params=BatcherParams(), metrics=metrics)  # 50 rows or 100 ms
    batcher.start()
    for write in batched:
        batcher.upsert_memory(write)
    await batcher.aclose()
    batched_s, batched_trips = time.perf_counter() - started, storage.stats.queries - before
    stored = len(await storage.list_memories(batched[0].user_id, include_embeddings=False))
    assert stored == n, f"batched run stored {stored} of {n}"
    reading = BatchReading.read(metrics)  # what the health tool would say, from the same instruments
    return {
        "n": n,
        "roundtrips_one_by_one": single_trips,
        "roundtrips_batched": batched_trips,
        "roundtrip_saving": round(1 - batched_trips / single_trips, 4),
        "seconds_one_by_one": round(single_s, 3),
        "seconds_batched": round(batched_s, 3),
        "speedup": round(single_s / batched_s, 2),
        "flush_mean_ms": round(reading.flush_mean_ms, 2),
        "statements_by_the_instruments": reading.statements,
    }


async def session_starts(storage: Storage, cache: Cache | None, people: list[uuid.UUID], sessions: int):
    """Per get_profile call, seconds; and storage round trips per session start."""
    timings: list[float] = []
    queries = 0
    for session in range(sessions):
        for person in people:
            users = UserService(user_id=person, guard=WriteGuard(user_id=person), storage=storage, cache=cache)
            if session % 5 == 4:
                await users.update_profile(name=f"name {session}")  # between sessions: the next start misses
            before = storage.stats.queries
            for _ in range(READS_PER_SESSION_START):
                started = time.perf_counter()
                await users.get_profile()
                timings.append(time.perf_counter() - started)
            queries += storage.stats.queries - before
    return timings, queries


def _summary(timings: list[float], queries: int, starts: int) -> dict[str, float]:
    timings = sorted(timings)
    return {
        "get_profile_p50_ms": round(statistics.median(timings) * 1000, 3),
        "get_profile_p95_ms": round(timings[int(0.95 * len(timings))] * 1000, 3),
        "storage_queries_per_session_start": round(queries / starts, 2),
    }


async def bench_cache(storage: Storage, redis_url: str, users: int, sessions: int) -> dict[str, object]:
    people = [uuid.uuid4() for _ in range(users)]
    for person in people:
        await storage.update_profile(person, {"name": "someone", "timezone": "Europe/Lisbon"}, at=T0)
    starts = users * sessions
    result: dict[str, object] = {"users": users, "sessions_per_user": sessions, "reads": 3 * starts}
    timings, queries = await session_starts(storage, None, people, sessions)
    result["none"] = _summary(timings, queries, starts)

    metrics = Metrics(CollectorRegistry())
    local = LocalCache(params=CacheParams(), metrics=metrics)
    timings, queries = await session_starts(storage, local, people, sessions)
    reading = CacheReading.read(metrics)
    result["memory"] = {**_summary(timings, queries, starts), "hit_rate": round(reading.hit_rate, 4),
                        "cache_mean_ms": round(reading.mean_ms, 4)}  # fmt: skip

    client = redis_client(redis_url, timeout=1.0)
    prefix = f"bench{secrets.token_hex(4)}"
    metrics = Metrics(CollectorRegistry())
    cache = open_cache(redis=client, params=CacheParams(prefix=prefix), metrics=metrics)
    try:
        timings, queries = await session_starts(storage, cache, people, sessions)
        reading = CacheReading.read(metrics)
        result["redis"] = {**_summary(timings, queries, starts), "hit_rate": round(reading.hit_rate, 4),
                           "cache_mean_ms": round(reading.mean_ms, 4), "mode": reading.mode,
                           "fallbacks": reading.fallbacks}  # fmt: skip
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await cache.aclose()
        await client.aclose()
    return result


async def bench_pool(requests: int) -> dict[str, float]:
    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"  # type: ignore[union-attr]
    try:
        started = time.perf_counter()
        for _ in range(requests):
            async with httpx.AsyncClient() as client:
                (await client.get(url)).raise_for_status()
        new_s = time.perf_counter() - started

        async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=20)) as pooled:
            started = time.perf_counter()
            for _ in range(requests):
                (await pooled.get(url)).raise_for_status()
            reused_s = time.perf_counter() - started
    finally:
        await runner.cleanup()
    return {
        "requests": requests,
        "ms_per_request_new_client": round(new_s / requests * 1000, 3),
        "ms_per_request_reused": round(reused_s / requests * 1000, 3),
        "speedup_reused_vs_new": round(new_s / reused_s, 2),
    }


def bench_embeddings() -> dict[str, object]:
    started = time.perf_counter()
    embedder = MiniLMEmbedder.load()
    load_s = time.perf_counter() - started
    embedder.encode(SENTENCES)  # warm the BLAS threads
    timings = []
    for i in range(200):
        started = time.perf_counter()
        embedder.encode([SENTENCES[i % len(SENTENCES)]])
        timings.append(time.perf_counter() - started)
    timings.sort()
    started = time.perf_counter()
    embedder.encode([SENTENCES[i % len(SENTENCES)] for i in range(100)])
    batch_s = time.perf_counter() - started
    return {
        "provider": "local",
        "load_s": round(load_s, 3),
        "p50_ms": round(statistics.median(timings) * 1000, 2),
        "p95_ms": round(timings[int(0.95 * len(timings))] * 1000, 2),
        "batch100_s": round(batch_s, 3),
    }


async def main(args: argparse.Namespace) -> dict[str, object]:
    urls = test_services()
    admin = urls["TEST_DATABASE_URL"]
    database = f"companion_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'create database "{database}"')
    await conn.close()
    dsn = admin.rsplit("/", 1)[0] + "/" + database
    result: dict[str, object] = {}
    try:
        conn = await asyncpg.connect(dsn)
        await apply_migrations(conn)
        await conn.close()
        async with await PostgresStorage.open(dsn, migrate=False) as postgres:
            result["batching"] = {"postgres": await bench_batching(postgres, args.n)}
            result["cache"] = await bench_cache(postgres, urls["TEST_REDIS_URL"], args.users, args.sessions)
        with tempfile.TemporaryDirectory() as tmp:
            async with await SqliteStorage.open(Path(tmp) / "bench.db") as sqlite:
                result["batching"]["sqlite"] = await bench_batching(sqlite, args.n)  # type: ignore[index]
    finally:
        conn = await asyncpg.connect(admin)
        await conn.execute(f'drop database if exists "{database}" with (force)')
        await conn.close()
    result["pool"] = await bench_pool(args.requests)
    result["embeddings"] = bench_embeddings()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="upserts per batching run")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=50, help="session starts per user")
    parser.add_argument("--requests", type=int, default=200)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
