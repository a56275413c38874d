"""The fields of one user's memories as columns, with no Python object per memory.

Kept as :class:`IndexedMemory` objects, 100,000 memories cost about 3 KB each and every full garbage collection
walks them all. Here a memory is a row: its category a small code, its key and value UTF-8 bytes in one buffer, its
importance and times numbers in arrays (a time as unix seconds, which float64 holds to 0.2 µs today, and a code
for its time zone: ``fromtimestamp`` gives the same datetime back). :meth:`MemoryTable.memory` makes the
IndexedMemory when a caller asks for it.

Two columns are the owner's bookkeeping, kept here so that it too costs no object per memory: each memory's
stored ``version`` and a ``key_hash`` (a uint64 the owner derives from the memory's identity), found back in one
vectorised compare.

Rows are dense, ``0 .. len - 1``: removing a row moves the last one into its place, as the index's other arrays
do. A removed or replaced memory's bytes are overwritten with zeros at once and the space reclaimed later.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from rag_system.arrays import fitted

T = TypeVar("T", bound=Hashable)

_MIN_GARBAGE = 1 << 16  # bytes of overwritten text below which the buffer is not worth rewriting


@dataclass(frozen=True, slots=True)
class IndexedMemory:
    category: str
    key: str
    value: str
    importance: float
    created_at: dt.datetime
    updated_at: dt.datetime


class MemoryTable:
    def __init__(self, *, capacity: int = 64) -> None:
        # "<category code>\0<key>" -> row. Only str and int in it, so the garbage collector does not track it.
        self._rows: dict[str, int] = {}
        self._categories: Codes[str] = Codes()
        self._time_zones: Codes[dt.tzinfo | None] = Codes()
        self._category = np.zeros(capacity, dtype=np.uint16)
        self._zones = np.zeros((capacity, 2), dtype=np.uint16)  # created_at's and updated_at's
        self._importance = np.zeros(capacity, dtype=np.float64)  # as given, for the IndexedMemory
        self._ranking_importance = np.zeros(capacity, dtype=np.float32)  # as the ranking has always read it
        self._created = np.zeros(capacity, dtype=np.float64)  # unix seconds
        self._updated = np.zeros(capacity, dtype=np.float64)
        self._spans = np.zeros((capacity, 3), dtype=np.int64)  # key start, value start, value end in _text
        self._version = np.zeros(capacity, dtype=np.int64)
        self._key_hash = np.zeros(capacity, dtype=np.uint64)
        self._text = bytearray()
        self._garbage = 0  # bytes of _text that no row uses
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def importance(self) -> np.ndarray:
        return self._importance[: self._size]

    @property
    def ranking_importance(self) -> np.ndarray:
        return self._ranking_importance[: self._size]

    @property
    def created(self) -> np.ndarray:
        return self._created[: self._size]

    @property
    def updated(self) -> np.ndarray:
        return self._updated[: self._size]

    def version(self, row: int) -> int:
        return int(self._version[row])

    def identity(self, row: int) -> tuple[str, str]:
        """The row's (category, key), without making the rest of its memory."""
        key_start, value_start, _ = self._spans[row].tolist()
        category = self._categories.values[self._category[row].item()]
        return category, self._text[key_start:value_start].decode("utf-8", "surrogatepass")

    def with_key_hashes(self, hashes: Sequence[int]) -> np.ndarray:
        """Rows whose key_hash is one of ``hashes``, in row order."""
        wanted = np.fromiter(hashes, dtype=np.uint64)
        return np.flatnonzero(np.isin(self._key_hash[: self._size], wanted))

    def with_versions(self, *, above: int, up_to: int) -> np.ndarray:
        """Rows whose version is above ``above`` and at most ``up_to``, in row order."""
        versions = self._version[: self._size]
        return np.flatnonzero((versions > above) & (versions <= up_to))

    def row(self, category: str, key: str) -> int | None:
        code = self._categories.find(category)
        return None if code is None else self._rows.get(f"{code}\0{key}")

    def memory(self, row: int) -> IndexedMemory:
        key_start, value_start, end = self._spans[row].tolist()  # Python ints and floats: a search makes a few
        created_zone, updated_zone = self._zones[row].tolist()
        zones = self._time_zones.values
        return IndexedMemory(
            category=self._categories.values[self._category[row].item()],
            key=self._text[key_start:value_start].decode("utf-8", "surrogatepass"),
            value=self._text[value_start:end].decode("utf-8", "surrogatepass"),
            importance=self._importance[row].item(),
            created_at=dt.datetime.fromtimestamp(self._created[row].item(), zones[created_zone]),
            updated_at=dt.datetime.fromtimestamp(self._updated[row].item(), zones[updated_zone]),
        )

    def newest(self, category: str | None = None) -> np.ndarray:
        """Rows by time of last update, newest first, equal times in row order; only ``category``'s if given."""
        rows = np.arange(self._size)
        if category is not None:
            code = self._categories.find(category)
            rows = rows[:0] if code is None else np.flatnonzero(self._category[: self._size] == code)
        return rows[np.argsort(-self._updated[rows], kind="stable")]

    def most_important(self) -> np.ndarray:
        """Rows by importance, then time of last update, both highest first, equal ones in row order."""
        return np.lexsort((-self.updated, -self.importance))

    def count_by_category(self) -> dict[str, int]:
        """How many memories each category holds, categories in the order their first row comes."""
        codes = self._category[: self._size]
        present, first = np.unique(codes, return_index=True)
        counts = np.bincount(codes)
        return {self._categories.values[code]: int(counts[code]) for code in present[np.argsort(first)].tolist()}

    def append(self, memory: IndexedMemory, *, version: int = 0, key_hash: int = 0) -> int:
        """Add a memory no row holds yet; returns its row."""
        row = self._size
        if row == len(self._category):
            self.reserve(max(1, 2 * row))
        self._size += 1
        self._rows[f"{self._categories.code(memory.category)}\0{memory.key}"] = row
        self._write(row, memory, version=version, key_hash=key_hash)
        return row

    def replace(self, row: int, memory: IndexedMemory, *, version: int = 0, key_hash: int = 0) -> None:
        """Put a new version of the row's memory (same category and key) in its place."""
        self._erase(row)
        self._write(row, memory, version=version, key_hash=key_hash)
        self._maybe_rewrite_text()

    def remove(self, row: int) -> int:
        """Remove a row; the last row moves into its place. Returns the row that moved (``row`` itself if last)."""
        del self._rows[self._identity(row)]
        self._erase(row)
        last = self._size - 1
        if row != last:
            for column in (
                self._category,
                self._zones,
                self._importance,
                self._ranking_importance,
                self._created,
                self._updated,
                self._spans,
                self._version,
                self._key_hash,
            ):
                column[row] = column[last]
            self._rows[self._identity(row)] = row
        self._size -= 1
        self._maybe_rewrite_text()
        return last

    def reserve(self, capacity: int) -> None:
        """Room for ``capacity`` rows, exactly."""
        if capacity <= len(self._category):
            return
        size = capacity
        self._category = fitted(self._category, size)
        self._zones = fitted(self._zones, size)
        self._importance = fitted(self._importance, size)
        self._ranking_importance = fitted(self._ranking_importance, size)
        self._created = fitted(self._created, size)
        self._updated = fitted(self._updated, size)
        self._spans = fitted(self._spans, size)
        self._version = fitted(self._version, size)
        self._key_hash = fitted(self._key_hash, size)

    def _write(self, row: int, memory: IndexedMemory, *, version: int, key_hash: int) -> None:
        key = memory.key.encode("utf-8", "surrogatepass")
        value = memory.value.encode("utf-8", "surrogatepass")
        start = len(self._text)
        self._text += key
        self._text += value
        self._spans[row] = (start, start + len(key), start + len(key) + len(value))
        self._category[row] = self._categories.code(memory.category)
        self._zones[row] = (
            self._time_zones.code(memory.created_at.tzinfo),
            self._time_zones.code(memory.updated_at.tzinfo),
        )
        self._importance[row] = self._ranking_importance[row] = memory.importance
        self._created[row] = memory.created_at.timestamp()
        self._updated[row] = memory.updated_at.timestamp()
        self._version[row], self._key_hash[row] = version, key_hash

    def _erase(self, row: int) -> None:
        """Overwrite the row's key and value: what was forgotten does not linger in the buffer."""
        start, _, end = (int(i) for i in self._spans[row])
        self._text[start:end] = bytes(end - start)
        self._garbage += end - start

    def _identity(self, row: int) -> str:
        key_start, value_start, _ = (int(i) for i in self._spans[row])
        key = self._text[key_start:value_start].decode("utf-8", "surrogatepass")
        return f"{int(self._category[row])}\0{key}"

    def _maybe_rewrite_text(self) -> None:
        """Reclaim the overwritten bytes once they outweigh the ones in use."""
        if self._garbage < max(_MIN_GARBAGE, len(self._text) // 2):
            return
        spans = self._spans[: self._size]
        lengths = spans[:, 2] - spans[:, 0]
        starts = np.cumsum(lengths) - lengths
        with memoryview(self._text) as text:
            rewritten = bytearray(
                b"".join(text[int(a) : int(b)] for a, b in zip(spans[:, 0], spans[:, 2], strict=True))
            )
        spans += (starts - spans[:, 0])[:, None]
        self._text, self._garbage = rewritten, 0


class Codes(Generic[T]):
    """Small integers for the few distinct values of a column (categories, time zones)."""

    def __init__(self) -> None:
        self._codes: dict[T, int] = {}
        self.values: list[T] = []  # code -> value

    def find(self, value: T) -> int | None:
        return self._codes.get(value)

    def code(self, value: T) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self.values)
            self.values.append(value)
        return code
