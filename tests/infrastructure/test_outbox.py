"""The local outbox on its own and under the write batcher, on real SQLite files and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import stat
import uuid
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from core.errors import OutboxError, OutboxFullError, StorageError
from infrastructure.database_batcher import BatcherParams, DatabaseBatcher
from infrastructure.metrics import Metrics
from infrastructure.outbox import MEMORIES, MESSAGES, Outbox, OutboxParams, decode, encode
from infrastructure.outbox import _append as outbox_append  # the append itself, on a connection a test can cap
from infrastructure.storage import ConversationEnd, MemoryAccess, MemoryWrite, MessageWrite
from tests.conftest import T0
from tests.infrastructure.conftest import Database
from tests.infrastructure.test_database_batcher import memory, message
from tests.waiting import eventually

FAST = BatcherParams(max_rows=50, max_delay=0.01, retry_initial=0.01, retry_max=0.05, close_timeout=5.0)
SHORT_CLOSE = BatcherParams(max_rows=50, max_delay=0.01, retry_initial=0.01, retry_max=0.02, close_timeout=0.3)


def rows_in(folder: Path) -> list[tuple[str, str]]:
    """(lane, idempotency key) of every row in the folder's outbox files, in file then append order."""
    found = []
    for path in sorted(folder.glob("outbox-*.db")):
        with sqlite3.connect(path) as db:
            found += db.execute("select lane, idempotency_key from entries order by seq").fetchall()
    return found


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def write_garbage(path: Path) -> None:
    path.write_bytes(b"this is not sqlite" * 100)


async def kept(outbox: Outbox, lane: str, item: object) -> int:
    key, body = encode(lane, item)
    outbox.reserve(len(body))
    [seq] = await outbox.append([(lane, key, body)])
    return seq


# The file on its own ---------------------------------------------------------------------------------------------


async def test_every_kind_of_write_reads_back_as_it_was_written() -> None:
    user, conversation = uuid.uuid4(), uuid.uuid4()
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    writes = [
        (MEMORIES, MemoryWrite(user, "FACT", "sister_city", "Maya lives in Lisbon", 0.7, "tool", T0, embedding=vector)),
        (MESSAGES, MessageWrite(uuid.uuid4(), conversation, user, "user", "hello ünïcode", T0)),
        ("conversation_ends", ConversationEnd(user, conversation, T0, "We talked.", ("the interview",))),
    ]
    for lane, item in writes:
        again = decode(lane, encode(lane, item)[1])
        assert again == item
        if lane == MEMORIES:
            np.testing.assert_array_equal(again.embedding, vector)


async def test_rows_left_by_a_closed_outbox_are_recovered_in_order_by_the_next(tmp_path: Path) -> None:
    user = uuid.uuid4()
    first = await Outbox.open(OutboxParams(tmp_path))
    seqs = [await kept(first, MEMORIES, memory(user, n)) for n in range(5)]
    await first.remove([seqs[2]])
    await first.aclose()

    second = await Outbox.open(OutboxParams(tmp_path))
    try:
        recovered = second.take_recovered()
        assert [r.item.key for r in recovered] == ["key_0", "key_1", "key_3", "key_4"]
        assert second.take_recovered() == []  # given once
        assert second.stats().adopted_files == 1
        assert [n for n in names(tmp_path) if n.endswith(".db")] == [second.path.name]  # the dead one was folded in
    finally:
        await second.aclose()


async def test_a_live_process_file_is_never_adopted(tmp_path: Path) -> None:
    alive = await Outbox.open(OutboxParams(tmp_path))
    await kept(alive, MESSAGES, message(uuid.uuid4(), uuid.uuid4(), 1))
    other = await Outbox.open(OutboxParams(tmp_path))
    try:
        assert other.take_recovered() == []
        assert other.stats().adopted_files == 0
        assert alive.path.exists()
    finally:
        await other.aclose()
        await alive.aclose()


