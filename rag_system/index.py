"""One user's memories in process: unit embeddings by row (:mod:`.vectors`), terms in an inverted index
(:mod:`.postings`), the memories' fields in columns (:mod:`.memory_table`), all numpy arrays and a buffer rather
than an object per memory, so that 100,000 memories cost little memory and nothing to the garbage collector. Loaded
once per session and updated in place on every write, so a turn's search touches neither the database nor the
network.

:meth:`MemoryIndex.search` ranks every memory (:mod:`rag_system.scoring`), keeps the best ``k`` and asks the
relevance gate (:mod:`rag_system.gate`) whether they should reach the model at all. Every memory's cosine comes
from its int8 code first; the rows that might be in the top k (the best :data:`RESCORED` by approximate score, and
any other whose error bound could carry it in) are scored again from the exact vectors, so every number and the
ranking are the exact vectors' (the z-scores' mean and deviation too, which the vectors keep exactly).
:meth:`nearest` and :meth:`bm25` are the two plain rankers on their own: the baselines the benchmark compares
against, and the near-duplicate check for new memories.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rag_system import scoring
from rag_system.arrays import fitted
from rag_system.gate import GateDecision, GateParams, decide
from rag_system.memory_table import IndexedMemory, MemoryTable
from rag_system.postings import Postings
from rag_system.query import Query, query_vector
from rag_system.scoring import RankingParams, ScoreParts
from rag_system.text import TextAnalyzer
from rag_system.vectors import QuantizedVectors

__all__ = ["IndexedMemory", "MemoryIndex", "Retrieved", "SearchResult"]

# Rows scored exactly at least, whatever k: max(RESCORED, RESCORED_PER_RESULT * k). Any row whose error bound could
# carry it into the top k is rescored as well, so these set the cost (a few dozen 1.5 KB reads), not the result.
RESCORED = 64
RESCORED_PER_RESULT = 8
CLEARED_CAPACITY = 64


@dataclass(frozen=True, slots=True)
class Retrieved:
    memory: IndexedMemory
    score: ScoreParts


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The best memories for a query, best first, and the gate's decision on whether to use them."""

    ranked: tuple[Retrieved, ...]
    gate: GateDecision

    @property
    def memories(self) -> tuple[Retrieved, ...]:
        """What reaches the model: the ranked memories when the gate lets them through, else none."""
        return self.ranked if self.gate.inject else ()


NOTHING = SearchResult(ranked=(), gate=GateDecision(inject=False, reason="the user has no memories"))


