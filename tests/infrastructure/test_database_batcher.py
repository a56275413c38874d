"""The write batcher on SQLite and PostgreSQL: everything accepted is stored once, or reported."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest
from prometheus_client import CollectorRegistry

from core.errors import BatcherFullError, ClosedError, InvalidInputError, StorageError
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher, backoff_delay
from infrastructure.metrics import Metrics
from infrastructure.storage import MemoryAccess, MemoryWrite, MessageWrite
from tests.conftest import T0
from tests.infrastructure.conftest import Database
from tests.waiting import eventually

FAST = BatcherParams(max_rows=50, max_delay=0.01, retry_initial=0.01, retry_max=0.05, close_timeout=5.0)


def memory(user: uuid.UUID, n: int, value: str = "v") -> MemoryWrite:
    return MemoryWrite(user, "FACT", f"key_{n}", f"{value}{n}", 0.5, "extraction", T0 + dt.timedelta(seconds=n))


def message(user: uuid.UUID, conversation: uuid.UUID, n: int) -> MessageWrite:
    return MessageWrite(uuid.uuid4(), conversation, user, "user", f"message {n}", T0 + dt.timedelta(seconds=n))


async def test_a_thousand_writes_are_all_stored_by_aclose_in_few_statements(database: Database) -> None:
    store, user, conversation = database.storage, uuid.uuid4(), uuid.uuid4()
    batcher = DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=FAST)
    batcher.start()
    futures = [batcher.upsert_memory(memory(user, n)) for n in range(600)]
    futures += [batcher.append_message(message(user, conversation, n)) for n in range(400)]
    await batcher.aclose()

    assert all(f.done() and f.exception() is None for f in futures)
    assert len(await store.list_memories(user, include_embeddings=False)) == 600
    assert len(await store.recent_messages(user, limit=1000)) == 400
    stats = batcher.stats()
    assert (stats.accepted, stats.rows_written, stats.failures, stats.queue_depth) == (1000, 1000, 0, 0)
    assert stats.statements <= 1000 / 50 + 2
    assert stats.roundtrip_saving >= 0.9


async def test_repeated_upserts_of_one_memory_merge_and_the_last_wins(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    async with DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=FAST) as batcher:
        futures = [batcher.upsert_memory(memory(user, 1, value=v)) for v in ("a", "b", "c")]
        await asyncio.gather(*futures)
        assert batcher.stats().merged == 2
    [stored] = await store.list_memories(user)
    assert stored.value == "c1"


async def test_a_batch_that_fails_twice_then_succeeds_is_stored_once(database: Database) -> None:
    store, user, conversation = database.storage, uuid.uuid4(), uuid.uuid4()
    metrics = Metrics(CollectorRegistry())
    store.metrics = metrics  # what open_clients does: the backend's failed calls count in the process's metrics
    async with DatabaseBatcher(metrics=metrics, storage=store, params=FAST) as batcher:
        async with database.lock():
            futures = [batcher.append_message(message(user, conversation, n)) for n in range(20)]
            futures.append(batcher.upsert_memory(memory(user, 1)))
            await eventually(lambda: batcher.stats().retries >= 2)
        await asyncio.gather(*futures)

    assert len(await store.recent_messages(user, limit=100)) == 20
    assert [m.key for m in await store.list_memories(user)] == ["key_1"]
    reading = batcher.stats()
    assert (reading.failures, reading.queue_depth) == (0, 0)
    # Each refused attempt is a retryable storage error of the lane's operation, and a retry of the lane.
    retried = metrics.total("companion_batcher_retries_total")
    assert retried == metrics.total("companion_storage_errors_total", retryable="true") >= 2
    assert metrics.total("companion_storage_errors_total", retryable="false") == 0
    assert set(metrics.label_values("companion_storage_errors_total", "operation")) <= {
        "append_messages", "upsert_memories"
    }  # fmt: skip
    assert metrics.total("companion_batcher_flush_seconds_count") == reading.statements


async def test_a_full_queue_refuses_the_write_and_says_so(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    batcher = DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=BatcherParams(max_pending=10, max_delay=0.01)
    )
    futures = [batcher.upsert_memory(memory(user, n)) for n in range(10)]  # not started: nothing drains
    with pytest.raises(BatcherFullError) as caught:
        batcher.upsert_memory(memory(user, 10))
    assert caught.value.retryable
    merged = batcher.upsert_memory(memory(user, 3, value="again"))  # a pending row merges: it needs no room
    assert batcher.stats().rejected == 1

    await batcher.flush()
    await batcher.aclose()
    await asyncio.gather(merged, *futures)
    stored = {m.key: m.value for m in await store.list_memories(user)}
    assert len(stored) == 10
    assert stored["key_3"] == "again3"
    with pytest.raises(ClosedError):
        batcher.upsert_memory(memory(user, 11))


async def test_writes_still_pending_when_a_dead_database_outlives_aclose_are_reported_failed(
    database: Database,
) -> None:
    store, user = database.storage, uuid.uuid4()
    params = BatcherParams(max_delay=0.01, retry_initial=0.01, retry_max=0.02, close_timeout=0.3)
    batcher = DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=params)
    batcher.start()
    async with database.lock():
        futures = [batcher.upsert_memory(memory(user, n)) for n in range(5)]
        await batcher.aclose()
    assert all(isinstance(f.exception(), StorageError) for f in futures)
    assert batcher.stats().failures == 5
    assert await store.list_memories(user) == []


async def test_bad_input_never_reaches_a_batch_to_fail_it(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    async with DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=FAST) as batcher:
        good = batcher.upsert_memory(memory(user, 1))
        with pytest.raises(InvalidInputError):  # refused to its caller when built, before it can be offered
            batcher.upsert_memory(MemoryWrite(user, "FACT", "k", "", 0.5, "tool", T0))
        await good
    assert len(await store.list_memories(user)) == 1


async def test_many_access_updates_become_one_statement(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    await store.upsert_memories([memory(user, n) for n in range(3)])
    before = store.stats.queries
    async with DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=FAST) as batcher:
        for turn in range(30):
            batcher.record_access(MemoryAccess(user, (("FACT", f"key_{turn % 3}"),), T0 + dt.timedelta(minutes=turn)))
        await batcher.flush()
    assert store.stats.queries - before == 1
    counts = {m.key: m.access_count for m in await store.list_memories(user)}
    assert counts == {"key_0": 10, "key_1": 10, "key_2": 10}


def test_backoff_grows_exponentially_with_full_jitter_up_to_the_ceiling() -> None:
    class Top:  # the largest draw uniform() can make: shows the envelope
        def uniform(self, low: float, high: float) -> float:
            return high

    envelope = [backoff_delay(n, initial=0.05, ceiling=1.0, rng=Top()) for n in range(7)]  # type: ignore[arg-type]
    assert envelope == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


async def test_a_row_the_database_refuses_fails_alone_and_the_rest_of_its_batch_is_stored(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    async with (
        database.refuse_value("poison-row"),
        DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=FAST) as batcher,
    ):
        futures = [batcher.upsert_memory(memory(user, n)) for n in range(5)]
        poisoned = batcher.upsert_memory(MemoryWrite(user, "FACT", "bad", "poison-row", 0.5, "tool", T0))
        await asyncio.wait([*futures, poisoned])

    assert isinstance(poisoned.exception(), StorageError)
    assert not poisoned.exception().retryable
    assert all(f.exception() is None for f in futures)
    assert len(await store.list_memories(user)) == 5
    assert batcher.stats().failures == 1


async def test_flush_waits_for_earlier_writes_only(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    params = BatcherParams(max_rows=50, max_delay=30.0)  # nothing is due by age during the test
    async with DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=params) as batcher:
        earlier = [batcher.upsert_memory(memory(user, n)) for n in range(5)]
        keep_writing = True

        async def writer() -> None:
            n = 100
            while keep_writing:
                batcher.upsert_memory(memory(user, n))
                n += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(writer())
        await batcher.flush(within=10.0)
        keep_writing = False
        await task
        assert all(f.done() and f.exception() is None for f in earlier)


async def test_aclose_gives_a_dead_database_close_timeout_and_no_more(database: Database) -> None:
    store, user = database.storage, uuid.uuid4()
    params = BatcherParams(max_rows=5, max_delay=0.01, retry_initial=0.01, retry_max=0.02, close_timeout=0.3)
    batcher = DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=params)
    batcher.start()
    async with database.lock():
        futures = [batcher.upsert_memory(memory(user, n)) for n in range(40)]  # eight batches
        started = asyncio.get_running_loop().time()
        await batcher.aclose()
        took = asyncio.get_running_loop().time() - started
    assert took < 3.0  # bounded by close_timeout, not by eight batches times the command timeout
    assert all(isinstance(f.exception(), StorageError) for f in futures)
