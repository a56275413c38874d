"""Which memories hold which terms, and how often: an inverted index in numpy arrays, for BM25.

Every posting is an entry of flat arrays, in the order written: the term's id, the row, the term's count in the
memory (``tf``) and whether it is live. A row's entries are written together, so dropping or moving a row touches
one slice. A compaction copies the live entries' rows and counts into arrays sorted by term (CSR: term ``t``'s are
at ``start[t]:start[t + 1]``), which a search reads as slices; entries written since form a short unsorted tail
that a search scans. A dropped row's sorted entries point at :data:`DROPPED` until the next compaction, which
writes start once the tail or the dropped entries pass a share of the whole: writes stay cheap, reads stay slices.

No Python object per entry or per memory: the garbage collector never walks the postings (a dict of str to int
is not tracked), and a memory costs a few bytes a term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DROPPED = -1  # the row of a sorted entry whose memory was dropped: the caller's spare last score takes it
_NO_ROWS, _NO_TF = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
MIN_TAIL = 512  # entries: below this an unsorted tail or dropped entries cost less to scan than to compact


class Postings:
    def __init__(self, *, rows: int = 64, entries: int = 256) -> None:
        self._ids: dict[str, int] = {}  # term -> id
        self._df = np.zeros(64, dtype=np.int32)  # id -> live rows holding the term
        self._term = np.zeros(entries, dtype=np.int32)  # per entry, in the order written
        self._row = np.zeros(entries, dtype=np.int32)
        self._tf = np.zeros(entries, dtype=np.float32)
        self._live = np.zeros(entries, dtype=bool)
        self._size = 0  # entries written
        self._dead = 0  # of them, dropped
        self._first = np.zeros(rows, dtype=np.int64)  # per row: its first entry
        self._count = np.zeros(rows, dtype=np.int32)  # and how many
        # Entries [0, _sorted) as of the last compaction, grouped by term id: rows and counts.
        self._start = np.zeros(1, dtype=np.int64)  # term id -> where its group starts
        self._sorted_row = np.zeros(0, dtype=np.int32)
        self._sorted_tf = np.zeros(0, dtype=np.float32)
        self._position = np.zeros(0, dtype=np.int32)  # entry -> its place in the sorted arrays
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
        """Take a row's entries out."""
        entries = self._entries_of(row)
        self._live[entries] = False
        self._df[self._term[entries]] -= 1
        if entries.start < self._sorted:  # a row's entries are all sorted or all in the tail
            self._sorted_row[self._position[entries]] = DROPPED
        self._dead += entries.stop - entries.start
        self._count[row] = 0
        self._maybe_compact()

    def move(self, source: int, target: int) -> None:
        """Row ``source`` becomes row ``target`` (which has no entries): its entries are renumbered in place."""
        entries = self._entries_of(source)
        self._row[entries] = target
        if entries.start < self._sorted:
            self._sorted_row[self._position[entries]] = target
        self._first[target], self._count[target] = self._first[source], self._count[source]
        self._count[source] = 0

    def lookup(self, terms: Sequence[str]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """For each term: how many memories hold it (df), the rows holding it and how often (tf), in no particular
        order. A live row appears once; ``rows`` may also hold :data:`DROPPED`, whose scores belong in a spare slot."""
        ids = [self._ids.get(term, -1) for term in terms]
        tail = np.zeros(0, dtype=np.int64)
        if self._sorted < self._size:  # entries written since the last compaction: one pass for all the terms
            asked = np.zeros(len(self._ids), dtype=bool)
            asked[[i for i in ids if i >= 0]] = True
            hit = asked[self._term[self._sorted : self._size]] & self._live[self._sorted : self._size]
            tail = np.flatnonzero(hit) + self._sorted
        tail_terms = self._term[tail]
        in_tail = set(tail_terms.tolist())  # the terms the tail holds: the others need no filtering
        found = []
        for term_id in ids:
            df = int(self._df[term_id]) if term_id >= 0 else 0
            if df == 0:
                found.append((0, _NO_ROWS, _NO_TF))
                continue
            group = slice(0, 0)  # a term first seen since the last compaction has no sorted entries
            if term_id + 1 < len(self._start):
                group = slice(int(self._start[term_id]), int(self._start[term_id + 1]))
            rows, tf = self._sorted_row[group], self._sorted_tf[group]  # views
            if term_id in in_tail:
                entries = tail[tail_terms == term_id]
                rows, tf = np.concatenate((rows, self._row[entries])), np.concatenate((tf, self._tf[entries]))
            found.append((df, rows, tf))
        return found

    def compact(self) -> None:
        """Forget the dropped entries and the terms no memory holds any more, and sort every entry by term."""
        keep = self._live[: self._size]
        renumbered = np.cumsum(keep, dtype=np.int64) - 1  # old entry -> new, for kept entries
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
        self._df = _fitted(self._df[: len(self._ids)][used], max(64, 2 * int(used.sum())))
        if not used.all():
            self._ids = {term: int(term_ids[i]) for term, i in self._ids.items() if used[i]}
        self._size, self._dead, self._sorted = size, 0, size
        order = np.argsort(self._term[:size], kind="stable")
        self._sorted_row, self._sorted_tf = self._row[order], self._tf[order]
        self._position = np.empty(size, dtype=np.int32)
        self._position[order] = np.arange(size, dtype=np.int32)
        counts = np.bincount(self._term[:size], minlength=len(self._ids))
        self._start = np.concatenate(([0], np.cumsum(counts, dtype=np.int64)))

    def _entries_of(self, row: int) -> slice:
        first = int(self._first[row]) if row < len(self._first) else 0
        count = int(self._count[row]) if row < len(self._count) else 0
        return slice(first, first + count)

    def _maybe_compact(self) -> None:
        tail, limit = self._size - self._sorted, max(MIN_TAIL, self._sorted // 16)
        if tail > limit or self._dead > max(MIN_TAIL, self._size // 4):
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
