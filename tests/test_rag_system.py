"""The retrieval engine's arithmetic and behaviour, with worked values."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from pydantic import ValidationError

from rag_system import GateParams, IndexedMemory, MemoryIndex, RankingParams, analyze, analyzer_for, scoring
from rag_system.query import query_vector

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)  # a Saturday
EN = analyzer_for("en")


def days_ago(n: float) -> dt.datetime:
    return NOW - dt.timedelta(days=n)


def unit(*values: float, dimension: int = 8) -> np.ndarray:
    vector = np.zeros(dimension, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def memory(key: str, value: str, *, category: str = "FACT", importance: float = 0.5, age: float = 30) -> IndexedMemory:
    return IndexedMemory(category, key, value, importance, days_ago(age), days_ago(age))


def index_of(*items: tuple[IndexedMemory, np.ndarray], language: str = "en") -> MemoryIndex:
    index = MemoryIndex(dimension=8, analyzer=analyzer_for(language))
    for item, vector in items:
        index.upsert(item, vector)
    return index


def search(index: MemoryIndex, text: str, vector: np.ndarray, recent=(), **kwargs):
    return index.search(analyze(text, recent, now=NOW, analyzer=index.analyzer), vector, now=NOW, **kwargs)


# Arithmetic ----------------------------------------------------------------------------------------------------


def test_bm25_of_one_term_follows_okapi() -> None:
    # n=10, df=2: idf = ln(1 + 8.5/2.5) = ln 4.4 = 1.4816; tf 1 at average length: idf * 2.2 / (1 + 1.2) = idf
    assert scoring.idf(2, 10) == pytest.approx(1.4816, abs=1e-4)
    at_average = scoring.bm25(np.array([1.0]), np.array([5.0]), average_length=5.0, df=2, n=10)
    assert at_average[0] == pytest.approx(1.4816, abs=1e-4)
    # twice as long as average: norm = 1.2 * (0.25 + 0.75 * 2) = 2.1; 1.4816 * 2.2 / 3.1 = 1.0515
    long = scoring.bm25(np.array([1.0]), np.array([10.0]), average_length=5.0, df=2, n=10)
    assert long[0] == pytest.approx(1.0515, abs=1e-4)


def test_standardise_gives_z_scores_and_zeros_when_nothing_varies() -> None:
    # mean 0.3, standard deviation 0.1: (0.2, 0.3, 0.4) -> (-1.22, 0, 1.22)
    np.testing.assert_allclose(scoring.standardise(np.array([0.2, 0.3, 0.4])), [-1.2247, 0.0, 1.2247], atol=1e-4)
    np.testing.assert_array_equal(scoring.standardise(np.array([0.5, 0.5])), [0.0, 0.0])


def test_the_total_adds_relevance_window_and_the_two_priors() -> None:
    params = RankingParams(lexical_weight=6, window_boost=8, recency_weight=0.1, importance_weight=0.1)
    relevance = scoring.relevance(np.array([1.5]), np.array([0.5]), lexical_weight=6)  # 1.5 + 6 * 0.5 = 4.5
    total = scoring.total(relevance, in_window=np.array([1.0]), recency_part=np.array([0.5]),
                          importance=np.array([0.8]), params=params)  # fmt: skip
    assert total[0] == pytest.approx(4.5 + 8 + 0.05 + 0.08)  # = 12.63


def test_recency_halves_every_half_life() -> None:
    ages = np.array([0.0, 45.0, 90.0, 180.0, -5.0])
    np.testing.assert_allclose(scoring.recency(ages, half_life_days=90), [1, 0.70710678, 0.5, 0.25, 1], rtol=1e-6)


def test_priors_may_not_outweigh_a_quarter_of_a_standard_deviation() -> None:
    with pytest.raises(ValidationError, match="priors never outvote relevance"):
        RankingParams(recency_weight=0.2, importance_weight=0.1)
    with pytest.raises(ValidationError):
        RankingParams(lexical_weight=-1)


def test_the_history_moves_the_query_vector_toward_earlier_turns() -> None:
    # unit((1,0) + 0.6 * (0,1)) = (0.857, 0.514)
    moved = query_vector(unit(1), [unit(0, 1)], history_weight=0.6)
    np.testing.assert_allclose(moved[:2], [0.8575, 0.5145], atol=1e-4)
    np.testing.assert_allclose(query_vector(unit(1), [], history_weight=0.6), unit(1))


# Ranking -------------------------------------------------------------------------------------------------------


def test_every_result_explains_its_score() -> None:
    index = index_of(
        (memory("sister_city", "Maya lives in Lisbon"), unit(1)), (memory("car", "a blue car"), unit(0, 1))
    )
    first = search(index, "where does Maya live?", unit(1, 0.2)).ranked[0]
    assert first.memory.key == "sister_city"
    parts = first.score
    expected = parts.relevance + parts.params.recency_weight * parts.recency
    assert parts.total == pytest.approx(expected + parts.params.importance_weight * parts.importance)
    assert parts.relevance == pytest.approx(parts.semantic_z + parts.params.lexical_weight * parts.coverage)
    assert parts.explain().endswith(f"= {parts.total:.3f}")
    assert "meaning" in parts.explain()
    assert "words" in parts.explain()


def test_words_find_a_memory_when_meaning_alone_is_not_enough() -> None:
    same = unit(1, 1)  # every memory means the same to the embedder: only words can tell them apart
    index = index_of(
        (memory("sister_city", "Maya lives in Lisbon", category="RELATIONSHIP"), same),
        (memory("car", "drives a blue car"), same),
        (memory("tea", "prefers green tea"), same),
    )
    [first, *_] = search(index, "where does Maya live?", same).ranked
    assert first.memory.key == "sister_city"
    # "maya" and "live" both held: full coverage of the question's information
    assert first.score.coverage == pytest.approx(1.0, abs=0.15)


def test_meaning_finds_a_memory_that_shares_no_word() -> None:
    index = index_of(
        (memory("partner", "Her boyfriend Callum is a sound engineer"), unit(1)),
        (memory("car", "drives a blue car"), unit(0, 1)),
        (memory("tea", "prefers green tea"), unit(0, 0, 1)),
    )
    found = search(index, "who is my other half?", unit(1, 0.1))
    assert found.ranked[0].memory.key == "partner"
    assert found.ranked[0].score.coverage == 0.0


def test_an_old_unimportant_memory_loses_a_tie_to_a_recent_important_one() -> None:
    same = unit(1, 0.2)
    index = index_of(
        (memory("gym_old", "goes to the gym", importance=0.3, age=400), same),
        (memory("gym_new", "goes to the gym", importance=0.6, age=2), same),
    )
    first, second = search(index, "the gym", same).ranked
    assert (first.memory.key, second.memory.key) == ("gym_new", "gym_old")
    assert first.score.relevance == pytest.approx(second.score.relevance)


def test_a_time_phrase_brings_the_memories_of_that_time_first() -> None:
    index = index_of(
        (memory("dentist", "went to the dentist", category="EVENT", age=0.8), unit(0, 1)),
        (memory("concert", "went to a concert with Priya", category="EVENT", age=8), unit(0, 0, 1)),
        (memory("priya", "Priya is her best friend", category="RELATIONSHIP", age=200), unit(1)),
    )
    yesterday = search(index, "what did I do yesterday?", unit(1))
    last_week = search(index, "what did Priya and I do last week?", unit(1))  # Priya, but not last week
    assert yesterday.ranked[0].memory.key == "dentist"
    assert yesterday.ranked[0].score.in_window
    assert last_week.ranked[0].memory.key == "concert"
    assert yesterday.gate.inject
    assert yesterday.gate.reason == "memories from the time the question names"


def test_earlier_turns_count_when_the_turn_points_back_and_not_otherwise() -> None:
    index = index_of(
        (memory("sister_city", "Maya lives in Lisbon", category="RELATIONSHIP"), unit(1)),
        (memory("car", "drives a blue car"), unit(0, 1)),
        (memory("tea", "prefers green tea"), unit(0, 0, 1)),
    )
    history = ["I talked to my sister Maya today", "How is she doing?"]
    nowhere = unit(0, 0, 0, 1)  # the turn's own meaning is near no memory
    follow_up = analyze("where does she live again?", history, now=NOW, analyzer=EN)
    topic_switch = analyze("what's the weather in Paris?", history, now=NOW, analyzer=EN)
    assert follow_up.points_back
    assert follow_up.terms["maya"] == 0.5
    assert not topic_switch.points_back
    assert "maya" not in topic_switch.terms
    found = index.search(follow_up, nowhere, now=NOW, history_vectors=[unit(1), unit(1, 0.1)])
    assert found.ranked[0].memory.key == "sister_city"


def test_updates_and_removals_keep_the_index_consistent() -> None:
    index = MemoryIndex(dimension=8, analyzer=EN, capacity=1)
    index.upsert(memory("a", "alpha words"), unit(1))
    index.upsert(memory("b", "bravo words"), unit(0, 1))
    index.upsert(memory("c", "charlie words"), unit(0, 0, 1))
    index.upsert(memory("a", "alpha changed"), unit(1))  # replaces, does not add
    assert len(index) == 3
    assert index.remove("FACT", "a")  # "c" moves into row 0
    assert not index.remove("FACT", "a")
    assert search(index, "charlie", unit(0, 0, 1)).ranked[0].memory.key == "c"
    assert [m.key for m, _ in index.bm25(EN.terms("alpha"), k=5)] == []  # gone from the postings too
    assert [m.key for m, _ in index.nearest(unit(0, 1), k=1)] == ["b"]
    with pytest.raises(ValueError, match="dimensions"):
        index.upsert(memory("d", "delta"), np.ones(3))


def test_the_plain_rankers_on_their_own() -> None:
    index = index_of((memory("a", "Maya lives in Lisbon"), unit(1)), (memory("b", "Maya drives a car"), unit(0, 1)))
    assert [m.key for m, _ in index.bm25(EN.terms("Lisbon Maya"), k=5)] == ["a", "b"]
    assert [m.key for m, _ in index.bm25(EN.terms("Paris"), k=5)] == []  # nothing shares a word
    assert [m.key for m, _ in index.nearest(unit(0.1, 1), k=2)] == ["b", "a"]


# The gate ------------------------------------------------------------------------------------------------------


def test_the_gate_lets_nothing_through_when_no_memory_is_close_in_meaning_or_words() -> None:
    index = index_of(
        (memory("tea", "prefers green tea"), unit(1)),
        (memory("car", "drives a blue car"), unit(0, 1)),
        (memory("maya", "Maya lives in Lisbon"), unit(0, 0, 1)),
    )
    unrelated = search(index, "what is the capital of Australia?", unit(0, 0.2, 0, 1))  # cos 0.2 at best
    related = search(index, "do I like green tea?", unit(1, 0.3))
    by_words = search(index, "is Maya still in Lisbon?", unit(0, 0, 0, 1))  # far in meaning, all its words held
    assert unrelated.ranked
    assert not unrelated.gate.inject
    assert unrelated.memories == ()
    assert unrelated.gate.similarity == pytest.approx(0.196, abs=1e-3)  # 0.2 / |(0, 0.2, 0, 1)|
    assert related.gate.inject
    assert related.memories[0].memory.key == "tea"
    assert by_words.gate.inject
    assert by_words.gate.reason == "a memory holds the question's words"


def test_the_gate_thresholds_are_bounded() -> None:
    with pytest.raises(ValidationError):
        GateParams(min_coverage=1.5)
    assert search(index_of(), "anything", unit(1)).memories == ()
