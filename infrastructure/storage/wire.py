"""JSON shapes of the rows, shared by the backends that send rows as JSON.

PostgreSQL receives batches as one ``jsonb`` parameter (``jsonb_to_recordset``), PostgREST as a JSON body; both
read the same shapes, written here once. Floats of a float32 embedding are written with ``repr`` of their exact
value, so they read back bit for bit.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np

from infrastructure.storage.records import MemoryAccess, MemoryWrite, MessageWrite


def time_text(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat()


def parse_time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def embedding_list(embedding: np.ndarray | None) -> list[float] | None:
    return None if embedding is None else np.asarray(embedding, dtype=np.float32).tolist()


def embedding_array(values: Sequence[float] | None) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float32)


def memory_write_row(write: MemoryWrite) -> dict[str, Any]:
    return {
        "user_id": str(write.user_id),
        "category": write.category,
        "key": write.key,
        "value": write.value,
        "importance": float(write.importance),
        "source": write.source,
        "embedding": embedding_list(write.embedding),
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


def memory_identity(user_id: uuid.UUID | str, category: str, key: str) -> tuple[str, str, str]:
    return (str(user_id), category, key)