async def test_an_empty_outbox_leaves_no_file_behind(tmp_path: Path) -> None:
    outbox = await Outbox.open(OutboxParams(tmp_path))
    seq = await kept(outbox, MESSAGES, message(uuid.uuid4(), uuid.uuid4(), 1))
    await outbox.remove([seq])
    await outbox.aclose()
    assert names(tmp_path) == []


async def test_the_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    outbox = await Outbox.open(OutboxParams(tmp_path / "new"))
    try:
        await kept(outbox, MESSAGES, message(uuid.uuid4(), uuid.uuid4(), 1))
        assert modes(tmp_path / "new") == {name: 0o600 for name in names(tmp_path / "new")}
        assert modes(tmp_path)["new"] == 0o700
    finally:
        await outbox.aclose()


async def test_a_full_outbox_refuses_by_rows_and_by_bytes(tmp_path: Path) -> None:
    user = uuid.uuid4()
    outbox = await Outbox.open(OutboxParams(tmp_path, max_rows=2, max_bytes=10_000))
    try:
        await kept(outbox, MEMORIES, memory(user, 1))
        await kept(outbox, MEMORIES, memory(user, 2))
        with pytest.raises(OutboxFullError) as caught:
            await kept(outbox, MEMORIES, memory(user, 3))
        assert caught.value.retryable
        assert "not accepted" in caught.value.message
        assert outbox.stats().rows == 2
    finally:
        await outbox.aclose()

    small = await Outbox.open(OutboxParams(tmp_path / "small", max_rows=100, max_bytes=400))
    try:
        await kept(small, MESSAGES, message(user, uuid.uuid4(), 1))
        with pytest.raises(OutboxFullError):
            await kept(small, MESSAGES, MessageWrite(uuid.uuid4(), uuid.uuid4(), user, "user", "x" * 300, T0))
        assert small.stats().rows == 1  # the refused write's reservation was given back
    finally:
        await small.aclose()


async def test_an_unwritable_folder_is_a_clear_error_naming_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    write_garbage(blocker)
    with pytest.raises(OutboxError) as caught:
        await Outbox.open(OutboxParams(blocker / "outbox"))
    assert "OUTBOX_DIR" in caught.value.message
    assert not caught.value.retryable


async def test_a_corrupt_file_of_a_dead_process_is_moved_aside_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_garbage(tmp_path / "outbox-1-dead.db")
    with caplog.at_level(logging.ERROR, logger="companion.outbox"):
        outbox = await Outbox.open(OutboxParams(tmp_path))
    try:
        assert outbox.take_recovered() == []
        assert "outbox-1-dead.db.corrupt" in names(tmp_path)  # kept for a human, never deleted
        assert [r.getMessage() for r in caplog.records] == [
            "outbox file of a dead process is not readable; moved aside"
        ]
    finally:
        await outbox.aclose()


def test_a_full_disk_is_a_full_outbox_and_keeps_nothing_of_the_group(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    db.execute(
        "create table entries (seq integer primary key autoincrement, lane text, idempotency_key text, body blob)"
    )
    db.execute("insert into entries (lane, idempotency_key, body) values ('messages', 'k', x'00')")
    db.execute(f"pragma max_page_count = {db.execute('pragma page_count').fetchone()[0]}")  # SQLite's "disk full"
    with pytest.raises(OutboxFullError) as caught:
        outbox_append(db, [(MESSAGES, "a", b"x" * 5_000), (MESSAGES, "b", b"y" * 5_000)])
    assert "disk" in caught.value.message
    assert db.execute("select count(*) from entries").fetchone() == (1,)
    db.close()


# Under the batcher ------------------------------------------------------------------------------------------------


async def test_a_write_is_in_the_outbox_before_it_is_acknowledged_and_leaves_when_stored(
    database: Database, tmp_path: Path
) -> None:
    store, user, conversation = database.storage, uuid.uuid4(), uuid.uuid4()
    outbox = await Outbox.open(OutboxParams(tmp_path / "outbox"))
    async with DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=outbox
    ) as batcher:
        async with database.lock():
            stored = [batcher.upsert_memory(memory(user, 1)), batcher.append_message(message(user, conversation, 1))]
            await batcher.durable()
            assert [lane for lane, _ in rows_in(tmp_path / "outbox")] == [MEMORIES, MESSAGES]
            assert not any(f.done() for f in stored)  # acknowledged, not yet stored
        await asyncio.gather(*stored)
        await batcher.flush()
    assert rows_in(tmp_path / "outbox") == []
    assert len(await store.list_memories(user)) == 1
    await outbox.aclose()


