"""SQLite only: the change feed is read as one snapshot while another process writes to the same file."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from infrastructure.storage.sqlite import SqliteStorage
from tests.storage.test_contract import memory


async def test_the_change_feed_is_one_snapshot_while_another_process_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, writer = await SqliteStorage.open(tmp_path / "c.db"), await SqliteStorage.open(tmp_path / "c.db")
    try:
        user = uuid.uuid4()
        await writer.upsert_memories([memory(user, "pin", "Bank PIN is 4921")])
        version = await writer.user_version(user)
        read = reader._fetchall
        reads: list[str] = []

        async def another_process_deletes_after_the_first_read(sql: str, params: Iterable[Any] = ()) -> Any:
            rows = await read(sql, params)
            reads.append(sql)
            if len(reads) == 1:  # the version has been read: the delete commits before the rows are
                await writer.delete_memories(user, [("FACT", "pin")])
            return rows

        monkeypatch.setattr(reader, "_fetchall", another_process_deletes_after_the_first_read)
        changes = await reader.changes_since(user, 0)

        assert changes.version == version  # what was read belongs to it: the memory, not the later tombstone
        assert [m.key for m in changes.memories] == ["pin"]
        assert changes.deleted == ()
        assert await reader.user_version(user) > version  # the delete did commit meanwhile
    finally:
        await reader.aclose()
        await writer.aclose()
