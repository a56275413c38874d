"""The retrieval engine: a user's memories in an in-process index, ranked by an explainable score.

One :class:`MemoryIndex` per user and session: a matrix of unit embeddings plus, for each memory, its words (an
inverted index for BM25), importance, category and times. It is loaded once and updated in place on every write,
so a turn's retrieval touches neither the database nor the network (only the query embedding may).

The score of a memory m for a query q (every part in [0, 1]; weights in :class:`ScoringParams`)::

    total = w_sem * semantic + w_lex * lexical + w_rec * recency + w_imp * importance + w_cat * category

    semantic   = max(0, cos(q, m)); q is the turn's embedding plus ``history_weight`` times the recent turns'
    lexical    = BM25(q's words and their expansions, m) / BM25 of a memory holding every query word
    recency    = 0.5 ** (age_in_days / half_life_days), from the last update ("recently" weighs it triple)
    importance = the memory's importance
    category   = 1 when the question's words point at the memory's category ("do I like" -> PREFERENCE)

A memory is a candidate only if it means something close (semantic >= ``min_semantic``) or shares enough words
(lexical >= ``min_lexical``), and is returned only if ``total >= min_score`` and within ``margin`` of the best: nothing irrelevant is
injected.
Temporal phrases ("yesterday", "last week", "this week", "today") instead make every memory updated or created
in that window a candidate, and no other. The top candidates are re-ranked with maximal marginal relevance so near-duplicates do not crowd
out other facts. Every result carries its :class:`ScoreParts`, and ``explain()`` prints the arithmetic.

Pure Python and numpy: no I/O, no LiveKit, no clock of its own (``now`` is passed in).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

CATEGORIES = ("FACT", "PREFERENCE", "GOAL", "RELATIONSHIP", "EVENT", "HEALTH", "ROUTINE", "OTHER")
_CATEGORY_CODE = {name: i for i, name in enumerate(CATEGORIES)}


@dataclass(frozen=True, slots=True)
class ScoringParams:
    semantic_weight: float = 0.55
    lexical_weight: float = 0.20
    recency_weight: float = 0.08
    importance_weight: float = 0.10
    category_weight: float = 0.07
    half_life_days: float = 60.0
    recently_factor: float = 2.0  # "recently", "lately": recency weighs this much more
    history_weight: float = 0.35  # share of the recent turns in the query vector
    min_semantic: float = 0.30
    min_lexical: float = 0.50
    min_score: float = 0.26
    margin: float = 0.12  # results must score within this of the best one: no long tail of weak matches
    mmr_lambda: float = 0.70
    candidates: int = 40  # re-ranked by MMR

    def __post_init__(self) -> None:
        if self.half_life_days <= 0 or not 0 <= self.mmr_lambda <= 1 or self.candidates < 1:
            raise ValueError("half-life must be positive, mmr_lambda within [0, 1], candidates at least 1")


@dataclass(frozen=True, slots=True)
class ScoreParts:
    """The parts of a memory's score, before weighting, and the weighted total."""

    semantic: float
    lexical: float
    recency: float
    importance: float
    category: float
    total: float
    weights: tuple[float, float, float, float, float]

    def explain(self) -> str:
        w = self.weights
        parts = (
            f"{w[0]:.2f}*{self.semantic:.2f} meaning",
            f"{w[1]:.2f}*{self.lexical:.2f} words",
            f"{w[2]:.2f}*{self.recency:.2f} recency",
            f"{w[3]:.2f}*{self.importance:.2f} importance",
            f"{w[4]:.2f}*{self.category:.0f} category",
        )
        return " + ".join(parts) + f" = {self.total:.3f}"


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


