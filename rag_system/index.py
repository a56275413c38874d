"""One user's memories in process: unit embeddings in a matrix, terms in an inverted index, times and importance in
arrays. Loaded once per session and updated in place on every write, so a turn's search touches neither the
database nor the network.

:meth:`MemoryIndex.search` ranks every memory (:mod:`rag_system.scoring`), keeps the best ``k`` and asks the
relevance gate (:mod:`rag_system.gate`) whether they should reach the model at all. :meth:`nearest` and
:meth:`bm25` are the two plain rankers on their own: the baselines the benchmark compares against, and the
near-duplicate check for new memories.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np

from rag_system import scoring
from rag_system.gate import GateDecision, GateParams, decide
from rag_system.query import Query, query_vector
from rag_system.scoring import RankingParams, ScoreParts
from rag_system.text import TextAnalyzer


@dataclass(frozen=True, slots=True)
class IndexedMemory:
    category: str
    key: str
    value: str
    importance: float
    created_at: dt.datetime
    updated_at: dt.datetime


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
    """One user's memories. Not thread-safe; one per session, used from its event loop."""

    def __init__(self, *, dimension: int, analyzer: TextAnalyzer, capacity: int = 64) -> None:
        self.dimension = dimension
        self.analyzer = analyzer
        self._vectors = np.zeros((capacity, dimension), dtype=np.float32)
        self._importance = np.zeros(capacity, dtype=np.float32)
        self._updated = np.zeros(capacity, dtype=np.float64)  # unix seconds
        self._created = np.zeros(capacity, dtype=np.float64)
        self._length = np.zeros(capacity, dtype=np.float32)  # terms, for BM25
        self._memories: list[IndexedMemory] = []
        self._row: dict[tuple[str, str], int] = {}
        self._terms: list[dict[str, int]] = []  # per row: term -> count
        self._postings: dict[str, dict[int, int]] = {}  # term -> row -> count
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # term -> (rows, counts), made when searched

    def __len__(self) -> int:
        return len(self._memories)

    def __contains__(self, identity: tuple[str, str]) -> bool:
        return identity in self._row

    def memories(self) -> list[IndexedMemory]:
        return list(self._memories)

    def get(self, category: str, key: str) -> IndexedMemory | None:
        row = self._row.get((category, key))
        return None if row is None else self._memories[row]

    def upsert(self, memory: IndexedMemory, embedding: np.ndarray) -> None:
        """Add the memory, or replace the one with the same (category, key)."""
        vector = np.asarray(embedding, dtype=np.float32)
        if vector.shape != (self.dimension,):
            raise ValueError(f"embedding must have {self.dimension} dimensions")
        norm = float(np.linalg.norm(vector))
        if not math.isfinite(norm) or norm == 0:
            raise ValueError("embedding must be finite and non-zero")
        identity = (memory.category, memory.key)
        row = self._row.get(identity)
        if row is None:
            row = len(self._memories)
            self._grow(row + 1)
            self._memories.append(memory)
            self._terms.append({})
            self._row[identity] = row
        else:
            self._unpost(row)
            self._memories[row] = memory
        self._vectors[row] = vector / norm
        self._importance[row] = memory.importance
        self._updated[row] = memory.updated_at.timestamp()
        self._created[row] = memory.created_at.timestamp()
        self._post(row, self.analyzer.terms(f"{memory.key.replace('_', ' ')} {memory.value}"))

    def remove(self, category: str, key: str) -> bool:
        """Forget one memory; the last row moves into its place."""
        row = self._row.pop((category, key), None)
        if row is None:
            return False
        self._unpost(row)
        last = len(self._memories) - 1
        if row != last:
            moved, terms = self._memories[last], self._terms[last]
            self._unpost(last)
            for array in (self._vectors, self._importance, self._updated, self._created):
                array[row] = array[last]
            self._memories[row] = moved
            self._row[(moved.category, moved.key)] = row
            self._post(row, [term for term, count in terms.items() for _ in range(count)])
        self._memories.pop()
        self._terms.pop()
        return True

    def clear(self) -> None:
        self.__init__(dimension=self.dimension, analyzer=self.analyzer)  # type: ignore[misc]

    # The two rankers on their own --------------------------------------------------------------------------

    def nearest(self, vector: np.ndarray, *, k: int) -> list[tuple[IndexedMemory, float]]:
        """Plain cosine similarity, best first."""
        similarity = self._cosine(vector)
        return [(self._memories[r], float(similarity[r])) for r in _top(similarity, k)]

    def bm25(self, terms: dict[str, float] | list[str], *, k: int) -> list[tuple[IndexedMemory, float]]:
        """Plain Okapi BM25 over the analyzer's terms, best first; memories sharing no term are left out."""
        weights = dict.fromkeys(terms, 1.0) if isinstance(terms, list) else terms
        scores = self._lexical(weights)
        return [(self._memories[r], float(scores[r])) for r in _top(scores, k) if scores[r] > 0]

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
        n = len(self._memories)
        if n == 0 or k < 1:
            return NOTHING
        vector = query_vector(topic_vector, history_vectors or [], history_weight=params.history_weight)
        semantic = self._vectors[:n] @ vector
        lexical = self._lexical(query.terms)
        semantic_z = scoring.standardise(semantic)
        coverage = scoring.coverage(lexical, ideal=self._ideal(query.terms))
        relevance = scoring.relevance(semantic_z, coverage, lexical_weight=params.lexical_weight)
        in_window = self._in_window(query, n)
        recency = scoring.recency(
            (now.timestamp() - self._updated[:n]) / 86_400.0, half_life_days=params.half_life_days
        )
        importance = self._importance[:n]
        total = scoring.total(relevance, in_window=in_window, recency_part=recency, importance=importance,
                              params=params)  # fmt: skip
        rows = _top(total, k)
        ranked = tuple(
            Retrieved(
                memory=self._memories[r],
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

    def _cosine(self, vector: np.ndarray) -> np.ndarray:
        return self._vectors[: len(self._memories)] @ query_vector(vector, history_weight=0.0)

    def _lexical(self, terms: dict[str, float]) -> np.ndarray:
        n = len(self._memories)
        scores = np.zeros(n, dtype=np.float32)
        if n == 0:
            return scores
        average = float(self._length[:n].mean())
        for term, weight in terms.items():
            if weight <= 0 or term not in self._postings:
                continue
            rows, tf = self._posting_arrays(term)
            scores[rows] += weight * scoring.bm25(tf, self._length[rows], average_length=average, df=len(rows), n=n)
        return scores

    def _posting_arrays(self, term: str) -> tuple[np.ndarray, np.ndarray]:
        """A term's posting as arrays, kept until the term's posting changes (a session writes rarely)."""
        arrays = self._arrays.get(term)
        if arrays is None:
            posting = self._postings[term]
            arrays = (np.fromiter(posting.keys(), dtype=np.int64, count=len(posting)),
                      np.fromiter(posting.values(), dtype=np.float32, count=len(posting)))  # fmt: skip
            self._arrays[term] = arrays
        return arrays

    def _ideal(self, terms: dict[str, float]) -> float:
        """The BM25 score of a memory of average length holding every query term once: idf times the term's
        weight, summed (BM25 of tf 1 at average length is the idf). A term no memory holds counts too, at the
        highest idf, so a question about something never mentioned is covered only in part."""
        n = len(self._memories)
        return sum(weight * scoring.idf(len(self._postings.get(term, ())), n) for term, weight in terms.items())

    def _in_window(self, query: Query, n: int) -> np.ndarray:
        if query.window is None:
            return np.zeros(n, dtype=np.float32)
        start, end = query.window.start.timestamp(), query.window.end.timestamp()
        updated, created = self._updated[:n], self._created[:n]
        inside = ((updated >= start) & (updated < end)) | ((created >= start) & (created < end))
        return inside.astype(np.float32)

    def _post(self, row: int, terms: list[str]) -> None:
        counts: dict[str, int] = {}
        for term in terms:
            counts[term] = counts.get(term, 0) + 1
        self._terms[row] = counts
        self._length[row] = sum(counts.values())
        for term, count in counts.items():
            self._postings.setdefault(term, {})[row] = count
            self._arrays.pop(term, None)

    def _unpost(self, row: int) -> None:
        for term in self._terms[row]:
            self._arrays.pop(term, None)
            posting = self._postings.get(term)
            if posting is not None:
                posting.pop(row, None)
                if not posting:
                    del self._postings[term]
        self._terms[row] = {}

    def _grow(self, needed: int) -> None:
        capacity = self._vectors.shape[0]
        if needed <= capacity:
            return
        size = max(needed, capacity * 2)
        self._vectors = _resized(self._vectors, size)
        self._importance = _resized(self._importance, size)
        self._updated = _resized(self._updated, size)
        self._created = _resized(self._created, size)
        self._length = _resized(self._length, size)


def _top(scores: np.ndarray, k: int) -> list[int]:
    """Rows of the ``k`` highest scores, best first; ties keep row order."""
    n = scores.shape[0]
    if n == 0 or k < 1:
        return []
    k = min(k, n)
    top = np.argpartition(-scores, k - 1)[:k]
    return [int(r) for r in top[np.argsort(-scores[top], kind="stable")]]


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown
