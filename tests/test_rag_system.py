"""The retrieval engine's arithmetic and behaviour, with worked values."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from rag_system import (
    IndexedMemory,
    MemoryIndex,
    ScoringParams,
    analyze_query,
    combine,
    recency,
    time_window,
    tokenize,
)

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)


def days_ago(n: float) -> dt.datetime:
    return NOW - dt.timedelta(days=n)


def unit(*values: float, dimension: int = 8) -> np.ndarray:
    vector = np.zeros(dimension, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def memory(key: str, value: str, *, category: str = "FACT", importance: float = 0.5, age: float = 0) -> IndexedMemory:
    return IndexedMemory(category, key, value, importance, days_ago(age), days_ago(age))


def test_recency_halves_every_half_life() -> None:
    ages = np.array([0.0, 30.0, 60.0, 120.0, -5.0])
    # 0.5 ** (age / 60): 1, 0.7071, 0.5, 0.25; a future time counts as now
    np.testing.assert_allclose(recency(ages, half_life_days=60), [1.0, 0.70710678, 0.5, 0.25, 1.0], rtol=1e-6)


def test_the_total_is_the_weighted_sum_of_the_parts() -> None:
    one = np.array([1.0])
    # 0.55*0.8 + 0.2*0.5 + 0.08*1 + 0.1*0.7 + 0.07*1 = 0.44 + 0.10 + 0.08 + 0.07 + 0.07 = 0.76
    total = combine(0.8 * one, 0.5 * one, one, 0.7 * one, one, (0.55, 0.20, 0.08, 0.10, 0.07))
    assert total[0] == pytest.approx(0.76)


def test_an_old_unimportant_memory_loses_to_a_recent_one_of_equal_similarity() -> None:
    index = MemoryIndex(dimension=8)
    same = unit(1, 0.2)
    index.upsert(memory("gym_old", "goes to the gym", importance=0.3, age=400), same)
    index.upsert(memory("gym_new", "goes to the gym", importance=0.6, age=2), same)

    first, second = index.search(analyze_query("the gym", [], now=NOW), unit(1, 0.25), now=NOW, k=2,
                                 params=ScoringParams(mmr_lambda=1.0))  # fmt: skip

    assert (first.memory.key, second.memory.key) == ("gym_new", "gym_old")
    assert first.score.semantic == pytest.approx(second.score.semantic)
    assert first.score.recency > 0.9 > 0.05 > second.score.recency  # 0.5 ** (2/60) vs 0.5 ** (400/60)
    assert "recency" in first.score.explain()
    assert first.score.explain().endswith(f"= {first.score.total:.3f}")


def test_nothing_is_returned_when_nothing_is_close_enough() -> None:
    index = MemoryIndex(dimension=8)
    index.upsert(memory("tea", "prefers green tea"), unit(1))
    assert index.search(analyze_query("what is my blood type", [], now=NOW), unit(0, 1), now=NOW) == []


def test_near_duplicates_do_not_crowd_out_another_fact() -> None:
    index = MemoryIndex(dimension=8)
    index.upsert(memory("run_a", "runs by the river"), unit(1, 0.10))
    index.upsert(memory("run_b", "runs along the river"), unit(1, 0.11))
    index.upsert(memory("yoga", "does yoga on saturdays"), unit(1, 1))
    keys = [r.memory.key for r in index.search(analyze_query("", [], now=NOW), unit(1, 0.3), now=NOW, k=2)]
    assert "yoga" in keys
    assert len({"run_a", "run_b"} & set(keys)) == 1


def test_words_find_a_memory_when_meaning_alone_is_not_enough() -> None:
    index = MemoryIndex(dimension=8)
    index.upsert(memory("sister_city", "Maya lives in Lisbon", category="RELATIONSHIP"), unit(1))
    index.upsert(memory("car", "drives a blue car"), unit(0, 1))
    far = unit(0.3, 0.3, 1)  # semantic 0.28 for both: under min_semantic
    [found] = index.search(analyze_query("where does my sister live?", [], now=NOW), far, now=NOW)
    assert found.memory.key == "sister_city"
    assert found.score.lexical > 0.5
    assert found.score.category == 1.0  # "sister" points at RELATIONSHIP


def test_expansions_match_related_words_at_half_weight() -> None:
    analysis = analyze_query("where does my sibling live?", [], now=NOW)
    assert ("sister", 0.5) in analysis.groups[0]
    index = MemoryIndex(dimension=8)
    index.upsert(memory("sister_city", "Maya lives in Lisbon"), unit(1))
    index.upsert(memory("brother_car", "Tom drives a blue car"), unit(1))
    loose = ScoringParams(min_semantic=0, min_lexical=0, min_score=0, margin=1)
    ranked = index.search(analysis, unit(1), now=NOW, params=loose)
    # "sibling" reaches both through "sister"/"brother"; only one also holds "live"
    assert [r.memory.key for r in ranked] == ["sister_city", "brother_car"]
    assert ranked[1].score.lexical > 0


def test_a_temporal_phrase_restricts_to_its_window() -> None:
    index = MemoryIndex(dimension=8)
    index.upsert(memory("dentist", "went to the dentist", category="EVENT", age=0.8), unit(1))
    index.upsert(memory("concert", "went to a concert", category="EVENT", age=8), unit(1, 0.1))
    yesterday = [r.memory.key for r in index.search(analyze_query("what did I do yesterday?", [], now=NOW),
                                                    unit(1), now=NOW)]  # fmt: skip
    last_week = [r.memory.key for r in index.search(analyze_query("what happened last week?", [], now=NOW),
                                                    unit(1), now=NOW)]  # fmt: skip
    assert (yesterday, last_week) == (["dentist"], ["concert"])


@pytest.mark.parametrize(
    ("phrase", "start_days", "end_days"),
    [("today", None, 0), ("yesterday", None, None), ("this week", 7, 0), ("last week", 14, 1)],
)
def test_time_windows(phrase: str, start_days: float | None, end_days: float | None) -> None:
    start, end = time_window(phrase, now=NOW)  # type: ignore[misc]
    midnight = NOW.replace(hour=0)
    if phrase == "today":
        assert (start, end) == (midnight, NOW)
    elif phrase == "yesterday":
        assert (start, end) == (midnight - dt.timedelta(days=1), midnight)
    else:
        assert (start, end) == (days_ago(start_days), days_ago(end_days))  # type: ignore[arg-type]
    assert time_window("where does my sister live", now=NOW) is None


def test_tokens_drop_stopwords_and_plural_endings() -> None:
    assert tokenize("What are my sister's favourite books and cities?") == ["sister", "favourite", "book", "city"]


def test_updates_and_removals_keep_the_index_consistent() -> None:
    index = MemoryIndex(dimension=8, capacity=1)
    index.upsert(memory("a", "alpha words"), unit(1))
    index.upsert(memory("b", "bravo words"), unit(0, 1))
    index.upsert(memory("c", "charlie words"), unit(0, 0, 1))
    index.upsert(memory("a", "alpha changed"), unit(1))  # replaces, does not add
    assert len(index) == 3
    assert index.remove("FACT", "a")  # "c" moves into row 0
    assert not index.remove("FACT", "a")
    [found] = index.search(analyze_query("charlie", [], now=NOW), unit(0, 0, 1), now=NOW)
    assert found.memory.key == "c"
    assert found.score.lexical > 0
    assert index.get("FACT", "b") is not None
    assert [m.key for m, _ in index.nearest(unit(0, 1), k=1)] == ["b"]


def test_earlier_turns_help_a_follow_up_but_cannot_drag_in_an_unrelated_memory() -> None:
    index = MemoryIndex(dimension=8)
    index.upsert(memory("sister_city", "Maya lives in Lisbon", category="RELATIONSHIP"), unit(1))
    far = unit(0, 0, 1)  # the turn's own meaning is nowhere near
    history = ["I talked to my sister Maya about Lisbon"]
    weather = index.search(analyze_query("what's the weather in Paris?", history, now=NOW), far, now=NOW)
    follow_up = index.search(analyze_query("where does she live now?", history, now=NOW), far, now=NOW)
    assert weather == []
    assert [r.memory.key for r in follow_up] == ["sister_city"]


def test_a_time_word_about_the_future_is_not_a_window() -> None:
    assert time_window("what should we cook tonight?", now=NOW) is None