# Query analysis -----------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "but",
        "by",
        "did",
        "do",
        "does",
        "doing",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "i'm",
        "i've",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "just",
        "me",
        "my",
        "myself",
        "of",
        "on",
        "or",
        "our",
        "so",
        "some",
        "than",
        "that",
        "the",
        "their",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "too",
        "up",
        "us",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "about",
        "again",
        "any",
        "can",
        "could",
        "should",
        "tell",
        "remember",
        "know",
        "said",
        "say",
        "mention",
        "mentioned",
    ]
)
# Query expansion without a model: words people use for the same thing. Both directions are applied.
_RELATED = {
    "sibling": ["sister", "brother"],
    "sister": ["sibling"],
    "brother": ["sibling"],
    "mom": ["mother", "mum", "parent"],
    "mum": ["mother", "mom", "parent"],
    "mother": ["mom", "mum", "parent"],
    "dad": ["father", "parent"],
    "father": ["dad", "parent"],
    "parent": ["mother", "father"],
    "kid": ["child", "son", "daughter"],
    "child": ["kid", "son", "daughter"],
    "son": ["child", "kid"],
    "daughter": ["child", "kid"],
    "husband": ["partner", "spouse"],
    "wife": ["partner", "spouse"],
    "partner": ["husband", "wife", "boyfriend", "girlfriend", "spouse"],
    "job": ["work", "occupation", "career", "employer"],
    "living": ["job", "work", "occupation"],
    "work": ["job", "occupation", "career", "employer"],
    "career": ["job", "work"],
    "live": ["home", "city", "move", "reside"],
    "home": ["live", "house", "apartment"],
    "pet": ["dog", "cat"],
    "dog": ["pet"],
    "cat": ["pet"],
    "doctor": ["medical", "health", "appointment"],
    "allergic": ["allergy", "allergies"],
    "allergy": ["allergic"],
    "food": ["eat", "meal", "cuisine", "dish"],
    "eat": ["food", "meal"],
    "drink": ["coffee", "tea", "beverage"],
    "exercise": ["run", "gym", "workout", "sport", "training"],
    "run": ["running", "exercise", "marathon", "jog"],
    "music": ["song", "band", "play", "instrument"],
    "book": ["read", "novel", "reading"],
    "read": ["book", "reading"],
    "birthday": ["born", "birth"],
    "sleep": ["bed", "insomnia", "night"],
    "study": ["learn", "course", "class", "school", "university"],
    "learn": ["study", "course", "class"],
    "trip": ["travel", "vacation", "holiday", "visit"],
    "travel": ["trip", "vacation", "holiday"],
    "name": ["called"],
}
_CATEGORY_CUES = {
    "PREFERENCE": {"like", "love", "prefer", "favorite", "favourite", "hate", "enjoy", "dislike", "fan"},
    "GOAL": {"goal", "plan", "want", "hope", "dream", "aim", "trying", "working", "wish"},
    "RELATIONSHIP": {"sister", "brother", "sibling", "mother", "mom", "mum", "father", "dad", "parent", "wife",
                     "husband", "partner", "friend", "son", "daughter", "child", "kid", "boyfriend", "girlfriend",
                     "family", "grandmother", "grandfather", "aunt", "uncle", "cousin", "colleague", "boss"},
    "HEALTH": {"health", "doctor", "allergic", "allergy", "medication", "medicine", "pain", "sick", "injury",
               "diet", "knee", "back", "therapy", "anxiety", "sleep", "symptom", "condition"},
    "ROUTINE": {"routine", "usually", "every", "morning", "evening", "habit", "daily", "weekly", "always", "often"},
    "EVENT": {"happened", "event", "birthday", "interview", "trip", "meeting", "party", "appointment", "wedding",
              "exam", "went", "going", "yesterday", "week", "weekend"},
    "FACT": {"job", "work", "live", "name", "age", "born", "from", "city", "occupation"},
}  # fmt: skip
# Words of a purely temporal question: "what did I do yesterday", "what happened last week".
_TIME_WORDS = frozenset(
    [
        "today",
        "yesterday",
        "week",
        "weekend",
        "month",
        "morning",
        "night",
        "last",
        "past",
        "few",
        "day",
        "ago",
        "happen",
        "happened",
        "go",
        "went",
        "new",
        "recently",
        "lately",
        "latest",
        "up",
    ]
)
_POINTS_BACK = re.compile(r"\b(it|its|she|he|her|hers|him|his|they|them|their|that|those|there)\b")
_RECENTLY = re.compile(r"\b(recently|lately|these days|nowadays|latest|new)\b")


@dataclass(frozen=True, slots=True)
class QueryAnalysis:
    """What the words of a turn say about what to look for.

    ``groups``: one per content word of the turn, the word (weight 1) with its expansions (weight 0.5); a memory
    matches a group through its best member. ``history_terms``: words of the recent turns (a small bonus)."""

    groups: tuple[tuple[tuple[str, float], ...], ...]
    categories: frozenset[str]
    window: tuple[dt.datetime, dt.datetime] | None = None
    recently: bool = False
    history_terms: dict[str, float] = field(default_factory=dict)
    topical: bool = True  # the turn names something besides time ("what happened yesterday" does not)
    follow_up: bool = False  # the turn points back ("is it better?", "where does she live?"): earlier words count


