"""Which memories hold which terms, and how often: an inverted index in numpy arrays, for BM25.

The postings are kept sorted by term (CSR: term ``t``'s rows and counts are at ``start[t]:start[t + 1]``), which a
search reads as slices, plus a short unsorted tail of the entries written since the last compaction, which a search
scans. A count (``tf``) is a small integer (uint16), made float32 when searched: the same numbers as ever.

A row's entries are numbered together (``first``, ``count`` per row): a sorted entry's number leads to its place in
the sorted arrays (``position``), a tail entry's to its place in the tail, so dropping or moving a row touches only
its own entries. A dropped row's sorted entries point at :data:`DROPPED` until the next compaction, which merges
the tail into the sorted arrays once the tail or the dropped entries pass a share of the whole (a linear merge, no
sort of the whole): writes stay cheap, reads stay slices. About 10 bytes a posting once sorted: row, count and
position; the sorted entries keep no copy in the order written.

No Python object per entry or per memory: the garbage collector never walks the postings (a dict of str to int
is not tracked), and a memory costs a few bytes a term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rag_system.arrays import fitted

DROPPED = -1  # the row of a sorted entry whose memory was dropped: the caller's spare last score takes it
_NO_ROWS, _NO_TF = np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
MIN_TAIL = 512  # entries: below this an unsorted tail or dropped entries cost less to scan than to compact
MAX_TF = np.iinfo(np.uint16).max  # a value of 1,000 characters repeats no term this often; more is counted as this


class Postings:
    def __init__(self, *, rows: int = 64, entries: int = 256) -> None:
        self._ids: dict[str, int] = {}  # term -> id
        self._df = np.zeros(64, dtype=np.int32)  # id -> live rows holding the term
        self._size = 0  # entries numbered: [0, _sorted) sorted as of the last compaction, the rest the tail
        self._dead = 0  # of them, dropped
        self._first = np.zeros(rows, dtype=np.int32)  # per row: its first entry
        self._count = np.zeros(rows, dtype=np.int32)  # and how many
        # The sorted entries, grouped by term id: rows and counts, and entry -> its place among them.
        self._start = np.zeros(1, dtype=np.int64)  # term id -> where its group starts
        self._sorted_row = np.zeros(0, dtype=np.int32)
        self._sorted_tf = np.zeros(0, dtype=np.uint16)
        self._position = np.zeros(0, dtype=np.int32)
        self._sorted = 0
        # The tail: entry _sorted + i is the tail's i-th, in the order written.
        self._term = np.zeros(entries, dtype=np.int32)
        self._row = np.zeros(entries, dtype=np.int32)
        self._tf = np.zeros(entries, dtype=np.uint16)
        self._live = np.zeros(entries, dtype=bool)

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
        start, end = self._size - self._sorted, self._size - self._sorted + len(counts)  # in the tail
        self._reserve_tail(end)
        self._term[start:end] = ids
        self._row[start:end] = row
        self._tf[start:end] = np.minimum(np.fromiter(counts.values(), np.int64, len(counts)), MAX_TF)
        self._live[start:end] = True
        self._first[row], self._count[row] = self._size, len(counts)
        self._size += len(counts)
        self._df[ids] += 1  # a row's term ids are distinct
        self._maybe_compact()

    def drop(self, row: int) -> None:
        """Take a row's entries out."""
        entries = self._entries_of(row)
        if entries.start < self._sorted:  # a row's entries are all sorted or all in the tail
            places = self._position[entries]
            self._sorted_row[places] = DROPPED
            self._df[np.searchsorted(self._start, places, side="right") - 1] -= 1  # the groups they are in
        else:
            tail = slice(entries.start - self._sorted, entries.stop - self._sorted)
            self._live[tail] = False
            self._df[self._term[tail]] -= 1
        self._dead += entries.stop - entries.start
        self._count[row] = 0
        self._maybe_compact()

    def move(self, source: int, target: int) -> None:
        """Row ``source`` becomes row ``target`` (which has no entries): its entries are renumbered in place."""
        entries = self._entries_of(source)
        if entries.start < self._sorted:
            self._sorted_row[self._position[entries]] = target
        else:
            self._row[entries.start - self._sorted : entries.stop - self._sorted] = target
        self._first[target], self._count[target] = self._first[source], self._count[source]
        self._count[source] = 0

    def lookup(self, terms: Sequence[str]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """For each term: how many memories hold it (df), the rows holding it and how often (tf, float32), in no
        particular order. A live row appears once; ``rows`` may also hold :data:`DROPPED`, whose scores belong in a
        spare slot."""
        ids = [self._ids.get(term, -1) for term in terms]
        tail = np.zeros(0, dtype=np.int64)
        written = self._size - self._sorted
        if written:  # entries written since the last compaction: one pass for all the terms
            asked = np.zeros(len(self._ids), dtype=bool)
            asked[[i for i in ids if i >= 0]] = True
            tail = np.flatnonzero(asked[self._term[:written]] & self._live[:written])
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
            rows, tf = self._sorted_row[group], self._sorted_tf[group]  # a view, and counts as uint16
            if term_id in in_tail:
                entries = tail[tail_terms == term_id]
                rows, tf = np.concatenate((rows, self._row[entries])), np.concatenate((tf, self._tf[entries]))
            found.append((df, rows, tf.astype(np.float32)))
        return found

    def compact(self) -> None:
        """Forget the dropped entries and the terms no memory holds any more, and merge the tail into the sorted
        entries. Kept sorted entries keep their order; a term's tail entries follow its sorted ones."""
        if self._size == self._sorted and self._dead == 0:
            return
        written = self._size - self._sorted
        used = self._df[: len(self._ids)] > 0
        term_ids = np.cumsum(used, dtype=np.int32) - 1  # old term id -> new, for used terms
        terms = int(used.sum())
        # Sorted entries still live, in place order (so grouped by term), and the tail's live ones, by term.
        kept = self._sorted_row != DROPPED
        kept_terms = term_ids[np.repeat(np.arange(len(self._start) - 1, dtype=np.int32), np.diff(self._start))[kept]]
        tail_live = np.flatnonzero(self._live[:written])
        tail_terms = term_ids[self._term[tail_live]]
        by_term = np.argsort(tail_terms, kind="stable")
        sorted_counts = np.bincount(kept_terms, minlength=terms)
        tail_counts = np.bincount(tail_terms, minlength=terms)
        # Where each lands: a kept entry after the tail entries of smaller terms, the k-th tail entry of term t (in
        # term order) after every kept entry of terms up to t.
        kept_place = np.arange(len(kept_terms), dtype=np.int64)
        kept_place += (np.cumsum(tail_counts) - tail_counts)[kept_terms]
        tail_place = np.empty(len(tail_live), dtype=np.int64)
        tail_place[by_term] = np.cumsum(sorted_counts)[tail_terms[by_term]] + np.arange(len(tail_live))
        size = len(kept_terms) + len(tail_live)
        sorted_row = np.empty(size, dtype=np.int32)
        sorted_row[kept_place] = self._sorted_row[kept]
        sorted_row[tail_place] = self._row[tail_live]
        sorted_tf = np.empty(size, dtype=np.uint16)
        sorted_tf[kept_place] = self._sorted_tf[kept]
        sorted_tf[tail_place] = self._tf[tail_live]
        # Entries keep their order, the dropped ones left out: a row's stay together.
        place = np.full(len(self._sorted_row), -1, dtype=np.int64)  # old place -> new
        place[kept] = kept_place
        old_places = self._position[: self._sorted]
        live_entries = np.concatenate((kept[old_places], self._live[:written]))
        renumbered = np.cumsum(live_entries, dtype=np.int64) - 1  # old entry -> new, for live entries
        posted = self._count > 0  # a posted row's entries are all live
        self._first[posted] = renumbered[self._first[posted]]
        self._position = np.concatenate((place[old_places[kept[old_places]]], tail_place)).astype(np.int32)
        self._sorted_row, self._sorted_tf = sorted_row, sorted_tf
        self._start = np.concatenate(([0], np.cumsum(sorted_counts + tail_counts, dtype=np.int64)))
        self._df = fitted(self._df[: len(self._ids)][used], max(64, 2 * terms))
        if not used.all():
            self._ids = {term: int(term_ids[i]) for term, i in self._ids.items() if used[i]}
        self._size, self._dead, self._sorted = size, 0, size
        room = max(256, size // 16 + 256)  # the tail before the next compaction, about
        self._term, self._row = np.zeros(room, dtype=np.int32), np.zeros(room, dtype=np.int32)
        self._tf, self._live = np.zeros(room, dtype=np.uint16), np.zeros(room, dtype=bool)

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
            self._first, self._count = fitted(self._first, size), fitted(self._count, size)

    def _reserve_terms(self, needed: int) -> None:
        if needed > len(self._df):
            self._df = fitted(self._df, max(needed, 2 * len(self._df)))

    def _reserve_tail(self, needed: int) -> None:
        if needed > len(self._term):
            size = max(needed, 2 * len(self._term))
            self._term, self._row = fitted(self._term, size), fitted(self._row, size)
            self._tf, self._live = fitted(self._tf, size), fitted(self._live, size)