class MemoryIndex:
    """One user's memories. Not thread-safe; one per session, used from its event loop.

    Row ``r`` of every array is one memory; rows are dense, a removed row taking the last one, so the row order
    (which breaks ties between equal scores) depends only on the sequence of writes."""

    def __init__(self, *, dimension: int, analyzer: TextAnalyzer, capacity: int = CLEARED_CAPACITY) -> None:
        self.dimension = dimension
        self.analyzer = analyzer
        self._vectors = QuantizedVectors(dimension, capacity=capacity)
        self._length = np.zeros(capacity, dtype=np.float32)  # terms, for BM25
        self._table = MemoryTable(capacity=capacity)
        self._postings = Postings(rows=capacity)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, identity: tuple[str, str]) -> bool:
        return self._table.row(*identity) is not None

    def memories(self) -> list[IndexedMemory]:
        """Every memory, in row order, made now from the columns."""
        return [self._table.memory(row) for row in range(len(self._table))]

    def get(self, category: str, key: str) -> IndexedMemory | None:
        row = self._table.row(category, key)
        return None if row is None else self._table.memory(row)

    def newest(self, limit: int | None = None, *, category: str | None = None) -> list[IndexedMemory]:
        """Memories by time of last update, newest first (equal times in row order), only ``category``'s if given,
        at most ``limit``: only those are made, so asking a large index for its newest 100 costs 100."""
        rows = self._table.newest(category)
        return [self._table.memory(row) for row in rows[:limit].tolist()]

    def most_important(self, k: int) -> list[IndexedMemory]:
        """The ``k`` most important memories, newest first among equals (equal times in row order): what
        ``sorted(memories(), key=lambda m: (m.importance, m.updated_at), reverse=True)[:k]`` gives, making k."""
        return [self._table.memory(row) for row in self._table.most_important()[: max(k, 0)].tolist()]

    @property
    def vectors(self) -> QuantizedVectors:
        """The embeddings' storage: for its sizes (bench/index_memory.py) and, in tests, its file."""
        return self._vectors

    def count_by_category(self) -> dict[str, int]:
        return self._table.count_by_category()

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` memories at once (a session's load), rather than by doubling."""
        self._grow(capacity, exact=True)

    def compact(self) -> None:
        """Sort the postings written since the last compaction (writes do it on their own once it pays), and add
        the vectors waiting to the z-scores' sums: a session's load ends here, and its first search pays for
        neither."""
        self._postings.compact()
        self._vectors.settle()

    def upsert(self, memory: IndexedMemory, embedding: np.ndarray, *, version: int = 0, key_hash: int = 0) -> None:
        """Add the memory, or replace the one with the same (category, key); the owner's ``version`` and
        ``key_hash`` of it are kept alongside (:meth:`version_of`, :meth:`with_key_hashes`, :meth:`with_versions`)."""
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.shape != (self.dimension,):
            raise ValueError(f"embedding must have {self.dimension} dimensions")
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0:
            raise ValueError("embedding must be finite and non-zero")
        terms = self.analyzer.terms(f"{memory.key.replace('_', ' ')} {memory.value}")
        row = self._table.row(memory.category, memory.key)
        if row is None:
            self._grow(len(self._table) + 1)
            self._vectors.put(len(self._table), vector / norm)  # first: a failed write changes nothing
            row = self._table.append(memory, version=version, key_hash=key_hash)
        else:
            self._vectors.put(row, vector / norm)
            self._postings.drop(row)
            self._table.replace(row, memory, version=version, key_hash=key_hash)
        self._length[row] = len(terms)
        self._postings.add(row, terms)

    def remove(self, category: str, key: str) -> bool:
        """Forget one memory; the last row moves into its place."""
        row = self._table.row(category, key)
        if row is None:
            return False
        self._vectors.remove(row)
        self._postings.drop(row)
        last = self._table.remove(row)
        if last != row:
            self._length[row] = self._length[last]
            self._postings.move(last, row)
        return True

    def version_of(self, category: str, key: str) -> int | None:
        row = self._table.row(category, key)
        return None if row is None else self._table.version(row)

    def with_key_hashes(self, hashes: Sequence[int]) -> list[tuple[str, str]]:
        """(category, key) of the memories upserted with one of these ``key_hash``es, in row order."""
        return [self._table.identity(row) for row in self._table.with_key_hashes(hashes).tolist()]

    def with_versions(self, *, above: int, up_to: int) -> list[tuple[str, str]]:
        """(category, key) of the memories upserted with a version above ``above`` and at most ``up_to``."""
        return [self._table.identity(row) for row in self._table.with_versions(above=above, up_to=up_to).tolist()]

    def clear(self) -> None:
        """Forget every memory (the vectors' file is truncated, not left behind)."""
        self._vectors.clear(capacity=CLEARED_CAPACITY)
        self._length = np.zeros(CLEARED_CAPACITY, dtype=np.float32)
        self._table = MemoryTable(capacity=CLEARED_CAPACITY)
        self._postings = Postings(rows=CLEARED_CAPACITY)

    # The two rankers on their own --------------------------------------------------------------------------

    def nearest(self, vector: np.ndarray, *, k: int) -> list[tuple[IndexedMemory, float]]:
        """Plain cosine similarity, best first."""
        similarity = self._cosine(query_vector(vector, history_weight=0.0), k)
        return [(self._table.memory(r), float(similarity[r])) for r in _top(similarity, k)]

    def bm25(self, terms: dict[str, float] | list[str], *, k: int) -> list[tuple[IndexedMemory, float]]:
        """Plain Okapi BM25 over the analyzer's terms, best first; memories sharing no term are left out."""
        weights = dict.fromkeys(terms, 1.0) if isinstance(terms, list) else terms
        scores = self._lexical(weights)
        return [(self._table.memory(r), float(scores[r])) for r in _top(scores, k) if scores[r] > 0]

    # The engine --------------------------------------------------------------------------------------------

    def search(
        self,
        query: Query,
        topic_vector: np.ndarray,
        *,
        now: dt.datetime,
        k: int = 5,
        history_vectors: list[np.ndarray] | None = None,
        params: RankingParams | None = None,
        gate: GateParams | None = None,
    ) -> SearchResult:
        """The best ``k`` memories for the query, each with its score's parts, and whether to use them."""
        params = params or RankingParams()
        n = len(self._table)
        if n == 0 or k < 1:
            return NOTHING
        vector = query_vector(topic_vector, history_vectors or [], history_weight=params.history_weight)
        lexical = self._lexical(query.terms)
        coverage = scoring.coverage(lexical, ideal=self._ideal(query.terms))
        in_window = self._in_window(query, n)
        recency = scoring.recency(
            (now.timestamp() - self._table.updated) / 86_400.0, half_life_days=params.half_life_days
        )
        importance = self._table.ranking_importance
        mean, deviation = self._vectors.statistics(vector)

        def parts(semantic: np.ndarray, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            """semantic_z, relevance and total of ``rows`` given their cosines: each rises with the cosine."""
            semantic_z = scoring.standardise(semantic, mean=mean, deviation=deviation)
            relevance = scoring.relevance(semantic_z, coverage[rows], lexical_weight=params.lexical_weight)
            total = scoring.total(relevance, in_window=in_window[rows], recency_part=recency[rows],
                                  importance=importance[rows], params=params)  # fmt: skip
            return semantic_z, relevance, total

        approximate, bound = self._vectors.approximate(vector)
        semantic = approximate.copy()

        def exact_total(rows: np.ndarray) -> np.ndarray:
            semantic[rows] = self._vectors.exact(rows, vector)
            return parts(semantic[rows], rows)[2]

        everyone = slice(None)
        _rescore(parts(approximate, everyone)[2], parts(approximate + bound, everyone)[2], k, exact_total)
        semantic_z, relevance, total = parts(semantic, everyone)
        rows = _top(total, k)
        ranked = tuple(
            Retrieved(
                memory=self._table.memory(r),
                score=ScoreParts(
                    semantic=float(semantic[r]),
                    semantic_z=float(semantic_z[r]),
                    lexical=float(lexical[r]),
                    coverage=float(coverage[r]),
                    relevance=float(relevance[r]),
                    in_window=bool(in_window[r]),
                    recency=float(recency[r]),
                    importance=float(importance[r]),
                    total=float(total[r]),
                    params=params,
                ),
            )
            for r in rows
        )
        decision = decide(
            similarity=semantic,
            coverage=coverage,
            top=rows,
            window=query.window is not None,
            in_window=in_window,
            params=gate or GateParams(),
        )
        return SearchResult(ranked=ranked, gate=decision)

    # Internals ---------------------------------------------------------------------------------------------

    def _cosine(self, unit: np.ndarray, k: int) -> np.ndarray:
        """Every row's cosine with the unit vector: exact for every row that might be among the best ``k``."""
        approximate, bound = self._vectors.approximate(unit)
        similarity = approximate.copy()

        def exact(rows: np.ndarray) -> np.ndarray:
            similarity[rows] = self._vectors.exact(rows, unit)
            return similarity[rows]

        _rescore(approximate, approximate + bound, k, exact)
        return similarity

    def _lexical(self, terms: dict[str, float]) -> np.ndarray:
        n = len(self._table)
        scores = np.zeros(n + 1, dtype=np.float32)  # the spare last one takes the dropped postings' (DROPPED = -1)
        if n == 0:
            return scores[:n]
        average = float(self._length[:n].mean())
        weighted = [(term, weight) for term, weight in terms.items() if weight > 0]
        found = self._postings.lookup([term for term, _ in weighted])
        for (_, weight), (df, rows, tf) in zip(weighted, found, strict=True):
            if df:  # a live row once per term, terms in the query's order: the same sums as ever, to the bit
                scores[rows] += weight * scoring.bm25(tf, self._length[rows], average_length=average, df=df, n=n)
        return scores[:n]

    def _ideal(self, terms: dict[str, float]) -> float:
        """The BM25 score of a memory of average length holding every query term once: idf times the term's
        weight, summed (BM25 of tf 1 at average length is the idf). A term no memory holds counts too, at the
        highest idf, so a question about something never mentioned is covered only in part."""
        n = len(self._table)
        return sum(weight * scoring.idf(self._postings.df(term), n) for term, weight in terms.items())

    def _in_window(self, query: Query, n: int) -> np.ndarray:
        if query.window is None:
            return np.zeros(n, dtype=np.float32)
        start, end = query.window.start.timestamp(), query.window.end.timestamp()
        updated, created = self._table.updated, self._table.created
        inside = ((updated >= start) & (updated < end)) | ((created >= start) & (created < end))
        return inside.astype(np.float32)

    def _grow(self, needed: int, *, exact: bool = False) -> None:
        capacity = self._length.shape[0]
        if needed <= capacity:
            return
        size = needed if exact else max(needed, capacity * 2)
        self._vectors.reserve(size)
        self._length = fitted(self._length, size)
        self._table.reserve(size)


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Rows of the ``k`` highest scores, best first; ties keep row order."""
    n = scores.shape[0]
    if n == 0 or k < 1:
        return []
    k = min(k, n)
    top = np.argpartition(-scores, k - 1)[:k]
    return [int(r) for r in top[np.argsort(-scores[top], kind="stable")]]


def _rescore(rough: np.ndarray, upper: np.ndarray, k: int, exact: Callable[[np.ndarray], np.ndarray]) -> None:
    """Have ``exact`` score every row that might be among the ``k`` best: the best by ``rough`` score, then any
    other whose ``upper`` bound reaches the k-th exact score of those. One more round is never needed: it could
    only raise the k-th score, and every row left is below the old one."""
    n = rough.shape[0]
    if n == 0 or k < 1:
        return
    k = min(k, n)
    size = min(n, max(RESCORED, RESCORED_PER_RESULT * k))
    first = np.argpartition(-rough, size - 1)[:size] if size < n else np.arange(n)
    scores = exact(first)
    kth = np.partition(scores, size - k)[size - k]
    outside = np.ones(n, dtype=bool)
    outside[first] = False
    more = np.flatnonzero(outside & (upper >= kth))
    if more.size:
        exact(more)
