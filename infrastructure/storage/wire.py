"""Rows on the wire, in both directions, written once for every backend.

Embeddings are stored as bytes: float32 little-endian, 4 bytes a dimension (a SQLite BLOB, a PostgreSQL bytea,
PostgREST's ``\\x``-hex text of that bytea). They read back bit for bit, and never pass through text floats.

Out: PostgREST receives rows as a JSON body (and PostgreSQL the access list as one ``jsonb`` parameter).

In: each backend hands a row as a mapping of column to value, where ids may be ``UUID`` or text, times
``datetime`` or ISO text, JSON columns already decoded and an embedding bytes, hex text or None; the
``*_from_row`` functions turn it into the records of ``records.py``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from infrastructure.storage.records import (
    Conversation,
    Memory,
    MemoryAccess,
    MemoryChange,
    MemoryWrite,
    Message,
    MessageWrite,
    OnboardingAnswers,
    Profile,
    Tombstone,
    UserChanges,
)

Row = Mapping[str, Any]

# A memory's columns, bar the embedding (read only when asked for: it is most of the row's bytes).
MEMORY_COLUMNS = ("id", "user_id", "category", "key", "value", "importance", "source", "created_at", "updated_at",
                  "last_accessed_at", "access_count", "version")  # fmt: skip


def time_text(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat()


def parse_time(value: str | dt.datetime) -> dt.datetime:
    """An ISO-8601 time (or a datetime) as an aware UTC datetime; a time without offset is UTC."""
    parsed = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_optional_time(value: str | dt.datetime | None) -> dt.datetime | None:
    return None if value is None else parse_time(value)


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


EMBEDDING_DTYPE = np.dtype("<f4")


def embedding_bytes(embedding: np.ndarray | None) -> bytes | None:
    return None if embedding is None else np.asarray(embedding, dtype=EMBEDDING_DTYPE).tobytes()


def embedding_hex(embedding: np.ndarray | None) -> str | None:
    """The bytea literal PostgREST reads and writes."""
    data = embedding_bytes(embedding)
    return None if data is None else "\\x" + data.hex()


def embedding_array(value: bytes | memoryview | str | None) -> np.ndarray | None:
    """Stored bytes (or PostgREST's hex text of them) as a writable float32 vector."""
    if value is None:
        return None
    data = bytes.fromhex(value.removeprefix("\\x")) if isinstance(value, str) else bytes(value)
    return np.frombuffer(data, dtype=EMBEDDING_DTYPE).astype(np.float32)  # astype copies: writable, native order


def memory_write_row(write: MemoryWrite) -> dict[str, Any]:
    return {
        "user_id": str(write.user_id),
        "category": write.category,
        "key": write.key,
        "value": write.value,
        "importance": float(write.importance),
        "source": write.source,
        "embedding": embedding_hex(write.embedding),
        "updated_at": time_text(write.at),
    }


def message_row(message: MessageWrite) -> dict[str, Any]:
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "user_id": str(message.user_id),
        "role": message.role,
        "content": message.content,
        "created_at": time_text(message.at),
    }


def access_rows(accesses: Sequence[MemoryAccess]) -> list[dict[str, str]]:
    return [
        {"user_id": str(a.user_id), "category": category, "key": key, "at": time_text(a.at)}
        for a in accesses
        for category, key in a.keys
    ]


def in_write_order(writes: Sequence[MemoryWrite], rows: Sequence[Row]) -> list[Memory]:
    """Stored rows (read back without their embedding) as memories in the order written, with the embedding
    each write sent: it is what the database now holds, and not reading it back saves its bytes."""
    by_identity = {(str(r["user_id"]), r["category"], r["key"]): r for r in rows}
    return [
        dataclasses.replace(memory_from_row(by_identity[(str(w.user_id), w.category, w.key)]), embedding=w.embedding)
        for w in writes
    ]


def profile_from_row(row: Row) -> Profile:
    return Profile(
        user_id=_uuid(row["user_id"]),
        name=row["name"],
        preferred_name=row["preferred_name"],
        timezone=row["timezone"],
        language=row["language"],
        summary=row["summary"],
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        version=int(row["version"]) if "version" in row.keys() else 0,  # noqa: SIM118 (sqlite3.Row has only keys())
    )


def profile_row(profile: Profile) -> dict[str, Any]:
    """The inverse of :func:`profile_from_row` (JSON-safe: the cache keeps profiles in this shape)."""
    return {
        "user_id": str(profile.user_id),
        "name": profile.name,
        "preferred_name": profile.preferred_name,
        "timezone": profile.timezone,
        "language": profile.language,
        "summary": profile.summary,
        "created_at": time_text(profile.created_at),
        "updated_at": time_text(profile.updated_at),
        "version": profile.version,
    }


def onboarding_from_row(row: Row) -> OnboardingAnswers:
    return OnboardingAnswers(
        user_id=_uuid(row["user_id"]),
        answers=row["answers"],
        submitted_at=parse_time(row["submitted_at"]),
        processed_at=parse_optional_time(row["processed_at"]),
    )


def memory_from_row(row: Row) -> Memory:
    """A memory; the embedding is None when the row was read without it (or ``embedding`` overrides it)."""
    return Memory(
        id=_uuid(row["id"]),
        user_id=_uuid(row["user_id"]),
        category=row["category"],
        key=row["key"],
        value=row["value"],
        importance=float(row["importance"]),
        source=row["source"],
        created_at=parse_time(row["created_at"]),
        updated_at=parse_time(row["updated_at"]),
        last_accessed_at=parse_optional_time(row["last_accessed_at"]),
        access_count=int(row["access_count"]),
        version=int(row["version"]),
        embedding=embedding_array(row["embedding"]) if "embedding" in row.keys() else None,  # noqa: SIM118 (sqlite3.Row has only keys())
    )


def changes_from_json(feed: Row) -> UserChanges:
    """The change feed as 0007's ``companion_changes_since`` returns it (rows as ``to_jsonb`` writes them)."""
    return UserChanges(
        version=int(feed["version"]),
        erased_version=int(feed["erased_version"]),
        memories=tuple(memory_from_row(r) for r in feed["memories"]),
        deleted=tuple(Tombstone(r["key_hash"], int(r["version"])) for r in feed["deleted"]),
        profile=None if feed["profile"] is None else profile_from_row(feed["profile"]),
        everything=bool(feed["everything"]),
    )


def memory_change_from_row(row: Row) -> MemoryChange:
    return MemoryChange(
        user_id=_uuid(row["user_id"]),
        category=row["category"],
        key=row["key"],
        old_value=row["old_value"],
        new_value=row["new_value"],
        changed_at=parse_time(row["changed_at"]),
    )


def conversation_from_row(row: Row) -> Conversation:
    return Conversation(
        id=_uuid(row["id"]),
        user_id=_uuid(row["user_id"]),
        started_at=parse_time(row["started_at"]),
        ended_at=parse_optional_time(row["ended_at"]),
        summary=row["summary"],
        open_threads=tuple(row["open_threads"] or ()),
    )


def message_from_row(row: Row) -> Message:
    return Message(
        id=_uuid(row["id"]),
        conversation_id=_uuid(row["conversation_id"]),
        user_id=_uuid(row["user_id"]),
        role=row["role"],
        content=row["content"],
        created_at=parse_time(row["created_at"]),
    )