def tokenize(text: str) -> list[str]:
    """Lower-case content words, lightly stemmed (plural and possessive endings)."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


def analyze_query(text: str, recent_turns: Sequence[str], *, now: dt.datetime) -> QueryAnalysis:
    words = list(dict.fromkeys(tokenize(text)))
    groups = tuple(
        ((word, 1.0), *((_stem(r), 0.5) for r in _RELATED.get(word, ()) if _stem(r) != word)) for word in words
    )
    in_turn = {member for group in groups for member, _ in group}
    history = {w: 0.3 for turn in recent_turns[-3:] for w in tokenize(turn) if w not in in_turn}
    lowered = text.lower()
    cues = set(words) | {w for w in _WORD.findall(lowered)}
    categories = frozenset(c for c, cue_words in _CATEGORY_CUES.items() if cues & cue_words)
    return QueryAnalysis(
        groups=groups,
        categories=categories,
        topical=any(w not in _TIME_WORDS for w in words),
        follow_up=bool(recent_turns) and bool(_POINTS_BACK.search(lowered)),
        window=time_window(lowered, now=now),
        recently=bool(_RECENTLY.search(lowered)),
        history_terms=history,
    )


def time_window(text: str, *, now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """The span a temporal phrase names, in UTC, or None. Days are counted from ``now``'s midnight."""
    midnight = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day = dt.timedelta(days=1)
    if re.search(r"\btoday\b|\bthis morning\b", text):
        return midnight, now
    if re.search(r"\byesterday\b|\blast night\b", text):
        return midnight - day, midnight
    if re.search(r"\bthis week\b|\bpast few days\b|\bfew days ago\b", text):
        return now - 7 * day, now
    if re.search(r"\blast week\b", text):
        return now - 14 * day, now - day
    if re.search(r"\blast month\b", text):
        return now - 60 * day, now - 7 * day
    if re.search(r"\bthis month\b", text):
        return now - 31 * day, now
    return None