async def test_what_a_dead_database_left_at_close_is_replayed_once_by_the_next_start(
    database: Database, tmp_path: Path
) -> None:
    store, user, conversation = database.storage, uuid.uuid4(), uuid.uuid4()
    await store.start_conversation(user, conversation, at=T0)
    folder = tmp_path / "outbox"
    outbox = await Outbox.open(OutboxParams(folder))
    batcher = DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=SHORT_CLOSE, outbox=outbox)
    batcher.start()
    async with database.lock():
        messages = [message(user, conversation, n) for n in range(9)]
        futures = [batcher.append_message(m) for m in messages]
        futures.append(batcher.finish_conversation(ConversationEnd(user, conversation, T0, "We talked.", ("x",))))
        await batcher.durable()
        await batcher.aclose()
    await outbox.aclose()
    assert all(isinstance(f.exception(), StorageError) for f in futures)
    assert batcher.stats().kept_for_next_start == 10
    await store.append_messages(messages[:3])  # stored once already (a crash after the commit, before the delete)

    again = await Outbox.open(OutboxParams(folder))
    async with DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=again
    ) as replaying:
        assert replaying.stats().replayed == 10
        assert replaying.stats().accepted == 0  # a replay is not a new write: each was counted once, when accepted
        await replaying.flush()  # waits for the replayed writes too
        assert [m.id for m in await store.recent_messages(user, limit=100)] == [m.id for m in messages]
    await again.aclose()
    [ended] = await store.recent_conversations(user)
    assert (ended.summary, ended.open_threads, ended.ended_at) == ("We talked.", ("x",), T0)
    assert names(folder) == []


async def test_a_replayed_old_value_never_overwrites_a_newer_one(database: Database, tmp_path: Path) -> None:
    store, user = database.storage, uuid.uuid4()
    folder = tmp_path / "outbox"
    dead = await Outbox.open(OutboxParams(folder))
    await kept(dead, MEMORIES, MemoryWrite(user, "FACT", "city", "Porto", 0.5, "tool", T0))
    await kept(dead, MEMORIES, MemoryWrite(user, "FACT", "city", "Lisbon", 0.5, "tool", T0 + dt.timedelta(hours=1)))
    await kept(dead, MEMORIES, MemoryWrite(user, "FACT", "job", "baker", 0.5, "tool", T0))
    await dead.aclose()
    # Meanwhile another session stored a newer job; the older city values replay in order, the last one wins.
    await store.upsert_memories([MemoryWrite(user, "FACT", "job", "teacher", 0.5, "tool", T0 + dt.timedelta(days=1))])

    outbox = await Outbox.open(OutboxParams(folder))
    async with DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=outbox
    ) as batcher:
        await batcher.flush()
    await outbox.aclose()
    assert {m.key: m.value for m in await store.list_memories(user)} == {"city": "Lisbon", "job": "teacher"}


async def test_a_full_outbox_refuses_the_write_before_it_is_accepted(database: Database, tmp_path: Path) -> None:
    store, user = database.storage, uuid.uuid4()
    outbox = await Outbox.open(OutboxParams(tmp_path / "outbox", max_rows=3))
    async with DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=outbox
    ) as batcher:
        async with database.lock():
            accepted = [batcher.upsert_memory(memory(user, n)) for n in range(3)]
            with pytest.raises(OutboxFullError):
                batcher.upsert_memory(memory(user, 3))
            await batcher.durable()
            assert batcher.stats().rejected == 1
        await asyncio.gather(*accepted)
        await eventually(lambda: outbox.stats().rows == 0)  # confirmed rows leave just after their callers hear
        batcher.upsert_memory(memory(user, 3))  # room again
        await batcher.flush()
    await outbox.aclose()
    assert len(await store.list_memories(user)) == 4


async def test_memory_access_counters_bypass_the_outbox(database: Database, tmp_path: Path) -> None:
    store, user = database.storage, uuid.uuid4()
    await store.upsert_memories([memory(user, 1)])
    outbox = await Outbox.open(OutboxParams(tmp_path / "outbox"))
    async with DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=outbox
    ) as batcher:
        async with database.lock():
            batcher.record_access(MemoryAccess(user, (("FACT", "key_1"),), T0))
            await batcher.durable()
            assert rows_in(tmp_path / "outbox") == []
        await batcher.flush()
    await outbox.aclose()
    [stored] = await store.list_memories(user)
    assert stored.access_count == 1


async def test_a_row_the_database_refuses_for_good_leaves_the_outbox(database: Database, tmp_path: Path) -> None:
    store, user = database.storage, uuid.uuid4()
    outbox = await Outbox.open(OutboxParams(tmp_path / "outbox"))
    async with (
        database.refuse_value("poison-row"),
        DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=outbox) as b,
    ):
        good = b.upsert_memory(memory(user, 1))
        poisoned = b.upsert_memory(MemoryWrite(user, "FACT", "bad", "poison-row", 0.5, "tool", T0))
        await asyncio.wait([good, poisoned])
        await b.flush()
    assert isinstance(poisoned.exception(), StorageError)
    assert rows_in(tmp_path / "outbox") == []  # replaying it would fail forever
    await outbox.aclose()


async def test_writes_offered_just_before_aclose_are_kept_and_every_caller_hears(
    database: Database, tmp_path: Path
) -> None:
    store, user, conversation = database.storage, uuid.uuid4(), uuid.uuid4()
    outbox = await Outbox.open(OutboxParams(tmp_path / "outbox"))
    batcher = DatabaseBatcher(metrics=Metrics(CollectorRegistry()), storage=store, params=SHORT_CLOSE, outbox=outbox)
    batcher.start()
    async with database.lock():
        futures = [batcher.append_message(message(user, conversation, n)) for n in range(10)]
        await asyncio.wait_for(batcher.aclose(), timeout=5)  # no durable() first: the append is under way
    await outbox.aclose()
    assert all(isinstance(f.exception(), StorageError) for f in futures)
    assert batcher.stats().kept_for_next_start == 10
    assert len(rows_in(tmp_path / "outbox")) == 10


async def test_a_replayed_write_older_than_a_later_forget_is_dropped_not_stored(
    database: Database, tmp_path: Path
) -> None:
    store, user, other, conversation = database.storage, uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    folder = tmp_path / "outbox"
    dead = await Outbox.open(OutboxParams(folder))  # a process killed while the database was down
    await kept(dead, MEMORIES, MemoryWrite(user, "FACT", "pin", "Their PIN is 4821", 0.5, "tool", T0))
    await kept(dead, MESSAGES, MessageWrite(uuid.uuid4(), conversation, user, "user", "My PIN is 4821", T0))
    await kept(dead, MEMORIES, MemoryWrite(other, "FACT", "city", "Lives in Porto", 0.5, "tool", T0))
    await dead.aclose()
    # Meanwhile, in another session, the user asked to forget; a write made after it is theirs to keep.
    await store.record_forgetting(user, at=T0 + dt.timedelta(minutes=1))
    outbox = await Outbox.open(OutboxParams(folder))
    async with DatabaseBatcher(
        metrics=Metrics(CollectorRegistry()), storage=store, params=FAST, outbox=outbox
    ) as batcher:
        await batcher.flush()
        assert batcher.stats().dropped_as_forgotten == 2
        batcher.upsert_memory(MemoryWrite(user, "FACT", "tea", "Loves tea", 0.5, "tool", T0 + dt.timedelta(hours=1)))
        await batcher.flush()
    await outbox.aclose()
    assert [m.value for m in await store.list_memories(user)] == ["Loves tea"]
    assert await store.recent_messages(user) == []
    assert [m.value for m in await store.list_memories(other)] == ["Lives in Porto"]  # another user's: stored
    assert names(folder) == []
