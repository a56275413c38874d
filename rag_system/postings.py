"""Which memories hold which terms, and how often: an inverted index in numpy arrays, for BM25.

Postings are kept as one entry per (row, distinct term) in flat arrays: the term's id, the row, the term's count
in the memory (``tf``) and whether the entry is live. A row's entries are written together, so writing, dropping
and moving a row touches one slice. For search, a compaction sorts the entry ids by term (CSR: ``order`` and
``start``, the entries of term ``t`` are ``order[start[t]:start[t + 1]]``); entries written since are scanned,
and dropped ones are tombstones until the next compaction, which a write starts once either passes a share of the
whole, so writes stay cheap and the unsorted tail stays short.

No Python object per entry or per memory: the garbage collector never walks the postings (a dict of str to int
is not tracked), and 100,000 memories cost a few bytes a term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_TAIL = 2_048  # entries: below this an unsorted tail or tombstones cost less to scan than to compact
_NOTHING = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))


class Postings:
    def __init__(self, *, rows: int = 64, entries: int = 256) -> None:
        self._ids: dict[str, int] = {}  # term -> id
        self._df = np.zeros(64, dtype=np.int32)  # id -> live rows holding the term
        self._term = np.zeros(entries, dtype=np.int32)  # per entry
        self._row = np.zeros(entries, dtype=np.int32)
        self._tf = np.zeros(entries, dtype=np.float32)
        self._live = np.zeros(entries, dtype=bool)
        self._size = 0  # entries written
        self._dead = 0  # of them, tombstones
        self._first = np.zeros(rows, dtype=np.int64)  # per row: its first entry
        self._count = np.zeros(rows, dtype=np.int32)  # and how many
        self._order = np.zeros(0, dtype=np.int32)  # entry ids [0, _sorted) grouped by term id
        self._start = np.zeros(1, dtype=np.int64)  # term id -> where its group starts in _order
        self._sorted = 0

    def df(self, term: str) -> int:
        """How many memories hold the term."""
        term_id = self._ids.get(term)
        return 0 if term_id is None else int(self._df[term_id])

    def add(self, row: int, terms: Sequence[str]) -> None:
        """Post a row that has no entries (new, dropped or moved away): its terms, repeats counted."""
        counts: dict[str, int] = {}
        for term in terms:
            counts[term] = counts.get(term, 0) + 1
        ids = np.fromiter((self._ids.setdefault(term, len(self._ids)) for term in counts), np.int32, len(counts))
        self._reserve_rows(row + 1)
        self._reserve_terms(len(self._ids))
        start, end = self._size, self._size + len(counts)
        self._reserve_entries(end)
        self._term[start:end] = ids
        self._row[start:end] = row
        self._tf[start:end] = np.fromiter(counts.values(), np.float32, len(counts))
        self._live[start:end] = True
        self._size = end
        self._first[row], self._count[row] = start, len(counts)
        self._df[ids] += 1  # a row's term ids are distinct
        self._maybe_compact()

    def drop(self, row: int) -> None:
        """Take a row's entries out: they become tombstones."""
        entries = self._entries_of(row)
        self._live[entries] = False
        self._df[self._term[entries]] -= 1
        self._dead += entries.stop - entries.start
        self._count[row] = 0
        self._maybe_compact()

    def move(self, source: int, target: int) -> None:
        """Row ``source`` becomes row ``target`` (which has no entries): its entries are renumbered in place."""
        entries = self._entries_of(source)
        self._row[entries] = target
        self._first[target], self._count[target] = self._first[source], self._count[source]
        self._count[source] = 0

    def lookup(self, terms: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each term, the rows holding it and how often (``tf``), in no particular order; empty when none."""
        ids = [self._ids.get(term, -1) for term in terms]
        tail = np.zeros(0, dtype=np.int64)
        if self._sorted < self._size:  # entries written since the last compaction: one scan for all the terms
            wanted = [i for i in ids if i >= 0]
            tail = np.flatnonzero(np.isin(self._term[self._sorted : self._size], wanted)) + self._sorted
        tail_terms = self._term[tail]
        found = []
        for term_id in ids:
            if term_id < 0 or self._df[term_id] == 0:
                found.append(_NOTHING)
                continue
            entries = self._sorted_entries(term_id)
            if len(tail):
                entries = np.concatenate((entries, tail[tail_terms == term_id]))
            entries = entries[self._live[entries]]
            found.append((self._row[entries], self._tf[entries]))
        return found

    def compact(self) -> None:
        """Drop the tombstones and the terms no memory holds any more, and sort every entry by term."""
        keep = self._live[: self._size]
        renumbered = np.cumsum(keep, dtype=np.int64) - 1  # old entry id -> new, for kept entries
        used = self._df[: len(self._ids)] > 0
        term_ids = np.cumsum(used, dtype=np.int32) - 1  # old term id -> new, for used terms
        posted = self._count > 0  # a posted row's entries are all live
        first = np.zeros_like(self._first)
        first[posted] = renumbered[self._first[posted]]
        self._first = first
        size = int(keep.sum())
        room = size + size // 4 + 256
        self._term = _fitted(term_ids[self._term[: self._size][keep]], room)
        self._row = _fitted(self._row[: self._size][keep], room)
        self._tf = _fitted(self._tf[: self._size][keep], room)
        self._live = _fitted(np.ones(size, dtype=bool), room)
        self._df = _fitted(self._df[: len(self._ids)][used], max(64, int(used.sum()) * 2))
        self._ids = {term: int(term_ids[i]) for term, i in self._ids.items() if used[i]}
        self._size, self._dead, self._sorted = size, 0, size
        self._order = np.argsort(self._term[:size], kind="stable").astype(np.int32)
        counts = np.bincount(self._term[:size], minlength=len(self._ids))
        self._start = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))

    def _sorted_entries(self, term_id: int) -> np.ndarray:
        if term_id + 1 >= len(self._start):  # a term first seen since the last compaction
            return np.zeros(0, dtype=np.int32)
        return self._order[self._start[term_id] : self._start[term_id + 1]]

    def _entries_of(self, row: int) -> slice:
        first = int(self._first[row]) if row < len(self._first) else 0
        count = int(self._count[row]) if row < len(self._count) else 0
        return slice(first, first + count)

    def _maybe_compact(self) -> None:
        if self._size - self._sorted > max(MIN_TAIL, self._sorted // 8) or self._dead > max(MIN_TAIL, self._size // 4):
            self.compact()

    def _reserve_rows(self, needed: int) -> None:
        if needed > len(self._first):
            size = max(needed, 2 * len(self._first))
            self._first, self._count = _fitted(self._first, size), _fitted(self._count, size)

    def _reserve_terms(self, needed: int) -> None:
        if needed > len(self._df):
            self._df = _fitted(self._df, max(needed, 2 * len(self._df)))

    def _reserve_entries(self, needed: int) -> None:
        if needed > len(self._term):
            size = max(needed, 2 * len(self._term))
            self._term, self._row = _fitted(self._term, size), _fitted(self._row, size)
            self._tf, self._live = _fitted(self._tf, size), _fitted(self._live, size)


def _fitted(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` in a new buffer of ``size`` entries: cut, or padded with zeros."""
    fitted = np.zeros(size, dtype=array.dtype)
    fitted[: min(size, len(array))] = array[:size]
    return fitted