def _stem(word: str) -> str:
    if word.endswith("'s"):
        word = word[:-2]
    for suffix, keep in (("ies", "y"), ("sses", "ss"), ("es", "e"), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith(("ss", "us", "is")):
            return word[: -len(suffix)] + keep
    return word


# Scoring (pure) ----------------------------------------------------------------------------------------------


def recency(age_days: np.ndarray, *, half_life_days: float) -> np.ndarray:
    """0.5 ** (age / half-life): 1 now, 0.5 one half-life ago. Future times count as now."""
    return np.power(0.5, np.maximum(age_days, 0.0) / half_life_days)


def combine(
    semantic: np.ndarray,
    lexical: np.ndarray,
    recency_part: np.ndarray,
    importance: np.ndarray,
    category: np.ndarray,
    weights: tuple[float, float, float, float, float],
) -> np.ndarray:
    w = weights
    return w[0] * semantic + w[1] * lexical + w[2] * recency_part + w[3] * importance + w[4] * category


def _weights(params: ScoringParams, analysis: QueryAnalysis) -> tuple[float, float, float, float, float]:
    recency_weight = params.recency_weight * (params.recently_factor if analysis.recently else 1.0)
    return (
        params.semantic_weight,
        params.lexical_weight,
        recency_weight,
        params.importance_weight,
        params.category_weight,
    )


# The index ----------------------------------------------------------------------------------------------------

_K1, _B = 1.2, 0.75  # BM25's usual constants
HISTORY_BONUS_CAP = 0.3  # the most that words of earlier turns add to ``lexical`` when the turn is not a follow-up


class MemoryIndex:
    """One user's memories. Not thread-safe; one per session, used from its event loop."""

    def __init__(self, *, dimension: int, capacity: int = 64) -> None:
        self.dimension = dimension
        self._vectors = np.zeros((capacity, dimension), dtype=np.float32)
        self._importance = np.zeros(capacity, dtype=np.float32)
        self._updated = np.zeros(capacity, dtype=np.float64)  # unix seconds
        self._created = np.zeros(capacity, dtype=np.float64)
        self._category = np.zeros(capacity, dtype=np.int8)
        self._length = np.zeros(capacity, dtype=np.float32)  # words, for BM25
        self._memories: list[IndexedMemory] = []
        self._row: dict[tuple[str, str], int] = {}
        self._terms: list[dict[str, int]] = []  # per row: word -> count
        self._postings: dict[str, dict[int, int]] = {}  # word -> row -> count

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
        self._category[row] = _CATEGORY_CODE.get(memory.category, _CATEGORY_CODE["OTHER"])
        self._post(row, tokenize(f"{memory.key.replace('_', ' ')} {memory.value}"))

    def remove(self, category: str, key: str) -> bool:
        """Forget one memory; the last row moves into its place."""
        row = self._row.pop((category, key), None)
        if row is None:
            return False
        self._unpost(row)
        last = len(self._memories) - 1
        if row != last:
            moved = self._memories[last]
            terms = self._terms[last]
            self._unpost(last)
            for array in (self._vectors, self._importance, self._updated, self._created, self._category):
                array[row] = array[last]
            self._memories[row] = moved
            self._row[(moved.category, moved.key)] = row
            self._post(row, [w for w, n in terms.items() for _ in range(n)])
        self._memories.pop()
        self._terms.pop()
        return True

    def clear(self) -> None:
        self.__init__(dimension=self.dimension)  # type: ignore[misc]

    def nearest(self, query_vector: np.ndarray, *, k: int) -> list[tuple[IndexedMemory, float]]:
        """Plain cosine similarity, best first: the baseline, and the near-duplicate check for new memories."""
        n = len(self._memories)
        if n == 0 or k < 1:
            return []
        similarity = self._vectors[:n] @ _unit(np.asarray(query_vector, dtype=np.float32))
        top = np.argpartition(-similarity, min(k, n) - 1)[: min(k, n)]
        top = top[np.argsort(-similarity[top], kind="stable")]
        return [(self._memories[r], float(similarity[r])) for r in top]

    def search(
        self,
        analysis: QueryAnalysis,
        query_vector: np.ndarray,
        *,
        now: dt.datetime,
        k: int = 5,
        history_vector: np.ndarray | None = None,
        params: ScoringParams | None = None,
    ) -> list[Retrieved]:
        """The best ``k`` memories for the query, each with its score's parts; possibly none."""
        params = params or ScoringParams()
        n = len(self._memories)
        if n == 0 or k < 1:
            return []
        query = _unit(np.asarray(query_vector, dtype=np.float32))
        if history_vector is not None and params.history_weight > 0:
            query = _unit(query + params.history_weight * _unit(np.asarray(history_vector, dtype=np.float32)))
        vectors = self._vectors[:n]
        semantic = np.clip(vectors @ query, 0.0, 1.0)
        lexical, lexical_turn = self._bm25(analysis, n)
        age_days = (now.timestamp() - self._updated[:n]) / 86_400.0
        recency_part = recency(age_days, half_life_days=params.half_life_days)
        importance = self._importance[:n]
        wanted = np.array([_CATEGORY_CODE[c] for c in analysis.categories], dtype=np.int8)
        category = np.isin(self._category[:n], wanted).astype(np.float32)
        weights = _weights(params, analysis)
        total = combine(semantic, lexical, recency_part, importance, category, weights)

        # Earlier turns' words make a memory relevant only when the turn points back to them ("how is she?");
        # otherwise they add a small bonus, so "what's the weather?" after talk of a sister finds no sister.
        words = lexical if analysis.follow_up else lexical_turn
        relevant = (semantic >= params.min_semantic) | (words >= params.min_lexical)
        if analysis.window is None:
            eligible = relevant & (total >= params.min_score)
        else:
            start, end = analysis.window[0].timestamp(), analysis.window[1].timestamp()
            updated, created = self._updated[:n], self._created[:n]
            in_window = ((updated >= start) & (updated <= end)) | ((created >= start) & (created <= end))
            if analysis.topical:  # "what did Aisha do this week": the window and some relevance
                eligible = in_window & (relevant | (semantic >= params.min_semantic / 2) | (lexical_turn > 0))
            else:  # "what happened yesterday": the time is the relevance; the score only orders
                eligible = in_window
        rows = np.flatnonzero(eligible)
        if rows.size == 0:
            return []
        rows = rows[total[rows] >= total[rows].max() - params.margin]
        if rows.size > params.candidates:
            rows = rows[np.argpartition(-total[rows], params.candidates - 1)[: params.candidates]]
        chosen = _mmr(rows, total, vectors, k=k, lam=params.mmr_lambda)
        return [
            Retrieved(
                memory=self._memories[r],
                score=ScoreParts(
                    semantic=float(semantic[r]),
                    lexical=float(lexical[r]),
                    recency=float(recency_part[r]),
                    importance=float(importance[r]),
                    category=float(category[r]),
                    total=float(total[r]),
                    weights=weights,
                ),
            )
            for r in chosen
        ]

    # BM25 ---------------------------------------------------------------------------------------------------

    def _bm25(self, analysis: QueryAnalysis, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Coverage of the turn's words: each group counts through its best member, divided by what a memory
        holding every group's best matchable member once, at average length, would score. A word nothing in the
        index holds (nor any expansion of it) cannot lower the score of the memories that match the rest."""
        average = float(self._length[:n].mean()) or 1.0
        scores = np.zeros(n, dtype=np.float32)
        best = 0.0
        for group in analysis.groups:
            group_scores = np.zeros(n, dtype=np.float32)
            group_best = 0.0
            for word, weight in group:
                contribution = self._term_scores(word, n, average)
                if contribution is None:
                    continue
                rows, values, idf = contribution
                np.maximum.at(group_scores, rows, weight * values)
                group_best = max(group_best, weight * idf)  # its score at tf 1 and average length
            scores += group_scores
            best += group_best
        turn = np.minimum(scores / best, 1.0) if best > 0 else scores
        bonus = np.zeros(n, dtype=np.float32)
        for word, weight in analysis.history_terms.items():
            contribution = self._term_scores(word, n, average)
            if contribution is not None:
                rows, values, idf = contribution
                bonus[rows] += weight * values / max(idf, 1e-6)  # about ``weight`` per earlier-turn word held
        cap = 1.0 if analysis.follow_up else HISTORY_BONUS_CAP
        return np.minimum(turn + np.minimum(bonus, cap), 1.0), turn

    def _term_scores(self, word: str, n: int, average: float) -> tuple[np.ndarray, np.ndarray, float] | None:
        posting = self._postings.get(word)
        if not posting:
            return None
        df = len(posting)
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        rows = np.fromiter(posting.keys(), dtype=np.int64, count=df)
        tf = np.fromiter(posting.values(), dtype=np.float32, count=df)
        norm = _K1 * (1 - _B + _B * self._length[rows] / average)
        return rows, idf * tf * (_K1 + 1) / (tf + norm), idf

    def _post(self, row: int, words: Iterable[str]) -> None:
        counts: dict[str, int] = {}
        for word in words:
            counts[word] = counts.get(word, 0) + 1
        self._terms[row] = counts
        self._length[row] = sum(counts.values())
        for word, count in counts.items():
            self._postings.setdefault(word, {})[row] = count

    def _unpost(self, row: int) -> None:
        for word in self._terms[row]:
            posting = self._postings.get(word)
            if posting is not None:
                posting.pop(row, None)
                if not posting:
                    del self._postings[word]
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
        self._category = _resized(self._category, size)
        self._length = _resized(self._length, size)


def _mmr(rows: np.ndarray, total: np.ndarray, vectors: np.ndarray, *, k: int, lam: float) -> list[int]:
    """Maximal marginal relevance: each pick maximises lam * score - (1 - lam) * similarity to earlier picks."""
    order = rows[np.argsort(-total[rows], kind="stable")]
    chosen: list[int] = [int(order[0])]
    remaining = [int(r) for r in order[1:]]
    while remaining and len(chosen) < k:
        candidates = np.array(remaining)
        similarity = (vectors[candidates] @ vectors[chosen].T).max(axis=1)
        value = lam * total[candidates] - (1 - lam) * np.clip(similarity, 0.0, 1.0)
        best = int(np.argmax(value))
        chosen.append(remaining.pop(best))
    return chosen


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _resized(array: np.ndarray, size: int) -> np.ndarray:
    grown = np.zeros((size, *array.shape[1:]), dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown
